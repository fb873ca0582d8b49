"""The one seam between the store and the database it runs on.

Everything that differs between PostgreSQL and SQLite is a method of :class:`Dialect`,
implemented by :class:`~toolkit.store.postgres.Postgres` and :class:`~toolkit.store.sqlite.SQLite`.
No module outside ``toolkit.store`` asks which database it is on: it asks the store, and the
store asks its dialect.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, update

from toolkit.store.models import CreditAccount

# Add ``delta`` to one account: the statement every crediting path ends in (built once).
CREDIT_ONE = (
    update(CreditAccount)
    .where(CreditAccount.account == bindparam("credited"))
    .values(
        balance=CreditAccount.balance + bindparam("delta"),
        updated_at=bindparam("now", type_=CreditAccount.updated_at.type),
    )
)


class Dialect:
    """What the store needs to know about its database; one instance per :class:`Database`."""

    #: SQLAlchemy's dialect name: ``"postgresql"`` or ``"sqlite"``.
    name: str = ""
    #: Whether a single statement can commit by itself without BEGIN/COMMIT round trips.
    autocommit: bool = False
    #: Whether a maintenance batch runs as one data-modifying statement (CTEs that write).
    one_statement_batches: bool = False

    # --- statements ---------------------------------------------------------------------------

    def insert(self, table: Any) -> Any:
        """A dialect INSERT that supports ``on_conflict_do_nothing``."""
        raise NotImplementedError

    def among(self, column: Any, ids: Sequence[uuid.UUID]) -> Any:
        """``column IN ids``, in the form this database plans best."""
        raise NotImplementedError

    # --- writes (runs, ledger, accounts) -------------------------------------------------------

    def credit(self, conn: Connection, amounts: Mapping[str, int], now: datetime) -> None:
        """Add ``amounts`` (account: credits) to their accounts, in account order.

        Here one UPDATE per account (SQLite has one writer at a time: no lock order to keep).
        """
        conn.execute(
            CREDIT_ONE, [{"credited": a, "delta": amounts[a], "now": now} for a in sorted(amounts)]
        )

    def page_columns(self) -> Sequence[Any]:
        """Columns a maintenance page reads beside the run's own, when it is applied: what the
        one-statement batch needs of each run (its debit); nothing for the generic batch."""
        return ()

    # --- reads (report, snapshot) --------------------------------------------------------------

    def in_subquery(self, column: Any, subquery: Any) -> Any:
        """``column IN (subquery)``, in the form this database plans best next to an ``OR``."""
        raise NotImplementedError

    def seconds_between(self, later: Any, earlier: Any) -> Any:
        """``later - earlier`` of two timestamp columns, in seconds (a float); only asked
        where :meth:`percentiles` is an aggregate (the statement computes in SQL)."""
        raise NotImplementedError

    def percentiles(self, fractions: Sequence[float]) -> Callable[[Any], Any] | None:
        """The aggregate giving the ``fractions`` percentiles of a column as one array, or None
        when the database has none: the caller then streams the values and applies
        :func:`toolkit.rollout.stats.quantile`.

        Either way the p-th percentile is one definition: linear interpolation between the two
        nearest order statistics, at rank p (n - 1) counted from 0 (PostgreSQL's
        ``percentile_cont``; Hyndman and Fan's type 7, NumPy's default "linear").
        """
        raise NotImplementedError

    def gathered(self, values: Any) -> Any:
        """An aggregate collecting ``values`` into one array (the rank-test samples); only
        asked where :meth:`percentiles` is an aggregate."""
        raise NotImplementedError
