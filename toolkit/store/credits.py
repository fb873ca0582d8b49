"""Credit ledger. Debits and refunds are keyed by run: the database forbids doing either twice."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CTE,
    Connection,
    Insert,
    Row,
    String,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.elements import ColumnElement

from toolkit.errors import InsufficientCredits, InvalidInput
from toolkit.store.engine import Database
from toolkit.store.models import CreditAccount, CreditEntry, LedgerKind, Run, RunStatus, utcnow


def _check_amount(amount: object) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidInput(f"credit amount must be a positive integer, not {amount!r}")
    return amount


def _check_account(account: object) -> str:
    if not isinstance(account, str) or not account.strip() or len(account) > 200:
        raise InvalidInput(f"invalid account {account!r}: a non-empty string of at most 200 chars")
    return account


@dataclass(frozen=True)
class LedgerTotals:
    grants: int
    debits: int
    refunds: int

    @property
    def balance(self) -> int:
        return self.grants - self.debits + self.refunds


_DEBIT = aliased(CreditEntry, name="debit")

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


class Credits:
    def __init__(self, db: Database) -> None:
        self._db = db
        # The dispatch hot path's statements, built once (building costs more than running).
        self._spend = (
            update(CreditAccount)
            .where(
                CreditAccount.account == bindparam("b_account"),
                CreditAccount.balance >= bindparam("b_amount"),
            )
            .values(
                balance=CreditAccount.balance - bindparam("b_amount"),
                updated_at=bindparam("b_now", type_=CreditAccount.updated_at.type),
            )
        )
        self._debit = insert(CreditEntry).values(
            account=bindparam("b_account"),
            run_id=bindparam("b_run_id"),
            kind=LedgerKind.DEBIT.value,
            amount=bindparam("b_amount"),
            created_at=bindparam("b_now", type_=CreditEntry.created_at.type),
        )

    # --- public API --------------------------------------------------------------------

    def grant(self, account: str, amount: int, *, reason: str | None = None) -> int:
        """Add credits; returns the new balance."""
        _check_account(account)
        _check_amount(amount)
        with self._db.transaction() as s:
            self._ensure_account(s, account)
            s.execute(
                update(CreditAccount)
                .where(CreditAccount.account == account)
                .values(balance=CreditAccount.balance + amount, updated_at=utcnow())
            )
            s.add(CreditEntry(account=account, kind=LedgerKind.GRANT, amount=amount, reason=reason))
            return self._balance(s, account)

    def balance(self, account: str) -> int:
        with self._db.transaction() as s:
            return self._balance(s, account)

    def totals(self, account: str) -> LedgerTotals:
        """Sums from the ledger itself, the history the running balance must agree with."""
        with self._db.transaction() as s:
            row = s.execute(
                select(*(_sum_of(kind) for kind in LedgerKind)).where(
                    CreditEntry.account == account
                )
            ).one()
        return LedgerTotals(grants=int(row[0]), debits=int(row[1]), refunds=int(row[2]))

    def refund(self, run_id: uuid.UUID, *, reason: str | None = None) -> bool:
        with self._db.transaction() as s:
            return self.refund_in(s, run_id, reason=reason)

    # --- inside a caller's transaction ---------------------------------------------------

    def debit_in(
        self, s: Session | Connection, account: str, run_id: uuid.UUID, amount: int
    ) -> None:
        """Debit one run; the (run, DEBIT) unique key makes a second debit impossible."""
        self.spend_in(s, account, amount)
        s.execute(
            self._debit,
            {"b_account": account, "b_run_id": run_id, "b_amount": amount, "b_now": utcnow()},
        )

    def spend_in(self, s: Session | Connection, account: str, amount: int) -> None:
        """Conditionally decrement: two concurrent debits can never both spend the same credits.

        The caller writes the matching DEBIT ledger rows in the same transaction.
        """
        _check_account(account)
        _check_amount(amount)
        spent = s.execute(
            self._spend, {"b_account": account, "b_amount": amount, "b_now": utcnow()}
        )
        if spent.rowcount != 1:  # type: ignore[attr-defined]
            raise InsufficientCredits(account, amount, self._balance(s, account))

    def refund_in(self, s: Session, run_id: uuid.UUID, *, reason: str | None = None) -> bool:
        """Refund a run's debit once; True if this call refunded, False if nothing was owed.

        Only a FAILED or CANCELLED run is owed anything: a queued, running or completed run
        keeps its debit, whoever asks.
        """
        debit = s.execute(
            select(CreditEntry.account, CreditEntry.amount)
            .join(Run, Run.id == CreditEntry.run_id)
            .where(
                CreditEntry.run_id == run_id,
                CreditEntry.kind == LedgerKind.DEBIT,
                Run.status.in_([RunStatus.FAILED.value, RunStatus.CANCELLED.value]),
            )
        ).one_or_none()
        if debit is None:
            return False
        inserted = s.execute(
            self._db.insert(CreditEntry)
            .values(
                account=debit.account,
                run_id=run_id,
                kind=LedgerKind.REFUND.value,
                amount=debit.amount,
                reason=reason,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["run_id", "kind"])
            .returning(CreditEntry.id)
        ).scalar_one_or_none()
        if inserted is None:  # another refund of this run committed first
            return False
        s.execute(
            update(CreditAccount)
            .where(CreditAccount.account == debit.account)
            .values(balance=CreditAccount.balance + debit.amount, updated_at=utcnow())
        )
        return True

    def refund_many_in(
        self, s: Session, run_ids: Sequence[uuid.UUID], *, reason: str
    ) -> dict[uuid.UUID, int]:
        """The batch form of :meth:`refund_in`: each run's debit is refunded at most once.

        The same rule: ``INSERT ... ON CONFLICT (run_id, kind) DO NOTHING RETURNING`` (here as
        one ``INSERT ... SELECT`` from the runs' debits, :meth:`refunds_of`), and only the
        refunds this statement inserted credit their accounts (:meth:`credit_in`). Call it once
        per transaction: two calls lock two sets of accounts, each in order but not together,
        and concurrent sweeps could then deadlock.
        Returns ``{run_id: amount}`` for the refunds made here.
        """
        if not run_ids:
            return {}
        now = utcnow()
        at = literal(now, CreditEntry.created_at.type)
        refunds = self._refunds(self._db.among(_DEBIT.run_id, run_ids), reason=reason, now=at)
        inserted = s.connection().execute(refunds).all()
        self.credit_in(s, inserted, now)
        return {row.run_id: row.amount for row in inserted}

    def refunds_of(
        self,
        run_id: ColumnElement[Any],
        account: ColumnElement[Any],
        amount: ColumnElement[Any],
        *,
        reason: str,
        now: ColumnElement[datetime],
    ) -> Insert:
        """Refunds of debits already read (``run_id``, ``account``, ``amount``: columns of a
        CTE, the debit's own values; rows without an ``amount`` have no debit), as one
        ``INSERT ... SELECT ... ON CONFLICT (run_id, kind) DO NOTHING RETURNING run_id,
        account, amount``, for a caller that embeds it in a larger statement (PostgreSQL);
        ``now`` is an expression (a bound parameter), so the statement can be reused.

        Only the rows it returns were refunded here; the caller credits them in the same
        transaction (:meth:`credited`).
        """
        statement: Insert = (
            self._db.insert(CreditEntry)
            .from_select(
                ["account", "run_id", "kind", "amount", "reason", "created_at"],
                select(
                    account,
                    run_id,
                    literal(LedgerKind.REFUND.value, String()),
                    amount,
                    literal(reason[:500], String()),
                    now,
                ).where(amount.is_not(None)),
            )
            .on_conflict_do_nothing(index_elements=["run_id", "kind"])
            .returning(CreditEntry.run_id, CreditEntry.account, CreditEntry.amount)
        )
        return statement

    def _refunds(
        self, which: ColumnElement[bool], *, reason: str, now: ColumnElement[datetime]
    ) -> Insert:
        statement: Insert = (
            self._db.insert(CreditEntry)
            .from_select(
                ["account", "run_id", "kind", "amount", "reason", "created_at"],
                select(
                    _DEBIT.account,
                    _DEBIT.run_id,
                    literal(LedgerKind.REFUND.value, String()),
                    _DEBIT.amount,
                    literal(reason[:500], String()),
                    now,
                ).where(which, _DEBIT.kind == LedgerKind.DEBIT.value),
            )
            .on_conflict_do_nothing(index_elements=["run_id", "kind"])
            .returning(CreditEntry.run_id, CreditEntry.account, CreditEntry.amount)
        )
        return statement

    def credited(self, refunded: CTE, now: ColumnElement[datetime]) -> CTE:
        """:meth:`credit_in` as CTEs, for a statement that refunds and credits at once
        (PostgreSQL): the refunds of ``refunded`` (a CTE returning ``account`` and ``amount``)
        summed per account, those account rows locked in account order, then updated.

        The order holds whatever plan PostgreSQL picks: a row is only updated once the join
        has produced it from the locking CTE, which locks in account order as it goes. Each
        join has one CTE at most, so a CTE is never the inner side of a nested loop (its row
        estimate is a guess: a thousand rows scanned a thousand times).
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

    def credit_in(self, s: Session, refunded: Iterable[Row[Any]], now: datetime) -> None:
        """Credit each refund (rows with ``account`` and ``amount``) to its account, one
        update per account, the rows locked in account order (concurrent sweeps cannot
        deadlock: a single ``UPDATE ... FROM`` locks in whatever order its plan visits them)."""
        amounts: dict[str, int] = defaultdict(int)
        for row in refunded:
            amounts[row.account] += row.amount
        if not amounts:
            return
        accounts = sorted(amounts)
        if not self._db.is_postgres:  # SQLite: one writer at a time, no lock order to keep
            s.connection().execute(
                update(CreditAccount)
                .where(CreditAccount.account == bindparam("credited"))
                .values(balance=CreditAccount.balance + bindparam("delta"), updated_at=now),
                [{"credited": a, "delta": amounts[a]} for a in accounts],
            )
            return
        # One statement instead of one per account; the locks are taken first, in order.
        s.execute(_LOCK_ACCOUNTS, {"accounts": accounts})
        s.execute(
            _CREDIT_ACCOUNTS,
            {"accounts": accounts, "deltas": [amounts[a] for a in accounts], "now": now},
        )

    # --- helpers -----------------------------------------------------------------------

    def _ensure_account(self, s: Session, account: str) -> None:
        s.execute(
            self._db.insert(CreditAccount)
            .values(account=account, balance=0, updated_at=utcnow())
            .on_conflict_do_nothing(index_elements=["account"])
        )

    @staticmethod
    def _balance(s: Session | Connection, account: str) -> int:
        value = s.scalar(select(CreditAccount.balance).where(CreditAccount.account == account))
        return int(value or 0)


def _sum_of(kind: LedgerKind):  # type: ignore[no-untyped-def]
    return func.coalesce(
        func.sum(case((CreditEntry.kind == kind.value, CreditEntry.amount), else_=0)), 0
    )
