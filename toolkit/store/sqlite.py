"""SQLite's side of the dialect seam (:mod:`toolkit.store.dialect`): the embedded default."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.dialects import sqlite

from toolkit.store.dialect import Dialect


class SQLite(Dialect):
    name = "sqlite"

    # --- statements ---------------------------------------------------------------------------

    def insert(self, table: Any) -> Any:
        """SQLite's INSERT, for ``on_conflict_do_nothing``."""
        return sqlite.insert(table)

    def among(self, column: Any, ids: Sequence[uuid.UUID]) -> Any:
        """A plain ``IN`` with one parameter per id."""
        return column.in_(ids)

    # --- writes (runs, ledger, accounts) -------------------------------------------------------

    # --- reads (report, snapshot) --------------------------------------------------------------

    def in_subquery(self, column: Any, subquery: Any) -> Any:
        """A plain ``IN (subquery)``."""
        return column.in_(subquery)

    def percentiles(self, fractions: Sequence[float]) -> Callable[[Any], Any] | None:
        """None: SQLite has no percentile aggregate; streaming the values into Python arrays
        and sorting there is faster than any SQL emulation (window functions sort per row)."""
        return None
