"""Credit ledger. Debits and refunds are keyed by run: the database forbids doing either twice."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import String, bindparam, case, func, insert, literal, select, text, update
from sqlalchemy.orm import Session, aliased

from toolkit.db import Database
from toolkit.errors import InsufficientCredits, InvalidInput
from toolkit.models import CreditAccount, CreditEntry, LedgerKind, Run, RunStatus, utcnow


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

    def debit_in(self, s: Session, account: str, run_id: uuid.UUID, amount: int) -> None:
        """Debit one run; the (run, DEBIT) unique key makes a second debit impossible."""
        self.spend_in(s, account, amount)
        s.execute(  # Core, not the ORM unit of work: this is on the dispatch hot path
            insert(CreditEntry).values(
                account=account,
                run_id=run_id,
                kind=LedgerKind.DEBIT.value,
                amount=amount,
                created_at=utcnow(),
            )
        )

    def spend_in(self, s: Session, account: str, amount: int) -> None:
        """Conditionally decrement: two concurrent debits can never both spend the same credits.

        The caller writes the matching DEBIT ledger rows in the same transaction.
        """
        _check_account(account)
        _check_amount(amount)
        spent = s.execute(
            update(CreditAccount)
            .where(CreditAccount.account == account, CreditAccount.balance >= amount)
            .values(balance=CreditAccount.balance - amount, updated_at=utcnow())
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
        one ``INSERT ... SELECT`` from the runs' debits), and only the refunds this statement
        inserted credit their accounts, locked in account order. Call it once per transaction:
        two calls lock two sets of accounts, each in order but not together, and concurrent
        sweeps could then deadlock.
        Returns ``{run_id: amount}`` for the refunds made here.
        """
        if not run_ids:
            return {}
        now = utcnow()
        debit = aliased(CreditEntry, name="debit")
        refunds = (
            self._db.insert(CreditEntry)
            .from_select(
                ["account", "run_id", "kind", "amount", "reason", "created_at"],
                select(
                    debit.account,
                    debit.run_id,
                    literal(LedgerKind.REFUND.value, String()),
                    debit.amount,
                    literal(reason[:500], String()),
                    literal(now, CreditEntry.created_at.type),
                ).where(
                    self._db.among(debit.run_id, run_ids), debit.kind == LedgerKind.DEBIT.value
                ),
            )
            .on_conflict_do_nothing(index_elements=["run_id", "kind"])
            .returning(CreditEntry.run_id, CreditEntry.account, CreditEntry.amount)
        )
        inserted = s.connection().execute(refunds).all()
        per_account: dict[str, int] = defaultdict(int)
        for row in inserted:
            per_account[row.account] += row.amount
        if per_account:
            self._credit_accounts(s, per_account, now)
        return {row.run_id: row.amount for row in inserted}

    def _credit_accounts(self, s: Session, amounts: dict[str, int], now: datetime) -> None:
        """Add ``amounts`` to their accounts, locking the rows in account order."""
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
    def _balance(s: Session, account: str) -> int:
        value = s.scalar(select(CreditAccount.balance).where(CreditAccount.account == account))
        return int(value or 0)


def _sum_of(kind: LedgerKind):  # type: ignore[no-untyped-def]
    return func.coalesce(
        func.sum(case((CreditEntry.kind == kind.value, CreditEntry.amount), else_=0)), 0
    )
