"""The run lifecycle on real databases: steps, retries, failure, refund, fencing."""

from __future__ import annotations

import threading
import time

import pytest

from tests.jobs_fixture import SESSION, Calls, ParkedBackend, register_session_job
from toolkit import JobContext, RunStatus, Toolkit
from toolkit.config import RetryPolicy
from toolkit.runtime.lifecycle import Outcome
from toolkit.store.steps import StepStore


@pytest.fixture
def parked(tk: Toolkit) -> ParkedBackend:
    backend = ParkedBackend(tk)
    tk.use_backend("parked", backend)
    return backend


def test_multi_step_run_completes_each_step_once(tk: Toolkit, calls: Calls) -> None:
    handle = tk.dispatch("prediction-session", SESSION, key="u1", account="u1")
    assert handle.status == RunStatus.COMPLETED and handle.backend == "legacy"
    assert calls.log == ["predict-gpt", "predict-claude", "predict-llama"]
    detail = tk.runs.detail(handle.run_id)
    assert [s.status for s in detail.steps] == ["COMPLETED"] * 3
    assert detail.run.result[0] == {"model": "gpt", "market": "m-1", "p": 0.5}
    assert detail.run.attempts == 1 and detail.run.started_at and detail.run.finished_at
    assert tk.credits.balance("u1") == 95


def test_retry_does_not_rerun_finished_steps(tk: Toolkit, calls: Calls) -> None:
    calls.fail_next("predict-claude", 2)
    handle = tk.dispatch("prediction-session", SESSION, key="u1", account="u1")
    assert handle.status == RunStatus.COMPLETED
    assert calls.count("predict-gpt") == 1  # finished before the failures: never again
    assert calls.count("predict-claude") == 1  # recorded only when it succeeded
    run = tk.runs.get(handle.run_id)
    assert run.attempts == 3
    steps = {s.name: s for s in tk.runs.detail(handle.run_id).steps}
    assert steps["predict-gpt"].attempt == 1 and steps["predict-claude"].attempt == 3
    assert tk.credits.balance("u1") == 95  # debited once across three attempts


def test_exhausted_retries_fail_with_dead_letter_and_refund(tk: Toolkit, calls: Calls) -> None:
    calls.fail_next("predict-gpt", 10)
    handle = tk.dispatch("prediction-session", SESSION, key="u1", account="u1")
    assert handle.status == RunStatus.FAILED
    detail = tk.runs.detail(handle.run_id)
    assert detail.run.attempts == 4  # retries=3 → four attempts
    assert "after 4 attempts" in (detail.run.error or "")
    assert detail.dead_letter
    assert [e.kind for e in detail.ledger] == ["DEBIT", "REFUND"]
    assert tk.credits.balance("u1") == 100


def test_non_retriable_error_fails_at_once(tk: Toolkit, calls: Calls) -> None:
    handle = tk.dispatch("prediction-session", {**SESSION, "fatal": True}, key="u1", account="u1")
    run = tk.runs.get(handle.run_id)
    assert run.status == RunStatus.FAILED and run.attempts == 1
    assert "market closed" in (run.error or "")
    assert tk.credits.balance("u1") == 100


def test_backoff_grows_exponentially_with_jitter(tk: Toolkit, parked: ParkedBackend) -> None:
    calls = Calls()
    register_session_job(tk, calls, name="flaky", cost=0, retries=4, target="parked")
    tk.set_rollout("flaky", 100, reason="test")
    calls.fail_next("predict-gpt", 4)
    tk.runtime.base_delay, tk.runtime.max_delay = 1.0, 5.0
    tk.runtime.rng = lambda: 0.5  # equal jitter: delay = ceiling * (0.5 + rand / 2)
    handle = tk.dispatch("flaky", SESSION)
    assert handle.backend == "parked" and parked.submitted == [handle.run_id]
    slept: list[float] = []
    assert tk.runtime.execute(handle.run_id, sleep=slept.append).outcome is Outcome.COMPLETED
    assert slept == [0.75, 1.5, 3.0, 3.75]  # 1, 2, 4, then capped at 5; times 0.75


def test_jitter_spreads_delays_within_bounds() -> None:
    policy = RetryPolicy(retries=3, base_delay=2.0, max_delay=60.0)
    for attempt, ceiling in ((1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)):
        assert policy.delay(attempt, 0.0) == ceiling / 2
        assert policy.delay(attempt, 0.999999) == pytest.approx(ceiling, rel=1e-5)


def test_timeout_fails_run_without_retry(tk: Toolkit) -> None:
    tk.credits.grant("u2", 10)

    @tk.job("slow", target="inngest", timeout=0.05, cost=2, retries=3)
    def slow(ctx: JobContext, payload: object) -> None:
        ctx.step("first", time.sleep, 0.1)
        ctx.step("second", lambda: None)

    handle = tk.dispatch("slow", None, account="u2")
    run = tk.runs.get(handle.run_id)
    assert run.status == RunStatus.FAILED and run.attempts == 1
    assert "JobTimeout" in (run.error or "")
    assert tk.credits.balance("u2") == 10


def test_two_workers_cannot_claim_the_same_run(tk: Toolkit, parked: ParkedBackend) -> None:
    calls = Calls()
    register_session_job(tk, calls, name="parked-job", cost=0, target="parked")
    tk.set_rollout("parked-job", 100, reason="test")
    run_id = tk.dispatch("parked-job", SESSION).run_id
    claims = [tk.runtime.claim(run_id), tk.runtime.claim(run_id)]
    assert claims[0] is not None and claims[1] is None
    assert tk.runtime.run_attempt(run_id).outcome is Outcome.SKIPPED


def test_terminal_states_never_change(tk: Toolkit, calls: Calls) -> None:
    handle = tk.dispatch("prediction-session", SESSION, key="u1", account="u1")
    rid = handle.run_id
    assert not tk.runtime.fail(rid, "late failure", expected=list(RunStatus))
    assert not tk.runtime.cancel(rid, "too late")
    assert not tk.runtime.complete(rid, None, {"x": 1})
    assert tk.runtime.claim(rid) is None
    run = tk.runs.get(rid)
    assert run.status == RunStatus.COMPLETED and run.error is None
    assert tk.credits.balance("u1") == 95  # no refund for a completed run


def test_cancel_mid_run_stops_at_next_step_and_refunds(tk: Toolkit, parked: ParkedBackend) -> None:
    tk.credits.grant("u3", 10)
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    @tk.job("cancellable", target="parked", cost=4)
    def job(ctx: JobContext, payload: object) -> None:
        ctx.step("one", lambda: ran.append("one"))
        started.set()
        release.wait(5)
        ctx.step("two", lambda: ran.append("two"))

    tk.set_rollout("cancellable", 100, reason="test")
    rid = tk.dispatch("cancellable", None, account="u3").run_id
    worker = threading.Thread(target=tk.runtime.execute, args=(rid,))
    worker.start()
    assert started.wait(5)
    assert tk.cancel(rid, reason="user closed the tab")
    release.set()
    worker.join(5)
    assert ran == ["one"]
    run = tk.runs.get(rid)
    assert run.status == RunStatus.CANCELLED
    assert tk.credits.balance("u3") == 10


def test_repeated_step_names_get_stable_suffixes(tk: Toolkit) -> None:
    @tk.job("loop", target="inngest")
    def loop(ctx: JobContext, payload: object) -> list[int]:
        return [ctx.step("tick", lambda i=i: i) for i in range(3)]

    handle = tk.dispatch("loop", None)
    detail = tk.runs.detail(handle.run_id)
    assert detail.run.result == [0, 1, 2]
    assert [s.name for s in detail.steps] == ["tick", "tick:1", "tick:2"]


def test_unserializable_step_output_fails_the_run_clearly(tk: Toolkit) -> None:
    @tk.job("bad-output", target="inngest", retries=2)
    def bad(ctx: JobContext, payload: object) -> None:
        ctx.step("obj", object)

    run = tk.runs.get(tk.dispatch("bad-output", None).run_id)
    assert run.status == RunStatus.FAILED and run.attempts == 1
    assert "not JSON-serializable" in (run.error or "")


def test_take_over_fences_the_previous_holder(tk: Toolkit, parked: ParkedBackend) -> None:
    calls = Calls()
    register_session_job(tk, calls, name="redelivered", cost=0, target="parked")
    tk.set_rollout("redelivered", 100, reason="test")
    run_id = tk.dispatch("redelivered", SESSION).run_id
    first = tk.runtime.claim(run_id)
    assert first is not None and tk.runtime.claim(run_id) is None
    second = tk.runtime.claim(run_id, take_over=True)  # the broker says the holder died
    assert second is not None and second.attempt == first.attempt + 1
    assert not tk.runtime.complete(run_id, first.attempt, "stale result")
    assert tk.runtime.complete(run_id, second.attempt, "fresh result")
    assert tk.runs.get(run_id).result == "fresh result"
    assert tk.runtime.claim(run_id, take_over=True) is None  # terminal: nobody takes it over


def test_a_superseded_attempts_step_error_leaves_the_new_holders_step_alone(
    tk: Toolkit, parked: ParkedBackend
) -> None:
    """Attempt 1 loses the run to a take-over while inside step ``s``; its late error must not
    mark the step FAILED under attempt 2, whose result then records and memoizes normally."""
    calls = Calls()
    register_session_job(tk, calls, name="parked-job", cost=0, target="parked")
    tk.set_rollout("parked-job", 100, reason="test")
    run_id = tk.dispatch("parked-job", SESSION).run_id
    steps = StepStore(tk.db, tk.store.transitions)
    assert tk.store.claim(run_id) is not None  # attempt 1
    assert steps.memoized(run_id, 1, "s") == (False, None)
    taken = tk.store.claim(run_id, take_over=True)  # attempt 2: the holder was presumed dead
    assert taken is not None and taken.attempts == 2
    assert steps.memoized(run_id, 2, "s") == (False, None)
    steps.finish(run_id, 1, "s", error="RuntimeError: the lost attempt's late failure")
    steps.finish(run_id, 2, "s", output={"x": 1})
    assert steps.memoized(run_id, 2, "s") == (True, {"x": 1})
    step = tk.runs.detail(run_id).steps[0]
    assert (step.status, step.error) == ("COMPLETED", None)
