"""End to end through ``tk.dispatch``: the fake event API, the executor stand-in playing
Inngest, and the app's real serve route in production mode (signed requests only)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.jobs_fixture import SESSION, Calls
from tests.support.inngest_harness import InngestHarness, inngest_harness
from toolkit import JobContext, NonRetriableError, RunStatus, Toolkit
from toolkit.jobs import SubmittedRun

JOB = "prediction-session"
STEPS = ["predict-gpt", "predict-claude", "predict-llama"]


@pytest.fixture
def h(tk: Toolkit, calls: Calls) -> Iterator[InngestHarness]:
    @tk.job("strict", target="inngest", cost=2)
    def strict(ctx: JobContext, payload: object) -> None:
        ctx.step("validate", lambda: (_ for _ in ()).throw(NonRetriableError("bad market")))

    @tk.job("slow", target="inngest", timeout=1, cost=2)
    def slow(ctx: JobContext, payload: object) -> None:
        ctx.step("first", time.sleep, 1.05)
        ctx.step("second", calls.record, "second")

    @tk.job("strict-fallback", target="inngest", cost=2, fallback="fail")
    def strict_fallback(ctx: JobContext, payload: object) -> str:
        return "never"

    with inngest_harness(tk) as harness:
        for job in (JOB, "strict", "slow", "strict-fallback"):
            tk.set_rollout(job, 100, reason="all on inngest")
        yield harness


def main_calls(h: InngestHarness, job: str = JOB) -> list[tuple[int, int, tuple[str, ...]]]:
    return [(c.attempt, c.status, c.steps) for c in h.executor.calls_for(h.function_id(job))]


def test_multi_step_run_completes_each_step_once(
    tk: Toolkit, calls: Calls, h: InngestHarness
) -> None:
    handle = h.dispatch(JOB, SESSION, key="u1", account="u1")
    assert (handle.backend, handle.status) == ("inngest", RunStatus.QUEUED)
    run = h.wait(handle.run_id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert calls.log == STEPS
    assert run.result == [
        {"model": m, "market": "m-1", "p": 0.5} for m in ("gpt", "claude", "llama")
    ]
    assert run.attempts == 1 and run.started_at and run.finished_at
    # One request per step, each a 206 with the step's op, then the 200 with the result.
    assert main_calls(h) == [
        (0, 206, ("toolkit/start",)),
        *[(0, 206, (s,)) for s in STEPS],
        (0, 206, ("toolkit/complete",)),
        (0, 200, ()),
    ]
    [outcome] = h.executor.outcomes
    assert outcome.status == "completed" and outcome.output == run.result
    assert run.external_id == outcome.inngest_run
    [event] = h.api.events
    assert event["id"] == str(handle.run_id) and event["name"] == "prediction.session.requested"
    assert event["data"] == {"run_id": str(handle.run_id), "job": JOB}  # no payload in Inngest
    assert tk.credits.balance("u1") == 95


def test_step_failing_twice_then_succeeding_does_not_rerun_earlier_steps(
    tk: Toolkit, calls: Calls, h: InngestHarness
) -> None:
    calls.fail_next("predict-claude", 2)
    run = h.dispatch_and_wait(JOB, SESSION, key="u1", account="u1")
    assert run.status == RunStatus.COMPLETED, run.error
    assert calls.count("predict-gpt") == 1 and calls.count("predict-claude") == 1
    claude = [(a, s) for a, s, steps in main_calls(h) if steps == ("predict-claude",)]
    assert claude == [(0, 206), (1, 206), (2, 206)]  # StepError, StepError, StepRun
    assert run.attempts == 3  # Inngest's attempt count of the step that needed most
    assert tk.credits.balance("u1") == 95


def test_non_retriable_error_fails_at_once_with_refund_and_dead_letter(
    tk: Toolkit, calls: Calls, h: InngestHarness
) -> None:
    tk.credits.grant("u2", 10)
    outside = h.dispatch_and_wait(JOB, {**SESSION, "fatal": True}, key="u1", account="u1")
    inside = h.dispatch_and_wait("strict", None, account="u2")
    for run, job in ((outside, JOB), (inside, "strict")):
        assert run.status == RunStatus.FAILED
        assert run.error == "NonRetriableError: " + (
            "market closed" if job == JOB else "bad market"
        )
        assert [s for _, s, _ in main_calls(h, job)][-1] == 500  # no retry after the 500
        assert [a for a, _, _ in main_calls(h, job)] == [0] * len(main_calls(h, job))
        assert tk.runs.detail(run.id).dead_letter
    assert calls.log == []
    assert tk.credits.balance("u1") == 100 and tk.credits.balance("u2") == 10
    failures = [o for o in h.executor.outcomes if o.function.endswith("-failure")]
    assert [o.status for o in failures] == ["completed", "completed"]


def test_exhausted_retries_reach_on_failure(tk: Toolkit, calls: Calls, h: InngestHarness) -> None:
    calls.fail_next("predict-gpt", 10)
    run = h.dispatch_and_wait(JOB, SESSION, key="u1", account="u1")
    assert run.status == RunStatus.FAILED
    assert run.error == "RuntimeError: predict-gpt flaked (7 left)"
    gpt = [(a, s) for a, s, steps in main_calls(h) if steps == ("predict-gpt",)]
    assert gpt == [(0, 206), (1, 206), (2, 206), (3, 206)]  # retries=3: four attempts
    assert main_calls(h)[-1][1] == 500  # the step's error, raised into the function
    assert run.attempts == 4
    assert tk.credits.balance("u1") == 100
    assert tk.runs.detail(run.id).dead_letter
    [notice] = h.executor.system_events
    assert notice["name"] == "inngest/function.failed"
    assert notice["data"]["function_id"] == h.function_id(JOB)
    failure = h.executor.calls_for(h.function_id(JOB) + "-failure")
    assert [(c.status, c.steps) for c in failure] == [(206, ("toolkit/fail",)), (200, ())]


def test_one_event_per_idempotency_key_and_inngest_drops_a_repeated_event_id(
    tk: Toolkit, calls: Calls, h: InngestHarness
) -> None:
    first = h.dispatch(JOB, SESSION, key="u1", account="u1", idempotency_key="sess-1")
    again = h.dispatch(JOB, SESSION, key="u1", account="u1", idempotency_key="sess-1")
    assert again.run_id == first.run_id and not again.created
    assert h.wait(first.run_id).status == RunStatus.COMPLETED
    assert len(h.api.events) == 1
    # Even if the same run's event were sent again (a recovery, a retried send), the run id
    # is the event id: Inngest starts nothing.
    h.backend.submit(_submitted(tk, first.run_id))
    h.executor.wait_idle()
    assert h.executor.deduped == [str(first.run_id)]
    assert calls.log == STEPS and tk.credits.balance("u1") == 95


def _submitted(tk: Toolkit, run_id: object) -> SubmittedRun:
    run = tk.runs.get(run_id)
    return SubmittedRun(run.id, tk.jobs.get(run.job), run.payload, run.targeting_key)


def test_finish_timeout_cancels_and_the_cleanup_fails_the_run(
    tk: Toolkit, calls: Calls, h: InngestHarness
) -> None:
    tk.credits.grant("u3", 10)
    run = h.dispatch_and_wait("slow", None, account="u3")
    assert run.status == RunStatus.FAILED and "timeout" in (run.error or "")
    assert calls.log == []  # the second step never ran
    assert tk.credits.balance("u3") == 10 and tk.runs.detail(run.id).dead_letter
    assert [e["name"] for e in h.executor.system_events] == ["inngest/function.cancelled"]


def test_event_api_down_falls_back_to_legacy_or_fails_per_policy(
    tk: Toolkit, calls: Calls, h: InngestHarness
) -> None:
    tk.credits.grant("u4", 10)
    with h.event_api_down(), ThreadPoolExecutor(2) as pool:
        # Concurrently: the SDK retries an unreachable event API for ~3 s before giving up.
        moving = pool.submit(h.dispatch, JOB, SESSION, key="u1", account="u1")
        failing = pool.submit(h.dispatch, "strict-fallback", None, account="u4")
        moved, failed = moving.result(), failing.result()
    assert h.api.events == []
    # fallback="legacy": the run ran inline, recorded as a fallback from inngest, saying why.
    assert (moved.backend, moved.fallback_from, moved.status) == ("legacy", "inngest", "COMPLETED")
    assert "event API" in (moved.route_reason or "") and "SendEventsError" in (
        moved.route_reason or ""
    )
    assert calls.log == STEPS and tk.credits.balance("u1") == 95
    run = tk.runs.get(moved.run_id)
    assert (run.backend, run.fallback_from, run.status) == ("legacy", "inngest", "COMPLETED")
    # fallback="fail": FAILED with the reason, refunded, dead letter written.
    assert failed.status == RunStatus.FAILED and "not submitted" in (failed.error or "")
    assert tk.runs.get(failed.run_id).status == RunStatus.FAILED
    assert tk.credits.balance("u4") == 10 and tk.runs.detail(failed.run_id).dead_letter
    # The secrets never appear in what the user sees.
    for text in (moved.route_reason or "", failed.error or ""):
        assert "test-event-key" not in text and "signkey" not in text
