"""The run lifecycle every backend keeps, written once against the public API.

Each test runs on every backend and database of the ``harness`` fixture (see conftest.py).
What a step did is read from the step log, which worker processes write too, so "a step that
finished never runs again" holds across processes.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from tests.contract.conftest import ACCOUNT, BALANCE
from tests.contract.harness import Harness
from tests.contract.jobs import COST, JOB, RETRIES, SLOW, STRICT, WorkerDied
from toolkit import RunStatus
from toolkit.store.runs import RunView

ABC = {"steps": ["a", "b", "c"]}


def ledger(h: Harness, run_id: uuid.UUID) -> list[str]:
    return [entry.kind for entry in h.tk.runs.detail(run_id).ledger]


def assert_failed_with_refund(h: Harness, run: RunView) -> None:
    """FAILED, one dead letter, debited and refunded exactly once, the balance whole again."""
    detail = h.tk.runs.detail(run.id)
    assert run.status == RunStatus.FAILED, (run.status, run.error)
    assert detail.dead_letter
    assert ledger(h, run.id) == ["DEBIT", "REFUND"]
    assert h.tk.credits.balance(ACCOUNT) == BALANCE


def test_dispatch_completes_with_the_result(harness: Harness) -> None:
    handle = harness.dispatch(JOB, ABC, account=ACCOUNT, key="user-1")
    assert handle.created and handle.fallback_from is None
    run = harness.wait(handle.run_id)
    assert run.status == RunStatus.COMPLETED, (run.error, harness.diagnostics())
    assert run.backend == harness.tk.runs.get(handle.run_id).backend
    assert run.result == [{"step": "a"}, {"step": "b"}, {"step": "c"}]
    assert run.attempts == 1 and run.started_at and run.finished_at
    assert harness.steps(run.id) == ["a", "b", "c"]
    assert ledger(harness, run.id) == ["DEBIT"]
    assert harness.tk.credits.balance(ACCOUNT) == BALANCE - COST


def test_retry_then_success_keeps_finished_steps_memoized(harness: Harness) -> None:
    """b fails twice; a, which finished before, never runs again; c runs once, at the end."""
    handle = harness.dispatch(JOB, {**ABC, "fail": {"b": 2}}, account=ACCOUNT)
    run = harness.wait(handle.run_id)
    assert run.status == RunStatus.COMPLETED, (run.error, harness.diagnostics())
    assert harness.steps(run.id) == ["a", "b", "b", "b", "c"]
    assert run.attempts == 3  # inngest: the attempts of the step that needed most
    assert ledger(harness, run.id) == ["DEBIT"]
    assert harness.tk.credits.balance(ACCOUNT) == BALANCE - COST


def test_exhausted_retries_fail_with_dead_letter_and_one_refund(harness: Harness) -> None:
    handle = harness.dispatch(JOB, {**ABC, "fail": {"b": 99}}, account=ACCOUNT)
    run = harness.wait(handle.run_id)
    assert_failed_with_refund(harness, run)
    assert run.attempts == RETRIES + 1
    assert "b flaked" in (run.error or "")
    assert harness.steps(run.id) == ["a"] + ["b"] * (RETRIES + 1)


def test_non_retriable_error_fails_at_once(harness: Harness) -> None:
    handle = harness.dispatch(JOB, {**ABC, "fatal": True}, account=ACCOUNT)
    run = harness.wait(handle.run_id)
    assert_failed_with_refund(harness, run)
    assert "NonRetriableError: fatal payload" in (run.error or "")
    assert run.attempts == 1 and harness.steps(run.id) == []


def test_timeout_fails_without_retry(harness: Harness) -> None:
    """The job's 1 s timeout: step a outlasts it, b never runs, the run is not retried."""
    handle = harness.dispatch(SLOW, {"steps": ["a", "b"], "hold": {"a": 1.3}}, account=ACCOUNT)
    run = harness.wait(handle.run_id)
    assert_failed_with_refund(harness, run)
    assert "timeout" in (run.error or "").lower() or "timed out" in (run.error or "")
    assert run.attempts == 1
    assert harness.steps(run.id) == ["a"]


def test_cancel_a_running_run_stops_it_at_the_next_step_and_refunds(harness: Harness) -> None:
    hold = 0.8
    step = f"hold-{uuid.uuid4().hex[:8]}"
    payload = {"steps": [step, "after"], "hold": {step: hold}}
    with ThreadPoolExecutor(1) as pool:  # a blocking dispatch returns only when it is done
        dispatched = pool.submit(harness.dispatch, JOB, payload, account=ACCOUNT)
        run_id = harness.run_of_step(step)
        assert harness.tk.cancel(run_id, reason="user left")
        assert not harness.tk.cancel(run_id, reason="twice")  # terminal states never change
        handle = dispatched.result(timeout=20)
    harness.settle(hold + 0.4)
    run = harness.wait(run_id)
    assert handle.run_id == run_id
    assert run.status == RunStatus.CANCELLED and "user left" in (run.error or "")
    assert harness.steps(run_id) == [step]  # "after" never ran
    assert ledger(harness, run_id) == ["DEBIT", "REFUND"]
    assert harness.tk.credits.balance(ACCOUNT) == BALANCE
    assert not harness.tk.runs.detail(run_id).dead_letter


def test_cancel_a_queued_run_means_it_never_starts(harness: Harness) -> None:
    if not harness.queues:
        # Blocking legacy runs the job inside dispatch: no run of it is ever QUEUED when the
        # caller gets it back. Its contract: cancelling the finished run changes nothing.
        handle = harness.dispatch(JOB, ABC, account=ACCOUNT)
        assert handle.status == RunStatus.COMPLETED
        assert not harness.tk.cancel(handle.run_id, reason="too late")
        assert harness.tk.runs.get(handle.run_id).status == RunStatus.COMPLETED
        assert ledger(harness, handle.run_id) == ["DEBIT"]
        return
    with harness.held():
        handle = harness.dispatch(JOB, ABC, account=ACCOUNT)
        assert harness.tk.runs.get(handle.run_id).status == RunStatus.QUEUED
        assert harness.tk.cancel(handle.run_id, reason="changed my mind")
    harness.delivered(handle.run_id)  # the backend got the run now, and must not start it
    run = harness.wait(handle.run_id)
    assert run.status == RunStatus.CANCELLED and run.started_at is None and run.attempts == 0
    assert harness.steps(run.id) == []
    assert ledger(harness, run.id) == ["DEBIT", "REFUND"]
    assert harness.tk.credits.balance(ACCOUNT) == BALANCE


def test_a_run_whose_worker_died_is_taken_over_without_rerunning_finished_steps(
    harness: Harness,
) -> None:
    """Step b's first call kills its worker after a finished. Per backend (``take_over``):
    "recover": the run stays RUNNING, its heartbeat stops, and maintenance recover hands it
    over again (Celery: or the redelivered message takes it over once the heartbeat is
    stale); "engine": Inngest retries the request that died, with a's output memoized."""
    payload = {**ABC, "die": "b"}
    try:
        handle = harness.dispatch(JOB, payload, account=ACCOUNT)
        run_id = handle.run_id
    except WorkerDied:  # blocking legacy: the worker that died was the caller's thread
        run_id = harness.run_of_step("b")
    if harness.take_over == "recover":
        run = harness.recover_until_terminal(run_id)
    else:
        run = harness.wait(run_id)
    assert run.status == RunStatus.COMPLETED, (run.error, harness.diagnostics())
    assert harness.steps(run_id) == ["a", "b", "b", "c"]  # a memoized, b interrupted: again
    assert run.result == [{"step": "a"}, {"step": "b"}, {"step": "c"}]
    assert run.attempts == 2
    assert ledger(harness, run_id) == ["DEBIT"]
    assert harness.tk.credits.balance(ACCOUNT) == BALANCE - COST


def test_refused_hand_over_falls_back_to_legacy_or_fails_by_policy(harness: Harness) -> None:
    with harness.refusing(), ThreadPoolExecutor(2) as pool:
        # concurrently: the Inngest SDK retries an unreachable event API for ~3 s
        moving = pool.submit(harness.dispatch, JOB, ABC, account=ACCOUNT)
        failing = pool.submit(harness.dispatch, STRICT, ABC, account=ACCOUNT)
        moved, failed = moving.result(timeout=30), failing.result(timeout=30)
    target = harness.tk.jobs.get(JOB).target
    # fallback="legacy": the run moved to legacy, saying from where, and completed there
    assert (moved.backend, moved.fallback_from) == ("legacy", target)
    run = harness.wait(moved.run_id)
    assert run.status == RunStatus.COMPLETED and run.fallback_from == target
    assert (run.route_reason or "").startswith("fallback: ")
    assert harness.steps(run.id) == ["a", "b", "c"]
    assert ledger(harness, run.id) == ["DEBIT"]
    # fallback="fail": FAILED with the reason, dead letter, refund
    assert failed.status == RunStatus.FAILED and "not submitted" in (failed.error or "")
    failed_run = harness.wait(failed.run_id)
    assert harness.steps(failed_run.id) == []
    detail = harness.tk.runs.detail(failed.run_id)
    assert detail.dead_letter and ledger(harness, failed.run_id) == ["DEBIT", "REFUND"]
    assert harness.tk.credits.balance(ACCOUNT) == BALANCE - COST


def test_same_idempotency_key_twice_is_one_run_and_one_debit(harness: Harness) -> None:
    first = harness.dispatch(JOB, ABC, account=ACCOUNT, idempotency_key="session-1")
    again = harness.dispatch(JOB, ABC, account=ACCOUNT, idempotency_key="session-1")
    assert again.run_id == first.run_id and first.created and not again.created
    run = harness.wait(first.run_id)
    assert run.status == RunStatus.COMPLETED
    assert harness.steps(run.id) == ["a", "b", "c"]
    assert ledger(harness, run.id) == ["DEBIT"]
    assert harness.tk.credits.balance(ACCOUNT) == BALANCE - COST
    assert [r.id for r in harness.tk.runs.list(limit=10)] == [run.id]
