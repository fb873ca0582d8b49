"""The serve route runs nothing without Inngest's signature; the cron route nothing without the
secret. Every refused request leaves the runs, the credits and the event log as they were."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from tests.jobs_fixture import SESSION, Calls, register_session_job
from tests.support.inngest_harness import (
    CRON_SECRET,
    OTHER_SIGNING_KEY,
    SIGNING_KEY,
    InngestHarness,
    inngest_harness,
    response_signature_ok,
    sign,
)
from toolkit import JobContext, RunStatus, Toolkit
from toolkit.store.models import Run

JOB = "prediction-session"


@pytest.fixture
def calls(tk: Toolkit) -> Calls:
    c = Calls()
    register_session_job(tk, c)
    tk.credits.grant("u1", 100)

    @tk.job("daily-batch", event="cron/daily-batch", target="inngest")
    def daily(ctx: JobContext, payload: object) -> int:
        return int(ctx.step("count", lambda: len(c.log)))

    return c


@pytest.fixture
def h(tk: Toolkit, calls: Calls) -> Iterator[InngestHarness]:
    with inngest_harness(tk) as harness:
        yield harness


def run_count(tk: Toolkit) -> int:
    with tk.db.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(Run)) or 0)


def test_unsigned_wrongly_signed_and_tampered_requests_run_nothing(
    tk: Toolkit, calls: Calls, h: InngestHarness
) -> None:
    tk.set_rollout(JOB, 100, reason="all on inngest")
    with h.executor.paused():  # the event waits in "Inngest" while we knock on the route
        handle = h.dispatch(JOB, SESSION, key="u1", account="u1")
        body = h.first_request(JOB, handle.run_id)
        tampered = body.replace(b'"attempt": 0', b'"attempt": 3')
        assert tampered != body
        refused = {
            "unsigned": h.post_to_serve(JOB, body, signature=None),
            "wrong key": h.post_to_serve(JOB, body, signature=sign(body, OTHER_SIGNING_KEY)),
            "tampered body": h.post_to_serve(JOB, tampered, signature=sign(body)),
            "garbage header": h.post_to_serve(JOB, body, signature="t=1&s=deadbeef"),
        }
        for what, response in refused.items():
            assert response.status_code == 401, what
            assert SIGNING_KEY not in response.text and "signkey" not in response.text
        run = tk.runs.get(handle.run_id)
        assert (run.status, run.started_at, run.attempts) == (RunStatus.QUEUED, None, 0)
        assert calls.log == []
        # The same body, signed with the right key, is accepted: the 401s were the signature.
        accepted = h.post_to_serve(JOB, body, signature=sign(body))
        assert accepted.status_code == 206 and response_signature_ok(accepted)
        assert [op["displayName"] for op in accepted.json()] == ["toolkit/start"]
        assert tk.runs.get(handle.run_id).status == RunStatus.RUNNING
    # Inngest now delivers the event; its start step finds the run already started by that
    # request and carries on (the start is idempotent), every step once.
    run = h.wait(handle.run_id)
    assert run.status == RunStatus.COMPLETED and run.attempts == 1
    assert calls.log == ["predict-gpt", "predict-claude", "predict-llama"]
    assert tk.credits.balance("u1") == 95


def test_sync_needs_a_signature(h: InngestHarness) -> None:
    # Unsigned, the SDK would re-register the app at whatever URL the Host header names.
    before = len(h.api.registrations)
    refused = h.http.put(h.serve_url, headers={"host": "attacker.example"})
    assert refused.status_code == 401 and len(h.api.registrations) == before
    assert h.executor.sync().status_code == 200 and len(h.api.registrations) == before + 1


def test_inspection_needs_a_signature_and_never_shows_keys(h: InngestHarness) -> None:
    assert h.http.get(h.serve_url).status_code == 401
    signed = h.http.get(h.serve_url, headers={"x-inngest-signature": sign(b"")})
    assert signed.status_code == 200 and response_signature_ok(signed)
    body = signed.json()
    assert body["mode"] == "cloud" and body["authentication_succeeded"] is True
    assert body["function_count"] == 4  # two jobs: each a function and its cancellation cleanup
    assert SIGNING_KEY.split("-")[-1] not in signed.text and "test-event-key" not in signed.text


def test_cron_route_requires_the_secret(tk: Toolkit, calls: Calls, h: InngestHarness) -> None:
    tk.set_rollout("daily-batch", 100, reason="cron on inngest")
    for token in (None, "wrong", CRON_SECRET + "x", ""):
        response = h.cron("daily-batch", token=token)
        assert response.status_code == 401, token
        assert response.headers["www-authenticate"] == "Bearer"
        assert CRON_SECRET not in response.text
    basic = h.http.get(
        f"{h.base_url}/api/cron/daily-batch", headers={"authorization": f"Basic {CRON_SECRET}"}
    )
    assert basic.status_code == 401
    assert h.cron("no-such-job", token=None).status_code == 401  # no job names for strangers
    assert run_count(tk) == 0 and h.api.events == []


def test_cron_route_dispatches_through_the_flag(
    tk: Toolkit, calls: Calls, h: InngestHarness
) -> None:
    inline = h.cron("daily-batch")  # no rollout: the flag says legacy, the cron runs inline
    assert inline.status_code == 200, inline.text
    assert inline.json()["backend"] == "legacy" and inline.json()["status"] == "COMPLETED"
    assert h.api.events == []
    tk.set_rollout("daily-batch", 100, reason="cron on inngest")
    queued = h.cron("daily-batch", idempotency_key="2026-01-01")
    assert queued.status_code == 202 and queued.json()["backend"] == "inngest"
    again = h.cron("daily-batch", idempotency_key="2026-01-01")  # the scheduler fired twice
    assert again.json()["run_id"] == queued.json()["run_id"] and again.json()["created"] is False
    assert h.wait(queued.json()["run_id"]).status == RunStatus.COMPLETED
    assert len(h.api.events) == 1
    # Unknown jobs and jobs with a cost (they need an account) have no cron route.
    assert h.cron("no-such-job").status_code == 404
    assert h.cron(JOB).status_code == 404
    assert run_count(tk) == 2


def test_cron_route_without_a_configured_secret_refuses_everything(
    tk: Toolkit, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRON_SECRET", raising=False)
    with inngest_harness(tk, cron_secret=None) as h:
        for token in (None, "", "anything"):
            response = h.cron("daily-batch", token=token)
            assert response.status_code == 503 and response.json()["error"] == "cron_secret_missing"
        monkeypatch.setenv("CRON_SECRET", "from-the-env")
        assert h.cron("daily-batch", token="from-the-env").status_code == 200
    assert run_count(tk) == 1


def test_signed_requests_outside_the_replay_window_run_nothing(
    tk: Toolkit, calls: Calls, h: InngestHarness
) -> None:
    tk.set_rollout(JOB, 100, reason="all on inngest")
    with h.executor.paused():
        handle = h.dispatch(JOB, SESSION, key="u1", account="u1")
        body = h.first_request(JOB, handle.run_id)
        now = int(time.time())
        refused = {
            "captured 10 min ago": h.post_to_serve(
                JOB, body, signature=sign(body, timestamp=now - 600)
            ),
            "dated 10 min ahead": h.post_to_serve(
                JOB, body, signature=sign(body, timestamp=now + 600)
            ),
            "timestamp not a number": h.post_to_serve(JOB, body, signature="t=soon&s=00"),
        }
        for what, response in refused.items():
            assert response.status_code == 401, what
            assert response.json()["error"] == "signature_expired", what
        run = tk.runs.get(handle.run_id)
        assert (run.status, run.started_at, run.attempts) == (RunStatus.QUEUED, None, 0)
        assert calls.log == []
        # A minute of skew is inside the 5-minute window: the same body is accepted.
        accepted = h.post_to_serve(JOB, body, signature=sign(body, timestamp=now - 60))
        assert accepted.status_code == 206 and response_signature_ok(accepted)
    assert h.wait(handle.run_id).status == RunStatus.COMPLETED


def post_twice_signed(h: InngestHarness, job: str, body: bytes, *signatures: str) -> int:
    """Post with one ``X-Inngest-Signature`` header per signature (httpx sends each copy)."""
    headers = [("content-type", "application/json")]
    headers += [("x-inngest-signature", sig) for sig in signatures]
    params = {"fnId": h.function_id(job), "stepId": "step"}
    return h.http.post(h.serve_url, content=body, headers=headers, params=params).status_code


def test_a_fresh_timestamp_appended_to_an_old_signature_runs_nothing(
    tk: Toolkit, calls: Calls, h: InngestHarness
) -> None:
    """The SDK verifies the first ``t``; the window must check that one, and refuse a second."""
    tk.set_rollout(JOB, 100, reason="all on inngest")
    with h.executor.paused():
        handle = h.dispatch(JOB, SESSION, key="u1", account="u1")
        body = h.first_request(JOB, handle.run_id)
        now = int(time.time())
        captured = sign(body, timestamp=now - 600)  # valid, but 10 minutes old
        fresh_tail = h.post_to_serve(JOB, body, signature=f"{captured}&t={now}")
        assert fresh_tail.status_code == 401
        assert "more than once" in fresh_tail.json()["message"]
        # Two headers: the frameworks read the first copy, the SDK the last.
        assert post_twice_signed(h, JOB, body, f"t={now}&s=00", captured) == 401
        assert post_twice_signed(h, JOB, body, sign(body), sign(body)) == 401
        run = tk.runs.get(handle.run_id)
        assert (run.status, run.started_at, run.attempts) == (RunStatus.QUEUED, None, 0)
        assert calls.log == []
        accepted = h.post_to_serve(JOB, body, signature=sign(body))
        assert accepted.status_code == 206 and response_signature_ok(accepted)
    assert h.wait(handle.run_id).status == RunStatus.COMPLETED
