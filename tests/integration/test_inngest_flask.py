"""The Inngest serve route on Flask (werkzeug, real HTTP): runs go end to end, and the route
refuses what the FastAPI one refuses: unsigned, wrongly signed and stale requests."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.jobs_fixture import SESSION, Calls
from tests.support.inngest_harness import (
    OTHER_SIGNING_KEY,
    InngestHarness,
    inngest_harness,
    response_signature_ok,
    sign,
)
from toolkit import RunStatus, Toolkit

pytest.importorskip("flask", reason="flask is a dev dependency: pip install -e '.[dev]'")

JOB = "prediction-session"


@pytest.fixture
def h(tk: Toolkit, calls: Calls) -> Iterator[InngestHarness]:
    with inngest_harness(tk, framework="flask") as harness:
        tk.set_rollout(JOB, 100, reason="all on inngest")
        yield harness


def test_a_run_completes_through_the_flask_route(
    tk: Toolkit, calls: Calls, h: InngestHarness
) -> None:
    run = h.dispatch_and_wait(JOB, SESSION, key="u1", account="u1")
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.backend == "inngest" and run.attempts == 1
    assert sorted(calls.log) == ["predict-claude", "predict-gpt", "predict-llama"]  # once each
    assert tk.credits.balance("u1") == 100 - tk.jobs.get(JOB).cost


def test_the_flask_route_refuses_unsigned_wrong_and_stale_signatures(
    tk: Toolkit, calls: Calls, h: InngestHarness
) -> None:
    with h.executor.paused():
        handle = h.dispatch(JOB, SESSION, key="u1", account="u1")
        body = h.first_request(JOB, handle.run_id)
        stale = sign(body, timestamp=int(time.time()) - 600)
        for what, signature in {
            "unsigned": None,
            "wrong key": sign(body, OTHER_SIGNING_KEY),
            "stale": stale,
            # The SDK verifies the first `t`: a fresh one appended must not pass the window.
            "fresh t appended to a stale signature": f"{stale}&t={int(time.time())}",
        }.items():
            assert h.post_to_serve(JOB, body, signature=signature).status_code == 401, what
        # Two headers: werkzeug reads the first copy, the SDK the last.
        fresh = f"t={int(time.time())}&s=00"
        twice = [("content-type", "application/json")]
        twice += [("x-inngest-signature", fresh), ("x-inngest-signature", stale)]
        params = {"fnId": h.function_id(JOB), "stepId": "step"}
        assert (
            h.http.post(h.serve_url, content=body, headers=twice, params=params).status_code == 401
        )
        assert tk.runs.get(handle.run_id).status == RunStatus.QUEUED
        assert calls.log == []
        accepted = h.post_to_serve(JOB, body, signature=sign(body))
        assert accepted.status_code == 206 and response_signature_ok(accepted)
    assert h.wait(handle.run_id).status == RunStatus.COMPLETED
