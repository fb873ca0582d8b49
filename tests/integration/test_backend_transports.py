"""Backends as thin transports: what ``submit`` returns, and the runtime operations they call.

The dispatcher sets a handle from what ``submit`` returned (the blocking legacy executor ran
the run in the caller's thread) instead of reading the run back; the runtime's ``# --- for
transports ---`` methods replace the lifecycle logic that used to live in Celery and Inngest.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from tests.jobs_fixture import SESSION, Calls, ParkedBackend, register_session_job
from toolkit import JobContext, NonRetriableError, RunStatus, Toolkit
from toolkit.backends.legacy import LegacyBackend
from toolkit.jobs import SubmittedRun
from toolkit.runtime.lifecycle import Outcome
from toolkit.store.models import utcnow
from toolkit.store.runs import RunView


class Reads:
    """Counts the reads a handle makes through the reader the dispatcher gave it."""

    def __init__(self, read: Callable[[object], RunView]) -> None:
        self.read = read
        self.count = 0

    def __call__(self, run_id: object) -> RunView:
        self.count += 1
        return self.read(run_id)


@pytest.fixture
def reads(tk: Toolkit, monkeypatch: pytest.MonkeyPatch) -> Reads:
    spy = Reads(tk.runs.get)
    monkeypatch.setattr(tk.runs, "get", spy)
    return spy


@pytest.fixture
def parked(tk: Toolkit) -> ParkedBackend:
    backend = ParkedBackend(tk)
    tk.use_backend("parked", backend)
    return backend


def test_blocking_legacy_reports_where_the_run_ended_without_reading_it_back(
    tk: Toolkit, reads: Reads
) -> None:
    calls = Calls()
    register_session_job(tk, calls, target="parked", cost=0)
    calls.fail_next("predict-gpt", 1)  # one retry first: the handle shows the final outcome
    done = tk.dispatch("prediction-session", SESSION, key="u1")
    failed = tk.dispatch("prediction-session", {**SESSION, "fatal": True}, key="u2")
    assert reads.count == 0
    assert (done.backend, done.status, done.error) == ("legacy", RunStatus.COMPLETED, None)
    assert (failed.status, failed.error) == (RunStatus.FAILED, "NonRetriableError: market closed")
    # ...and the handles say what the records say.
    for handle in (done, failed):
        run = tk.runs.get(handle.run_id)
        assert (run.status, run.error) == (handle.status, handle.error)


def test_a_run_someone_else_moved_meanwhile_is_read_back(tk: Toolkit, reads: Reads) -> None:
    @tk.job("self-cancelling", target="parked")
    def cancel_then_step(ctx: JobContext, payload: Any) -> Any:
        tk.cancel(ctx.run_id, reason="operator")
        return ctx.step("after", lambda: 1)  # fenced: the attempt no longer owns the run

    handle = tk.dispatch("self-cancelling", None)
    assert reads.count == 1  # SKIPPED: the result cannot say where it ended, the record can
    assert handle.status == RunStatus.CANCELLED and handle.error == "cancelled: operator"


def test_fallback_to_blocking_legacy_reports_from_the_result(
    tk: Toolkit, parked: ParkedBackend, reads: Reads
) -> None:
    calls = Calls()
    register_session_job(tk, calls, target="parked", cost=0)
    tk.set_rollout("prediction-session", 100, reason="all")
    parked.refuse = "broker down"
    handle = tk.dispatch("prediction-session", SESSION, key="u1")
    assert reads.count == 0
    assert (handle.backend, handle.fallback_from, handle.status) == (
        "legacy",
        "parked",
        RunStatus.COMPLETED,
    )


def test_a_run_handed_to_another_thread_or_process_stays_queued(
    tk: Toolkit, parked: ParkedBackend
) -> None:
    calls = Calls()
    register_session_job(tk, calls, target="parked", cost=0)
    tk.set_rollout("prediction-session", 100, reason="all")
    run = tk.dispatch("prediction-session", SESSION, key="u1")
    assert parked.submitted == [run.run_id] and run.status == RunStatus.QUEUED
    pool = LegacyBackend(tk.runtime, mode="thread", max_workers=1)
    try:
        view = tk.runs.get(run.run_id)
        submitted = SubmittedRun(run.run_id, tk.jobs.get(view.job), view.payload, "u1")
        assert pool.submit(submitted) is None
    finally:
        pool.close(wait=True)
    assert tk.runs.get(run.run_id).status == RunStatus.COMPLETED  # the pool ran it


# --- the runtime's operations for transports ------------------------------------------------


def queued(tk: Toolkit, parked: ParkedBackend, job: str = "prediction-session") -> uuid.UUID:
    tk.set_rollout(job, 100, reason="all")
    return tk.dispatch(job, SESSION, key="u1", account="u1").run_id


@pytest.fixture
def session(tk: Toolkit) -> Calls:
    calls = Calls()
    register_session_job(tk, calls, target="parked")
    tk.credits.grant("u1", 100)
    return calls


def test_execute_returns_the_final_result_with_its_error(
    tk: Toolkit, session: Calls, parked: ParkedBackend
) -> None:
    tk.set_rollout("prediction-session", 100, reason="all")
    run_id = tk.dispatch("prediction-session", {**SESSION, "fatal": True}, account="u1").run_id
    result = tk.runtime.execute(run_id)
    assert (result.outcome, result.attempt) == (Outcome.FAILED, 1)
    assert result.error == tk.runs.get(run_id).error == "NonRetriableError: market closed"
    assert tk.runtime.execute(run_id).outcome is Outcome.SKIPPED  # final: nothing to run


def test_fail_on_a_backend_only_fails_a_run_still_recorded_there(
    tk: Toolkit, session: Calls, parked: ParkedBackend
) -> None:
    run_id = queued(tk, parked)
    expected = (RunStatus.RUNNING, RunStatus.QUEUED)
    assert not tk.runtime.fail(run_id, "gave up", expected=expected, backend="inngest")
    assert tk.runs.get(run_id).status == RunStatus.QUEUED and tk.credits.balance("u1") == 95
    assert tk.runtime.fail(run_id, "gave up", expected=expected, backend="parked")
    detail = tk.runs.detail(run_id)
    assert detail.run.status == RunStatus.FAILED and detail.run.error == "gave up"
    assert detail.dead_letter and tk.credits.balance("u1") == 100


def test_state_tells_a_transport_where_a_run_is(
    tk: Toolkit, session: Calls, parked: ParkedBackend
) -> None:
    assert tk.runtime.state(uuid.uuid4()) is None
    run_id = queued(tk, parked)
    state = tk.runtime.state(run_id)
    assert state is not None
    assert (state.status, state.attempts, state.heartbeat_at) == (RunStatus.QUEUED, 0, None)
    before = utcnow() - timedelta(seconds=1)
    assert tk.runtime.claim(run_id) is not None
    state = tk.runtime.state(run_id)
    assert state is not None and (state.status, state.attempts) == (RunStatus.RUNNING, 1)
    assert state.heartbeat_at is not None and state.heartbeat_at.replace(tzinfo=None) > (
        before.replace(tzinfo=None)
    )


class TimeLimit(Exception):
    """Stands in for a transport's soft time limit (Celery's ``SoftTimeLimitExceeded``)."""


def test_a_time_limit_inside_the_job_fails_the_run_without_retry(
    tk: Toolkit, parked: ParkedBackend
) -> None:
    tk.credits.grant("u1", 10)

    @tk.job("slow", target="parked", retries=3, timeout=2, cost=1)
    def slow(ctx: JobContext, payload: Any) -> Any:
        raise TimeLimit()

    run_id = queued(tk, parked, "slow")
    claim = tk.runtime.claim(run_id)
    assert claim is not None
    result = tk.runtime.attempt(claim, time_limit=(TimeLimit,))
    message = "JobTimeout: run exceeded the 2s timeout of job 'slow' (soft time limit)"
    assert (result.outcome, result.error) == (Outcome.FAILED, message)
    assert tk.runs.get(run_id).error == message and tk.credits.balance("u1") == 10
    # Without it, the same exception is an ordinary, retriable error.
    other = queued(tk, parked, "slow")
    claim = tk.runtime.claim(other)
    assert claim is not None and tk.runtime.attempt(claim).outcome is Outcome.RETRY


def test_time_out_fails_only_the_attempt_that_holds_the_run(
    tk: Toolkit, session: Calls, parked: ParkedBackend
) -> None:
    run_id = queued(tk, parked)
    first = tk.runtime.claim(run_id)
    second = tk.runtime.claim(run_id, take_over=True)  # the first holder was presumed dead
    assert first is not None and second is not None
    assert tk.runtime.time_out(first).outcome is Outcome.SKIPPED
    assert tk.runs.get(run_id).status == RunStatus.RUNNING
    result = tk.runtime.time_out(second, "hard time limit")
    assert result.outcome is Outcome.FAILED and (result.error or "").endswith("(hard time limit)")
    assert tk.runs.get(run_id).status == RunStatus.FAILED and tk.credits.balance("u1") == 100


def test_after_fork_replaces_the_inherited_pool(tk: Toolkit, session: Calls) -> None:
    inherited = tk.db.engine.pool
    tk.runtime.after_fork()
    inherited.dispose()  # a forked child leaves these to its parent; here we are the parent
    assert tk.db.engine.pool is not inherited
    assert tk.runtime.state(uuid.uuid4()) is None  # and the new pool works


def test_non_retriable_errors_still_win_over_a_time_limit(
    tk: Toolkit, parked: ParkedBackend
) -> None:
    @tk.job("closed", target="parked", retries=3)
    def closed(ctx: JobContext, payload: Any) -> Any:
        raise NonRetriableError("market closed")

    run_id = queued(tk, parked, "closed")
    claim = tk.runtime.claim(run_id)
    assert claim is not None
    result = tk.runtime.attempt(claim, time_limit=(TimeLimit,))
    assert (result.outcome, result.error) == (Outcome.FAILED, "NonRetriableError: market closed")
