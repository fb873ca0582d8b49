"""PostgreSQL's side of the dialect seam (:mod:`toolkit.store.dialect`)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ARRAY, String, Uuid, any_, bindparam, cast
from sqlalchemy.dialects import postgresql

from toolkit.store.dialect import Dialect


class Postgres(Dialect):
    name = "postgresql"
    autocommit = True
    one_statement_batches = True

    # --- statements ---------------------------------------------------------------------------

    def insert(self, table: Any) -> Any:
        return postgresql.insert(table)

    def among(self, column: Any, ids: Sequence[uuid.UUID]) -> Any:
        """One ``uuid[]`` parameter instead of one per id (sent as a single array literal: the
        driver's per-element quoting costs more than the query)."""
        literal_ids = "{" + ",".join(map(str, ids)) + "}"
        return column == any_(cast(bindparam(None, literal_ids, type_=String()), ARRAY(Uuid())))

    # --- writes (runs, ledger, accounts) -------------------------------------------------------

    # --- reads (report, snapshot) --------------------------------------------------------------
