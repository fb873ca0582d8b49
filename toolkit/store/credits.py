"""Credit ledger. Debits and refunds are keyed by run: the database forbids doing either twice."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Insert,
    Row,
    String,
    bindparam,
    case,
    func,
    insert,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.elements import ColumnElement

from toolkit.config import MAX_AMOUNT
from toolkit.errors import InsufficientCredits, InvalidInput
from toolkit.events import RunRefunded
from toolkit.store import audit
from toolkit.store.engine import Database
from toolkit.store.models import CreditAccount, CreditEntry, LedgerKind, Run, RunStatus, utcnow


def _check_amount(amount: object) -> int:
    """An amount that enters the ledger: 1..MAX_AMOUNT, refused before anything is written."""
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_AMOUNT:
        raise InvalidInput(
            f"credit amount must be an integer from 1 to {MAX_AMOUNT}, not {amount!r}"
        )
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
        """What the ledger says the balance is; the account's running balance must agree."""
        return self.grants - self.debits + self.refunds


_DEBIT = aliased(CreditEntry, name="debit")
#: The balance column's own limit (BIGINT, SQLite INTEGER).
_INT64 = 2**63 - 1

#: A grant's credit, conditional: the balance it leaves stays within MAX_AMOUNT, checked by the
#: UPDATE itself, so two concurrent grants cannot both pass a check made before either wrote.
_CREDIT_GRANT = (
    update(CreditAccount)
    .where(
        CreditAccount.account == bindparam("g_account"),
        CreditAccount.balance <= MAX_AMOUNT - bindparam("g_amount", type_=BigInteger()),
    )
    .values(
        balance=CreditAccount.balance + bindparam("g_amount", type_=BigInteger()),
        updated_at=bindparam("g_now", type_=CreditAccount.updated_at.type),
    )
)

#: The one rule of refunds: only a FAILED or CANCELLED run is owed its debit back; a queued,
#: running or completed run keeps it, whoever asks. Every refund path builds on
#: :meth:`Credits.refunds_of`, which applies it.
REFUNDABLE = (RunStatus.FAILED.value, RunStatus.CANCELLED.value)

_GRANT = insert(CreditEntry).values(
    account=bindparam("account"),
    kind=LedgerKind.GRANT.value,
    amount=bindparam("amount"),
    reason=bindparam("reason"),
    created_at=bindparam("now", type_=CreditEntry.created_at.type),
)


class Credits:
    """The ledger and the accounts: every write to either goes through here (or, for the
    one-statement PostgreSQL batches, through :meth:`refunds_of` and the dialect)."""

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
        self._debits = insert(CreditEntry)
        self._ensure = (
            db.insert(CreditAccount)
            .values(
                account=bindparam("account"),
                balance=0,
                updated_at=bindparam("now", type_=CreditAccount.updated_at.type),
            )
            .on_conflict_do_nothing(index_elements=["account"])
        )

    # --- public API --------------------------------------------------------------------

    def grant(
        self, account: str, amount: int, *, reason: str | None = None, actor: str | None = None
    ) -> int:
        """Add credits; returns the new balance. The grant, its ledger row and its audit entry
        (``credits.grant``, by ``actor``, default :func:`~toolkit.store.audit.default_actor`)
        commit together. Refused (InvalidInput, nothing written) when ``amount`` is outside
        1..MAX_AMOUNT or the balance would exceed MAX_AMOUNT."""
        _check_account(account)
        _check_amount(amount)
        now = utcnow()
        with self._db.transaction() as s:
            conn = s.connection()
            conn.execute(self._ensure, {"account": account, "now": now})
            credited = conn.execute(
                _CREDIT_GRANT, {"g_account": account, "g_amount": amount, "g_now": now}
            )
            if credited.rowcount != 1:
                raise InvalidInput(
                    f"granting {amount} to {account!r} would take its balance "
                    f"({self._balance(s, account)}) above {MAX_AMOUNT}"
                )
            params = {"account": account, "amount": amount, "reason": reason, "now": now}
            conn.execute(_GRANT, params)
            balance = self._balance(s, account)
            audit.record(
                s,
                actor=actor or audit.default_actor(),
                action="credits.grant",
                target=account,
                after={"account": account, "amount": amount, "balance": balance},
                reason=reason,
            )
            return balance

    def balance(self, account: str) -> int:
        """The account's running balance now; 0 for an account never seen (a malformed
        account name is bad input, not an account with nothing)."""
        _check_account(account)
        with self._db.transaction() as s:
            return self._balance(s, account)

    def totals(self, account: str) -> LedgerTotals:
        """Sums from the ledger itself, the history the running balance must agree with."""
        _check_account(account)
        with self._db.transaction() as s:
            row = s.execute(
                select(*(_sum_of(kind) for kind in LedgerKind)).where(
                    CreditEntry.account == account
                )
            ).one()
        return LedgerTotals(grants=int(row[0]), debits=int(row[1]), refunds=int(row[2]))

    def refund(self, run_id: uuid.UUID, *, reason: str | None = None) -> bool:
        """Refund a FAILED or CANCELLED run's debit once; True if this call refunded it."""
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

    def debit_many_in(
        self, s: Session | Connection, runs: Mapping[str, Sequence[uuid.UUID]], amount: int
    ) -> None:
        """Debit ``amount`` for each run, ``runs`` grouped by account: one conditional spend
        per account, in account order (two batches cannot deadlock), then every DEBIT row."""
        now = utcnow()
        for account, run_ids in sorted(runs.items()):
            self.spend_in(s, account, amount * len(run_ids))
            s.execute(
                self._debits,
                [
                    {
                        "account": account,
                        "run_id": rid,
                        "kind": LedgerKind.DEBIT.value,
                        "amount": amount,
                        "created_at": now,
                    }
                    for rid in run_ids
                ],
            )

    def spend_in(self, s: Session | Connection, account: str, amount: int) -> None:
        """Conditionally decrement: two concurrent debits can never both spend the same credits.

        The caller writes the matching DEBIT ledger rows in the same transaction. A total
        beyond 64 bits (many runs of a costly job) exceeds any balance: refused unsent, so
        it never reaches the database as an out-of-range parameter.
        """
        _check_account(account)
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise InvalidInput(f"credit amount must be a positive integer, not {amount!r}")
        if amount > _INT64:
            raise InsufficientCredits(account, amount, self._balance(s, account))
        spent = s.execute(
            self._spend, {"b_account": account, "b_amount": amount, "b_now": utcnow()}
        )
        if spent.rowcount != 1:  # type: ignore[attr-defined]
            raise InsufficientCredits(account, amount, self._balance(s, account))

    def refund_in(self, s: Session, run_id: uuid.UUID, *, reason: str | None = None) -> bool:
        """:meth:`refund_many_in` of one run: True if this call refunded it."""
        return run_id in self.refund_many_in(s, [run_id], reason=reason)

    def refund_many_in(
        self, s: Session, run_ids: Sequence[uuid.UUID], *, reason: str | None
    ) -> dict[uuid.UUID, int]:
        """Refund each run's debit at most once, in ``s``; only FAILED or CANCELLED runs.

        One ``INSERT ... SELECT ... ON CONFLICT (run_id, kind) DO NOTHING RETURNING``
        (:meth:`refunds_of`) from the runs' debits, and only the refunds it inserted credit
        their accounts (:meth:`credit_in`). Call it once per transaction: two calls lock two
        sets of accounts, each in order but not together, and concurrent sweeps could then
        deadlock. Returns ``{run_id: amount}`` for the refunds made here; a
        :class:`~toolkit.events.RunRefunded` for each is emitted after the commit.
        """
        if not run_ids:
            return {}
        now = utcnow()
        refunds = self.refunds_of(
            _DEBIT.run_id,
            _DEBIT.account,
            _DEBIT.amount,
            Run.status,
            reason=reason,
            now=literal(now, CreditEntry.created_at.type),
            where=(
                self._db.among(_DEBIT.run_id, run_ids),
                _DEBIT.kind == LedgerKind.DEBIT.value,
                Run.id == _DEBIT.run_id,
            ),
        )
        inserted = s.connection().execute(refunds).all()
        self.credit_in(s, inserted, now)
        if inserted and self._db.events.listeners:
            self._db.after_commit(
                s,
                [
                    RunRefunded(
                        run_id=r.run_id, account=r.account, amount=r.amount, reason=reason, at=now
                    )
                    for r in inserted
                ],
            )
        return {row.run_id: row.amount for row in inserted}

    def refunds_of(
        self,
        run_id: Any,
        account: Any,
        amount: Any,
        status: Any,
        *,
        reason: str | None,
        now: ColumnElement[datetime],
        where: Sequence[ColumnElement[bool]] = (),
    ) -> Insert:
        """Refunds of debits (``run_id``, ``account``, ``amount``: the debit's own values; rows
        without an ``amount`` have no debit) of runs in ``status``, as one ``INSERT ... SELECT
        ... ON CONFLICT (run_id, kind) DO NOTHING RETURNING run_id, account, amount``. The
        rule is applied here, for every path: only a FAILED or CANCELLED run is refunded.

        The one-statement batches (PostgreSQL) embed it, with columns of a CTE; ``now`` is an
        expression (a bound parameter), so the statement can be reused. Only the rows it
        returns were refunded; the caller credits them in the same transaction.
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
                    literal(reason[:500], String()) if reason is not None else null(),
                    now,
                ).where(amount.is_not(None), status.in_(REFUNDABLE), *where),
            )
            .on_conflict_do_nothing(index_elements=["run_id", "kind"])
            .returning(CreditEntry.run_id, CreditEntry.account, CreditEntry.amount)
        )
        return statement

    def credit_in(self, s: Session, refunded: Iterable[Row[Any]], now: datetime) -> None:
        """Credit each refund (rows with ``account`` and ``amount``) to its account, the
        accounts in account order (the dialect's :meth:`~toolkit.store.dialect.Dialect.credit`)."""
        amounts: dict[str, int] = defaultdict(int)
        for row in refunded:
            amounts[row.account] += row.amount
        if amounts:
            self._db.sql.credit(s.connection(), amounts, now)

    # --- helpers -----------------------------------------------------------------------

    @staticmethod
    def _balance(s: Session | Connection, account: str) -> int:
        value = s.scalar(select(CreditAccount.balance).where(CreditAccount.account == account))
        return int(value or 0)


def _sum_of(kind: LedgerKind):  # type: ignore[no-untyped-def]
    return func.coalesce(
        func.sum(case((CreditEntry.kind == kind.value, CreditEntry.amount), else_=0)), 0
    )
