"""Credit ledger. Debits and refunds are keyed by run: the database forbids doing either twice."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import case, func, insert, select, update
from sqlalchemy.orm import Session

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
