"""Property test of the credit ledger (invariant 3) on a real (SQLite) database.

Random sequences of grants, paid dispatches (single and batched, some refused for lack of
credits), claims, whole attempts that succeed or fail, completions, failures, cancellations
and repeated refunds must keep, after every operation:

- the running balance equal to what the ledger sums to (grants - debits + refunds) and to a
  model of what each account should hold, and never negative;
- at most one DEBIT and one REFUND per run, a REFUND only for a debited run, and exactly one
  REFUND for every failed or cancelled paid run;
- a refused dispatch leaves nothing behind: no run, no ledger entry, no hand-over.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from tests.conftest import make_toolkit
from tests.jobs_fixture import ParkedBackend
from toolkit import (
    DispatchRequest,
    InsufficientCredits,
    JobContext,
    NonRetriableError,
    RunStatus,
    Toolkit,
)
from toolkit.runtime.lifecycle import Outcome
from toolkit.store.models import CreditEntry, LedgerKind, Run

Q, R = RunStatus.QUEUED, RunStatus.RUNNING
C, F, X = RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED

ACCOUNTS = ("alice", "bob", "nobody")  # "nobody" is never granted anything
JOBS = {"paid-3": 3, "paid-7": 7, "free": 0}


def _job(ctx: JobContext, payload: Any) -> Any:
    if payload.get("fatal"):
        raise NonRetriableError("bad input")
    return {"done": True}


@contextmanager
def fresh_toolkit(template: Path) -> Iterator[tuple[Toolkit, ParkedBackend]]:
    directory = Path(tempfile.mkdtemp(prefix="toolkit-ledger-"))
    path = directory / "toolkit.db"
    shutil.copy(template, path)
    tk = make_toolkit(f"sqlite:///{path}")
    try:
        parked = ParkedBackend(tk)
        tk.use_backend("parked", parked)
        for name, cost in JOBS.items():
            tk.job(name, target="parked", cost=cost, retries=0)(_job)
            tk.set_rollout(name, 100, reason="ledger property test")
        yield tk, parked
    finally:
        tk.close()
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class ModelRun:
    id: uuid.UUID
    account: str
    cost: int
    fatal: bool
    status: RunStatus = Q
    refunded: bool = False


class Ledger:
    """The model: what each account must hold and what each run owes."""

    def __init__(self, tk: Toolkit, parked: ParkedBackend) -> None:
        self.tk, self.parked = tk, parked
        self.balances: Counter[str] = Counter()
        self.runs: list[ModelRun] = []

    def pick(self, index: int) -> ModelRun | None:
        return self.runs[index % len(self.runs)] if self.runs else None

    def settle(self, run: ModelRun, status: RunStatus) -> None:
        """A run became FAILED or CANCELLED: its debit comes back unless it already did."""
        run.status = status
        if run.cost and not run.refunded:
            run.refunded = True
            self.balances[run.account] += run.cost

    # --- operations ----------------------------------------------------------------------

    def grant(self, account: str, amount: int) -> None:
        assert self.tk.credits.grant(account, amount) == self.balances[account] + amount
        self.balances[account] += amount

    def dispatch(self, account: str, job: str, fatal: bool) -> None:
        cost = JOBS[job]
        snapshot = self.snapshot()
        if cost > self.balances[account]:
            with pytest.raises(InsufficientCredits):
                self.tk.dispatch(job, {"fatal": fatal}, account=account)
            assert self.snapshot() == snapshot, "a refused dispatch changed something"
            return
        handle = self.tk.dispatch(job, {"fatal": fatal}, account=account)
        assert handle.status == Q and handle.backend == "parked"
        self.balances[account] -= cost
        self.runs.append(ModelRun(handle.run_id, account, cost, fatal))

    def dispatch_many(self, account: str, job: str, n: int) -> None:
        cost = JOBS[job]
        requests = [DispatchRequest({"fatal": i % 2 == 1}, account=account) for i in range(n)]
        snapshot = self.snapshot()
        if cost * n > self.balances[account]:
            with pytest.raises(InsufficientCredits):
                self.tk.dispatch_many(job, requests)
            assert self.snapshot() == snapshot, "a refused batch changed something"
            return
        handles = self.tk.dispatch_many(job, requests)
        assert len({h.run_id for h in handles}) == n
        self.balances[account] -= cost * n
        for i, handle in enumerate(handles):
            self.runs.append(ModelRun(handle.run_id, account, cost, i % 2 == 1))

    def claim(self, index: int) -> None:
        if (run := self.pick(index)) is None:
            return
        claim = self.tk.runtime.claim(run.id)
        assert (claim is not None) == (run.status == Q)
        if claim is not None:
            run.status = R

    def run_attempt(self, index: int) -> None:
        if (run := self.pick(index)) is None:
            return
        outcome = self.tk.runtime.run_attempt(run.id).outcome
        if run.status != Q:
            assert outcome is Outcome.SKIPPED
        elif run.fatal:
            assert outcome is Outcome.FAILED
            self.settle(run, F)
        else:
            assert outcome is Outcome.COMPLETED
            run.status = C

    def complete(self, index: int) -> None:
        if (run := self.pick(index)) is None:
            return
        assert self.tk.runtime.complete(run.id, None, {"by": "test"}) == (run.status == R)
        if run.status == R:
            run.status = C

    def fail(self, index: int) -> None:
        if (run := self.pick(index)) is None:
            return
        failed = self.tk.runtime.fail(run.id, "failed by test", expected=(Q, R))
        assert failed == (run.status in (Q, R))
        if failed:
            self.settle(run, F)

    def cancel(self, index: int) -> None:
        if (run := self.pick(index)) is None:
            return
        cancelled = self.tk.cancel(run.id, reason="test")
        assert cancelled == (run.status in (Q, R))
        if cancelled:
            self.settle(run, X)

    def refund(self, index: int, times: int) -> None:
        if (run := self.pick(index)) is None:
            return
        results = [self.tk.credits.refund(run.id, reason="manual") for _ in range(times)]
        assert results.count(True) <= 1, results
        assert not any(results[1:]), "a repeated refund paid again"
        if run.status in (F, X) or not run.cost or run.refunded:
            assert not any(results), f"refund of {run} paid twice"
        elif results[0]:
            # Refunding a live or completed run is not specified (see the xfail test below);
            # whatever it does, it must count once and keep the books straight.
            run.refunded = True
            self.balances[run.account] += run.cost

    # --- checks --------------------------------------------------------------------------

    def snapshot(self) -> tuple[Any, ...]:
        with self.tk.db.transaction() as s:
            runs = s.scalar(select(func.count()).select_from(Run))
            entries = s.scalar(select(func.count()).select_from(CreditEntry))
        balances = tuple(self.tk.credits.balance(a) for a in ACCOUNTS)
        return runs, entries, balances, len(self.parked.submitted)

    def check(self, *, totals: bool = False) -> None:
        """Every invariant; ``totals`` also asks Credits.totals (slow) besides summing here."""
        balances = {a: self.tk.credits.balance(a) for a in ACCOUNTS}
        with self.tk.db.transaction() as s:
            statuses = {rid: status for rid, status in s.execute(select(Run.id, Run.status))}
            entries = s.execute(
                select(
                    CreditEntry.account, CreditEntry.run_id, CreditEntry.kind, CreditEntry.amount
                )
            ).all()
        sign = {LedgerKind.GRANT: 1, LedgerKind.DEBIT: -1, LedgerKind.REFUND: 1}
        history: Counter[str] = Counter()
        for e in entries:
            history[e.account] += sign[LedgerKind(e.kind)] * e.amount
        for account in ACCOUNTS:
            expected = self.balances[account]
            assert balances[account] == history[account] == expected >= 0, account
            if totals:
                assert self.tk.credits.totals(account).balance == expected, account

        assert set(statuses) == {r.id for r in self.runs}
        per_run = Counter((e.run_id, e.kind) for e in entries if e.run_id is not None)
        assert all(n == 1 for n in per_run.values()), per_run  # one DEBIT, one REFUND at most
        amounts = {(e.run_id, e.kind): e.amount for e in entries if e.run_id is not None}
        for run in self.runs:
            assert statuses[run.id] == run.status, run
            debit = amounts.get((run.id, LedgerKind.DEBIT.value))
            refund = amounts.get((run.id, LedgerKind.REFUND.value))
            assert debit == (run.cost or None), run
            assert refund == (run.cost if run.refunded else None), run
            if run.cost and run.status in (F, X):
                assert refund == run.cost, f"failed/cancelled paid run not refunded: {run}"


account = st.sampled_from(ACCOUNTS)
job = st.sampled_from(["paid-3", "paid-3", "paid-7", "free"])
index = st.integers(0, 30)
dispatch = st.tuples(st.just("dispatch"), account, job, st.booleans())
operation = st.one_of(
    st.tuples(st.just("grant"), st.sampled_from(ACCOUNTS[:2]), st.integers(1, 20)),
    dispatch,
    dispatch,
    st.tuples(st.just("dispatch_many"), account, job, st.integers(1, 4)),
    st.tuples(st.just("claim"), index),
    st.tuples(st.just("run_attempt"), index),
    st.tuples(st.just("complete"), index),
    st.tuples(st.just("fail"), index),
    st.tuples(st.just("cancel"), index),
    st.tuples(st.just("refund"), index, st.integers(1, 3)),
)


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    initial=st.tuples(st.integers(0, 40), st.integers(0, 40)),
    ops=st.lists(operation, min_size=10, max_size=30),
)
def test_ledger_balances_agree_and_nothing_is_paid_twice(
    sqlite_template: Path, initial: tuple[int, int], ops: list[tuple[Any, ...]]
) -> None:
    with fresh_toolkit(sqlite_template) as (tk, parked):
        ledger = Ledger(tk, parked)
        for name, amount in zip(ACCOUNTS, initial, strict=False):
            if amount:
                ledger.grant(name, amount)
        for name, *args in ops:
            getattr(ledger, name)(*args)
            ledger.check()
        ledger.check(totals=True)


def test_refused_batch_is_all_or_nothing(sqlite_template: Path) -> None:
    """A batch the account can only partly pay for queues none of it."""
    with fresh_toolkit(sqlite_template) as (tk, parked):
        tk.credits.grant("alice", 20)
        with pytest.raises(InsufficientCredits):
            tk.dispatch_many("paid-7", [DispatchRequest({}, account="alice")] * 3)
        assert tk.runs.list(limit=10) == [] and parked.submitted == []
        assert tk.credits.balance("alice") == tk.credits.totals("alice").balance == 20
        assert len(tk.dispatch_many("paid-7", [DispatchRequest({}, account="alice")] * 2)) == 2
        assert tk.credits.balance("alice") == tk.credits.totals("alice").balance == 6


def test_refund_of_a_completed_run_pays_nothing(sqlite_template: Path) -> None:
    with fresh_toolkit(sqlite_template) as (tk, _parked):
        tk.credits.grant("alice", 10)
        run_id = tk.dispatch("paid-3", {}, account="alice").run_id
        assert tk.runtime.run_attempt(run_id).outcome is Outcome.COMPLETED
        assert tk.credits.balance("alice") == 7
        refunded = tk.credits.refund(run_id)
        assert tk.credits.balance("alice") == 7
        assert refunded is False
