"""Stateful property test of the run state machine on a real (SQLite) database.

Hypothesis drives random sequences of dispatches and transitions (claim, complete, requeue,
fail, cancel, whole attempts, attempts by workers holding stale claims, repeated refunds)
against runs parked on a backend that never executes them, and compares the database with a
model after every step. The model only moves runs along the documented edges

    QUEUED → RUNNING → COMPLETED | FAILED | CANCELLED,   RUNNING → QUEUED,
    QUEUED → FAILED | CANCELLED

so "the database equals the model" proves the transitions; the invariants additionally check,
straight from the tables, that terminal states never change, attempts never decrease, the
ledger holds one DEBIT per paid run and exactly one REFUND per failed or cancelled paid run
(none for completed ones), and a failed run has exactly one dead letter.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select

from tests.conftest import make_toolkit
from tests.jobs_fixture import ParkedBackend
from toolkit import JobContext, NonRetriableError, RunStatus
from toolkit.runtime.lifecycle import Claim, Outcome
from toolkit.store.models import TERMINAL, CreditEntry, DeadLetter, LedgerKind, Run

Q, R = RunStatus.QUEUED, RunStatus.RUNNING
C, F, X = RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED

EDGES = frozenset({(Q, R), (R, C), (R, F), (R, X), (R, Q), (Q, F), (Q, X)})

ACCOUNT = "acct"
GRANTED = 10_000
RETRIES = 2  # three attempts at most
JOBS = {"sm-paid": 3, "sm-free": 0}  # job name -> cost
MODES = ("ok", "raise", "fatal")
MAX_RUNS = 5

SETTINGS = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass
class ModelRun:
    id: uuid.UUID
    cost: int
    status: RunStatus = Q
    attempts: int = 0

    def move(self, target: RunStatus) -> None:
        assert (self.status, target) in EDGES, f"model bug: {self.status} -> {target}"
        self.status = target

    @property
    def refunded(self) -> bool:
        return self.cost > 0 and self.status in (F, X)


@dataclass
class Observed:
    status: RunStatus
    attempts: int


class RunStateMachine(RuleBasedStateMachine):
    template: Path  # set by the test below

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="toolkit-sm-"))
        path = self.dir / "toolkit.db"
        shutil.copy(self.template, path)
        self.tk = make_toolkit(f"sqlite:///{path}")
        self.parked = ParkedBackend(self.tk)
        self.tk.use_backend("parked", self.parked)
        self.mode = "ok"
        for name, cost in JOBS.items():
            self.tk.job(name, target="parked", cost=cost, retries=RETRIES)(self._job)
            self.tk.set_rollout(name, 100, reason="state machine test")
        self.tk.credits.grant(ACCOUNT, GRANTED)
        self.runs: list[ModelRun] = []
        self.claims: list[tuple[int, int]] = []  # (run index, attempt) held by "workers"
        self.seen: dict[uuid.UUID, Observed] = {}

    def _job(self, ctx: JobContext, payload: Any) -> Any:
        ctx.step("prepare", lambda: {"prepared": True})
        if self.mode == "raise":
            raise RuntimeError("transient failure")
        if self.mode == "fatal":
            raise NonRetriableError("fatal failure")
        return {"ok": True}

    def teardown(self) -> None:
        self.tk.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- helpers -------------------------------------------------------------------------

    def _run(self, index: int) -> ModelRun:
        return self.runs[index % len(self.runs)]

    def _attempt_number(self, run: ModelRun, delta: int | None) -> int | None:
        return None if delta is None else run.attempts + delta

    def _expect_attempt(self, run: ModelRun, attempt: int, outcome: Outcome) -> None:
        """What one execution of the job by the owner of ``attempt`` must do to the model."""
        owner = run.status == R and run.attempts == attempt
        if not owner:
            assert outcome is Outcome.SKIPPED, (run, attempt, outcome)
            return
        if self.mode == "ok":
            assert outcome is Outcome.COMPLETED
            run.move(C)
        elif self.mode == "fatal" or attempt >= RETRIES + 1:
            assert outcome is Outcome.FAILED
            run.move(F)
        else:
            assert outcome is Outcome.RETRY
            run.move(Q)

    # --- rules ---------------------------------------------------------------------------

    @precondition(lambda self: len(self.runs) < MAX_RUNS)
    @rule(job=st.sampled_from(sorted(JOBS)))
    def dispatch(self, job: str) -> None:
        handle = self.tk.dispatch(job, {"n": len(self.runs)}, account=ACCOUNT)
        assert handle.backend == "parked" and handle.status == Q
        assert self.parked.submitted[-1] == handle.run_id
        self.runs.append(ModelRun(handle.run_id, JOBS[job]))

    @precondition(lambda self: self.runs)
    @rule(index=st.integers(0, MAX_RUNS - 1))
    def claim(self, index: int) -> None:
        run = self._run(index)
        claim = self.tk.runtime.claim(run.id)
        if run.status != Q:
            assert claim is None
            return
        assert claim is not None
        run.attempts += 1
        run.move(R)
        assert claim.attempt == run.attempts and claim.run_id == run.id
        self.claims.append((self.runs.index(run), claim.attempt))

    @precondition(lambda self: self.runs)
    @rule(index=st.integers(0, MAX_RUNS - 1), delta=st.sampled_from([None, 0, 0, -1, -2, 1]))
    def complete(self, index: int, delta: int | None) -> None:
        run = self._run(index)
        attempt = self._attempt_number(run, delta)
        stale = attempt is not None and (attempt != run.attempts or run.status != R)
        done = self.tk.runtime.complete(run.id, attempt, {"completed_by": attempt})
        if stale:
            assert not done, f"stale attempt {attempt} completed {run}"
        assert done == (run.status == R and not stale)
        if done:
            run.move(C)

    @precondition(lambda self: self.runs)
    @rule(
        index=st.integers(0, MAX_RUNS - 1),
        delta=st.sampled_from([0, 0, 0, -1, -2, 1]),
        delay=st.floats(0, 5),
    )
    def requeue(self, index: int, delta: int, delay: float) -> None:
        run = self._run(index)
        attempt = run.attempts + delta
        stale = attempt != run.attempts or run.status != R
        moved = self.tk.runtime.requeue(run.id, attempt, "retry later", delay)
        if stale:
            assert not moved, f"stale attempt {attempt} requeued {run}"
        assert moved == (not stale)
        if moved:
            run.move(Q)

    @precondition(lambda self: self.runs)
    @rule(
        index=st.integers(0, MAX_RUNS - 1),
        expected=st.lists(st.sampled_from(list(RunStatus)), min_size=1, max_size=3, unique=True),
        delta=st.sampled_from([None, None, 0, -1]),
    )
    def fail(self, index: int, expected: list[RunStatus], delta: int | None) -> None:
        run = self._run(index)
        attempt = self._attempt_number(run, delta)
        failed = self.tk.runtime.fail(run.id, "failed by test", expected=expected, attempt=attempt)
        should = (
            run.status in expected
            and run.status not in TERMINAL
            and (attempt is None or attempt == run.attempts)
        )
        assert failed == should, (run, expected, attempt)
        if failed:
            run.move(F)

    @precondition(lambda self: self.runs)
    @rule(index=st.integers(0, MAX_RUNS - 1))
    def cancel(self, index: int) -> None:
        run = self._run(index)
        cancelled = self.tk.cancel(run.id, reason="test")
        assert cancelled == (run.status in (Q, R))
        if cancelled:
            run.move(X)

    @precondition(lambda self: self.runs)
    @rule(index=st.integers(0, MAX_RUNS - 1), mode=st.sampled_from(MODES))
    def run_attempt(self, index: int, mode: str) -> None:
        run = self._run(index)
        self.mode = mode
        result = self.tk.runtime.run_attempt(run.id)
        if run.status != Q:
            assert result.outcome is Outcome.SKIPPED
            return
        run.attempts += 1
        run.move(R)
        assert result.attempt == run.attempts
        self._expect_attempt(run, run.attempts, result.outcome)

    @precondition(lambda self: self.claims)
    @rule(which=st.integers(0, 50), mode=st.sampled_from(MODES))
    def attempt_with_held_claim(self, which: int, mode: str) -> None:
        """A worker executes the attempt it claimed earlier, perhaps long after losing it."""
        index, attempt = self.claims[which % len(self.claims)]
        run = self.runs[index]
        spec = self.tk.jobs.get(next(n for n, c in JOBS.items() if c == run.cost))
        self.mode = mode
        result = self.tk.runtime.attempt(Claim(run.id, attempt, spec, {"n": index}))
        self._expect_attempt(run, attempt, result.outcome)

    @precondition(lambda self: self.runs)
    @rule(index=st.integers(0, MAX_RUNS - 1), times=st.integers(1, 3))
    def refund_terminal(self, index: int, times: int) -> None:
        """Refunding a failed/cancelled (already refunded) or free run again changes nothing."""
        run = self._run(index)
        if run.status not in (F, X) and run.cost:
            return  # refunds of live or completed paid runs: see test_ledger_props
        for _ in range(times):
            assert self.tk.credits.refund(run.id) is False

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def database_matches_model(self) -> None:
        with self.tk.db.transaction() as s:
            rows = {r.id: (RunStatus(r.status), r.attempts) for r in s.scalars(select(Run))}
            ledger = s.execute(select(CreditEntry.run_id, CreditEntry.kind, CreditEntry.amount))
            entries = [(e.run_id, e.kind, e.amount) for e in ledger]
            dead = list(s.scalars(select(DeadLetter.run_id)))
        assert set(rows) == {r.id for r in self.runs}
        for run in self.runs:
            status, attempts = rows[run.id]
            assert (status, attempts) == (run.status, run.attempts), run

            # Straight from the table: terminal states never change, attempts never decrease.
            before = self.seen.get(run.id)
            if before is not None:
                assert attempts >= before.attempts, (run, before)
                if before.status in TERMINAL:
                    assert status == before.status, (run, before)
                if before.status == Q and status == C:
                    assert attempts > before.attempts  # it went through RUNNING
            self.seen[run.id] = Observed(status, attempts)

            debits = [a for rid, k, a in entries if rid == run.id and k == LedgerKind.DEBIT]
            refunds = [a for rid, k, a in entries if rid == run.id and k == LedgerKind.REFUND]
            assert debits == ([run.cost] if run.cost else [])
            assert refunds == ([run.cost] if run.refunded else []), run
            assert dead.count(run.id) == (1 if status == F else 0), run

        assert len(dead) == len(set(dead))  # at most one dead letter per run
        expected = GRANTED - sum(r.cost for r in self.runs if not r.refunded)
        assert self.tk.credits.balance(ACCOUNT) == expected >= 0
        assert self.tk.credits.totals(ACCOUNT).balance == expected


def test_run_state_machine(sqlite_template: Path) -> None:
    machine = type("Machine", (RunStateMachine,), {"template": sqlite_template})
    run_state_machine_as_test(machine, settings=SETTINGS)
