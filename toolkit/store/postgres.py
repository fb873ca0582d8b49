"""PostgreSQL's side of the dialect seam (:mod:`toolkit.store.dialect`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    CTE,
    Connection,
    String,
    Uuid,
    any_,
    bindparam,
    cast,
    func,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from toolkit.store.dialect import CREDIT_ONE, Dialect
from toolkit.store.models import CreditAccount, CreditEntry, LedgerKind, Run

# Lock the accounts in account order first (so concurrent sweeps cannot deadlock: a single
# UPDATE ... FROM locks in whatever order its plan visits the rows), then credit them.
_LOCK_ACCOUNTS = text(
    "SELECT 1 FROM toolkit_credit_accounts WHERE account = ANY(:accounts) "
    "ORDER BY account FOR UPDATE"
)
_CREDIT_ACCOUNTS = text(
    "UPDATE toolkit_credit_accounts AS a SET balance = a.balance + v.delta, updated_at = :now "
    "FROM unnest(CAST(:accounts AS varchar[]), CAST(:deltas AS bigint[])) AS v(account, delta) "
    "WHERE a.account = v.account"
)

_debit = aliased(CreditEntry, name="debit")


def _of_debit(column: Any) -> Any:
    return (
        select(column)
        .where(_debit.run_id == Run.id, _debit.kind == LedgerKind.DEBIT.value)
        .scalar_subquery()
    )


# What a one-statement batch's page reads of each run's debit (NULL: no debit), so no step
# reads it again (:mod:`toolkit.store.batches`).
DEBIT_COLUMNS = (
    _of_debit(_debit.account).label("account"),
    _of_debit(_debit.amount).label("amount"),
)


def credited(refunded: CTE, now: ColumnElement[datetime]) -> CTE:
    """:meth:`Postgres.credit` as CTEs, for a statement that refunds and credits at once: the
    refunds of ``refunded`` (a CTE returning ``account`` and ``amount``) summed per account,
    those account rows locked in account order, then updated.

    The order holds whatever plan PostgreSQL picks: a row is only updated once the join has
    produced it from the locking CTE, which locks in account order as it goes. Each join has
    one CTE at most, so a CTE is never the inner side of a nested loop (its row estimate is a
    guess: a thousand rows scanned a thousand times).
    """
    totals = (
        select(refunded.c.account, func.sum(refunded.c.amount).label("total"))
        .group_by(refunded.c.account)
        .subquery("totals")
    )
    locked = (
        select(CreditAccount.account, totals.c.total)
        .join_from(totals, CreditAccount, CreditAccount.account == totals.c.account)
        .order_by(CreditAccount.account)
        .with_for_update(of=CreditAccount)
        .cte("locked")
    )
    return (
        update(CreditAccount)
        .where(CreditAccount.account == locked.c.account)
        .values(balance=CreditAccount.balance + locked.c.total, updated_at=now)
        .cte("credited")
    )


class Postgres(Dialect):
    name = "postgresql"
    autocommit = True
    one_statement_batches = True

    # --- statements ---------------------------------------------------------------------------

    def insert(self, table: Any) -> Any:
        """PostgreSQL's INSERT, for ``on_conflict_do_nothing``."""
        return postgresql.insert(table)

    def among(self, column: Any, ids: Sequence[uuid.UUID]) -> Any:
        """One ``uuid[]`` parameter instead of one per id (sent as a single array literal: the
        driver's per-element quoting costs more than the query)."""
        literal_ids = "{" + ",".join(map(str, ids)) + "}"
        return column == any_(cast(bindparam(None, literal_ids, type_=String()), ARRAY(Uuid())))

    # --- writes (runs, ledger, accounts) -------------------------------------------------------

    def credit(self, conn: Connection, amounts: Mapping[str, int], now: datetime) -> None:
        """One account: one UPDATE (a single row lock has no order). Several: their rows
        locked in account order first, then one ``UPDATE ... FROM unnest(...)`` for all."""
        accounts = sorted(amounts)
        if len(accounts) == 1:
            conn.execute(CREDIT_ONE, {"credited": accounts[0], "delta": amounts[accounts[0]],
                                      "now": now})  # fmt: skip
            return
        conn.execute(_LOCK_ACCOUNTS, {"accounts": accounts})
        conn.execute(
            _CREDIT_ACCOUNTS,
            {"accounts": accounts, "deltas": [amounts[a] for a in accounts], "now": now},
        )

    def page_columns(self) -> Sequence[Any]:
        """The run's debit, which the one-statement refund and cleanup batches need."""
        return DEBIT_COLUMNS if self.one_statement_batches else ()

    # --- reads (report, snapshot) --------------------------------------------------------------

    def in_subquery(self, column: Any, subquery: Any) -> Any:
        """``= ANY(ARRAY(subquery))``: lets the planner OR two bitmap index scans."""
        return column == func.any(func.array(subquery.scalar_subquery()))

    def seconds_between(self, later: Any, earlier: Any) -> Any:
        """``date_part('epoch', later - earlier)``: the interval in seconds, as a float."""
        return func.date_part("epoch", later - earlier)

    def percentiles(self, fractions: Sequence[float]) -> Callable[[Any], Any] | None:
        """``percentile_cont(ARRAY[...]) WITHIN GROUP (ORDER BY values)``: one sort, every
        fraction."""
        listed = ", ".join(repr(float(f)) for f in fractions)
        array: Any = literal_column(f"ARRAY[{listed}]::float8[]")
        return lambda values: func.percentile_cont(array).within_group(values)

    def gathered(self, values: Any) -> Any:
        """``array_agg``: the rank-test samples in one array per group."""
        return func.array_agg(values)
