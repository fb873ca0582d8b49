"""PostgreSQL's side of the dialect seam (:mod:`toolkit.store.dialect`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import ARRAY, String, Uuid, any_, bindparam, cast, func, literal_column
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

    def in_subquery(self, column: Any, subquery: Any) -> Any:
        """``= ANY(ARRAY(subquery))``: lets the planner OR two bitmap index scans."""
        return column == func.any(func.array(subquery.scalar_subquery()))

    def seconds_between(self, later: Any, earlier: Any) -> Any:
        return func.date_part("epoch", later - earlier)

    def percentiles(self, fractions: Sequence[float]) -> Callable[[Any], Any] | None:
        """``percentile_cont(ARRAY[...]) WITHIN GROUP (ORDER BY values)``: one sort, every
        fraction."""
        listed = ", ".join(repr(float(f)) for f in fractions)
        array: Any = literal_column(f"ARRAY[{listed}]::float8[]")
        return lambda values: func.percentile_cont(array).within_group(values)

    def gathered(self, values: Any) -> Any:
        return func.array_agg(values)
