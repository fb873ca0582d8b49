"""The Celery backend in this process: submission, fallback, configuration checks, and the
delivery decisions (claim, take over, defer, drop) with the broker publish recorded.

The real-worker behaviour is in test_celery_worker.py; these need no worker and run on both
databases.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from tests.support.celery_app import STEPS_TIMEOUT, TEST_BACKEND_OPTIONS, register_jobs
from tests.support.celery_harness import REDIS_URL, unreachable
from toolkit import RunStatus, Toolkit
from toolkit.backends.celery.backend import CeleryBackend
from toolkit.backends.celery.config import mask_url
from toolkit.cli import main
from toolkit.errors import BrokerConfigError
from toolkit.store.models import Run, utcnow

STEPS = {"steps": ["a", "b"]}


CeleryTk = tuple[Toolkit, CeleryBackend, list[dict[str, Any]]]  # toolkit, backend, publishes


class FakeTask:
    name = "toolkit.run.celery-steps"


@pytest.fixture
def celery_tk(tk: Toolkit) -> CeleryTk:
    """A celery backend whose publishes are recorded instead of sent (broker: memory://)."""
    register_jobs(tk)
    backend = tk.use_backend("celery", broker_url="memory://", **TEST_BACKEND_OPTIONS)
    assert isinstance(backend, CeleryBackend)
    published: list[dict[str, Any]] = []

    def record(
        job: Any, run_id: uuid.UUID, *, countdown: float = 0.0, reserved: bool = False
    ) -> None:
        published.append(
            {"job": job.name, "run_id": run_id, "countdown": countdown, "reserved": reserved}
        )

    # the fixture's point: publishes are recorded, never sent
    backend.publish = record  # type: ignore[method-assign]
    for job in tk.jobs.names():
        tk.set_rollout(job, 100, reason="test")
    tk.credits.grant("acct", 100)
    return tk, backend, published


def _deliver(backend: CeleryBackend, run_id: uuid.UUID, job: str = "celery-steps") -> str:
    return backend.delivery.handle(FakeTask(), backend.jobs.get(job), str(run_id), reserved=False)


def _set(tk: Toolkit, run_id: uuid.UUID, **values: Any) -> None:
    with tk.db.transaction() as s:
        s.execute(update(Run).where(Run.id == run_id).values(**values))


# --- submission and fallback -------------------------------------------------------------


@pytest.mark.parametrize(
    "broker",
    ["redis://:s3cret@127.0.0.1:1/0", "amqp://guest:s3cret@127.0.0.1:1//"],
    ids=["redis", "amqp"],
)
def test_unreachable_broker_falls_back_fast_and_never_shows_the_password(
    tk: Toolkit, broker: str
) -> None:
    register_jobs(tk)
    tk.use_backend("celery", broker_url=broker, **TEST_BACKEND_OPTIONS)
    tk.set_rollout("celery-steps", 100, reason="test")
    tk.credits.grant("acct", 20)
    started = time.monotonic()
    handle = tk.dispatch("celery-steps", STEPS, account="acct")
    elapsed = time.monotonic() - started
    assert elapsed < 3.0, f"dispatch hung {elapsed:.1f}s on an unreachable broker"
    assert handle.backend == "legacy" and handle.fallback_from == "celery"
    assert handle.status == RunStatus.COMPLETED  # ran inline on the legacy path
    run = tk.runs.get(handle.run_id)
    assert run.fallback_from == "celery" and "celery broker" in (run.route_reason or "")
    assert "s3cret" not in (run.route_reason or "") and "***" in (run.route_reason or "")
    assert tk.credits.balance("acct") == 15  # debited once, on the path that ran it


def test_unreachable_broker_with_fail_policy_fails_and_refunds(tk: Toolkit) -> None:
    tk.use_backend("celery", broker_url="redis://127.0.0.1:1/0", **TEST_BACKEND_OPTIONS)

    @tk.job("strict", target="celery", cost=4, fallback="fail")
    def strict(ctx: Any, payload: Any) -> None:
        return None

    tk.set_rollout("strict", 100, reason="test")
    tk.credits.grant("acct", 4)
    handle = tk.dispatch("strict", None, account="acct")
    assert handle.status == RunStatus.FAILED and "not submitted" in (handle.error or "")
    detail = tk.runs.detail(handle.run_id)
    assert detail.dead_letter and [e.kind for e in detail.ledger] == ["DEBIT", "REFUND"]
    assert tk.credits.balance("acct") == 4


def test_mask_url_hides_only_the_password() -> None:
    assert mask_url("amqp://guest:pw@host:5672//") == "amqp://guest:***@host:5672//"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


# --- configuration checks ------------------------------------------------------------------


def test_short_visibility_timeout_is_refused_with_the_numbers(tk: Toolkit) -> None:
    register_jobs(tk)
    options = {**TEST_BACKEND_OPTIONS, "visibility_timeout": 3.0}
    backend = tk.use_backend("celery", broker_url="redis://127.0.0.1:6379/0", **options)
    assert isinstance(backend, CeleryBackend)
    with pytest.raises(BrokerConfigError) as refused:
        backend.check_config()
    message = str(refused.value)
    hard = STEPS_TIMEOUT + TEST_BACKEND_OPTIONS["time_limit_grace"]
    assert "visibility timeout (3s)" in message and "celery-steps" in message
    assert f"hard time limit {hard:g}s" in message and "visibility_timeout >= 6" in message
    # dispatch does not queue what the broker would deliver twice: the fallback takes it
    tk.set_rollout("celery-steps", 100, reason="test")
    tk.credits.grant("acct", 5)
    handle = tk.dispatch("celery-steps", STEPS, account="acct")
    assert handle.fallback_from == "celery" and "visibility timeout" in (handle.route_reason or "")


def test_rabbitmq_needs_no_visibility_timeout_but_a_redis_for_rate_limits(tk: Toolkit) -> None:
    register_jobs(tk)
    options = {**TEST_BACKEND_OPTIONS, "visibility_timeout": 1.0}
    backend = tk.use_backend("celery", broker_url="amqp://guest:guest@127.0.0.1:1//", **options)
    assert isinstance(backend, CeleryBackend)
    with pytest.raises(BrokerConfigError, match="TOOLKIT_RATE_LIMIT_URL"):
        backend.check_config()  # celery-limited has a rate limit and the broker is not Redis
    backend.check_job(tk.jobs.get("celery-steps"))  # no visibility rule on AMQP


def test_jobs_sharing_a_rate_limit_key_must_agree(tk: Toolkit) -> None:
    from toolkit import RateLimit

    register_jobs(tk)

    @tk.job("other", target="celery", rate_limit=RateLimit("test-shared-llm", 50, 1))
    def other(ctx: Any, payload: Any) -> None:
        return None

    backend = tk.use_backend("celery", broker_url="memory://", **TEST_BACKEND_OPTIONS)
    assert isinstance(backend, CeleryBackend)
    with pytest.raises(BrokerConfigError, match="one key, one limit"):
        backend.check_job(tk.jobs.get("other"))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"stale_after": 1.0, "heartbeat_interval": 1.0}, "at least twice"),
        ({"visibility_timeout": 0}, "must be positive"),
        ({"broker_url": "no-scheme"}, "has no scheme"),
        ({"bogus": 1}, "unexpected keyword"),
    ],
)
def test_bad_backend_options_are_refused(tk: Toolkit, options: dict[str, Any], match: str) -> None:
    with pytest.raises(BrokerConfigError, match=match):
        tk.use_backend("celery", **options)


def test_worker_command_refuses_a_short_visibility_timeout(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOOLKIT_DATABASE_URL", db_url)
    monkeypatch.setenv("TOOLKIT_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("TOOLKIT_TEST_CELERY", '{"visibility_timeout": 2}')
    code = main(["--app", "tests.support.celery_app:build", "worker", "--concurrency", "1"])
    assert code == 2
    assert "visibility timeout (2s)" in capsys.readouterr().err


def test_worker_command_needs_an_app(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker"]) == 2
    assert "--app" in capsys.readouterr().err


def test_importing_toolkit_does_not_import_celery() -> None:
    code = "import sys, toolkit, toolkit.cli; sys.exit('celery' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- delivery decisions ------------------------------------------------------------------------


def test_delivery_runs_a_queued_run_and_republishes_a_retry(celery_tk: CeleryTk) -> None:
    tk, backend, published = celery_tk
    ok = tk.dispatch("celery-steps", STEPS, account="acct")
    flaky = tk.dispatch("celery-steps", {**STEPS, "fail_until": {"a": 1}}, account="acct")
    published.clear()
    assert _deliver(backend, ok.run_id) == "completed"
    assert _deliver(backend, flaky.run_id) == "retry"
    run = tk.runs.get(flaky.run_id)
    assert run.status == RunStatus.QUEUED and run.attempts == 1
    (retry,) = published
    base = tk.runtime.base_delay  # the runtime's backoff, equal jitter: [base / 2, base]
    assert retry["run_id"] == flaky.run_id and base / 2 <= retry["countdown"] <= base
    assert _deliver(backend, flaky.run_id) == "completed"
    assert _deliver(backend, ok.run_id) == "duplicate"  # a redelivery of a finished run
    assert len(published) == 1


def test_delivery_defers_while_the_holder_beats_and_takes_over_when_it_stops(
    celery_tk: CeleryTk,
) -> None:
    tk, backend, published = celery_tk
    handle = tk.dispatch("celery-steps", STEPS, account="acct")
    holder = tk.runtime.claim(handle.run_id)  # a live worker holds attempt 1
    assert holder is not None
    published.clear()
    assert _deliver(backend, handle.run_id) == "deferred"  # e.g. RabbitMQ redelivered it
    (again,) = published
    stale_after = TEST_BACKEND_OPTIONS["stale_after"]
    assert stale_after < again["countdown"] <= stale_after + 1.0
    assert tk.runs.get(handle.run_id).attempts == 1  # nobody else started an attempt

    _set(tk, handle.run_id, heartbeat_at=utcnow() - timedelta(seconds=stale_after + 1))
    assert _deliver(backend, handle.run_id) == "completed"  # the holder is gone: take over
    run = tk.runs.get(handle.run_id)
    assert run.status == RunStatus.COMPLETED and run.attempts == 2
    assert not tk.runtime.heartbeat(holder)  # the old holder is fenced out
    assert not tk.runtime.complete(handle.run_id, holder.attempt, "late")


def test_take_over_without_attempts_left_fails_with_refund(celery_tk: CeleryTk) -> None:
    tk, backend, _ = celery_tk
    handle = tk.dispatch("celery-steps", STEPS, account="acct")
    max_attempts = tk.jobs.get("celery-steps").max_attempts
    stale = utcnow() - timedelta(minutes=5)
    _set(tk, handle.run_id, status="RUNNING", attempts=max_attempts, heartbeat_at=stale)
    assert _deliver(backend, handle.run_id) == "failed"  # its last worker died mid-run
    detail = tk.runs.detail(handle.run_id)
    assert detail.run.status == RunStatus.FAILED and "was lost" in (detail.run.error or "")
    assert [e.kind for e in detail.ledger] == ["DEBIT", "REFUND"]


def test_unknown_and_malformed_runs_are_dropped(celery_tk: CeleryTk) -> None:
    _, backend, published = celery_tk
    published.clear()
    assert _deliver(backend, uuid.uuid4()) == "unknown"
    task = FakeTask()
    job = backend.jobs.get("celery-steps")
    assert backend.delivery.handle(task, job, "not-a-uuid", reserved=False) == "malformed"
    assert published == []


def test_database_outage_defers_the_message(
    celery_tk: CeleryTk, monkeypatch: pytest.MonkeyPatch
) -> None:
    tk, backend, published = celery_tk
    handle = tk.dispatch("celery-steps", STEPS, account="acct")
    published.clear()
    from toolkit.errors import DatabaseError

    def down(*args: Any, **kwargs: Any) -> None:
        raise DatabaseError("database unavailable")

    monkeypatch.setattr(tk.runtime, "claim", down)
    assert _deliver(backend, handle.run_id) == "deferred"
    assert published[0]["countdown"] == TEST_BACKEND_OPTIONS["retry_delay"]


def test_failed_republish_rejects_the_message_back_to_the_broker(celery_tk: CeleryTk) -> None:
    from celery.exceptions import Reject

    tk, backend, _ = celery_tk
    handle = tk.dispatch("celery-steps", {**STEPS, "fail_until": {"a": 1}}, account="acct")

    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    # the broker's outage, at the one call that talks to it
    backend.publish = broker_down  # type: ignore[method-assign]
    with pytest.raises(Reject) as rejected:
        _deliver(backend, handle.run_id)
    assert rejected.value.requeue  # not acknowledged: the broker delivers it again


def test_soft_time_limit_becomes_a_final_job_timeout(celery_tk: CeleryTk) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    tk, backend, published = celery_tk

    @tk.job("soft", target="celery", cost=2, retries=3, timeout=2)
    def soft(ctx: Any, payload: Any) -> None:
        ctx.step("one", lambda: None)
        raise SoftTimeLimitExceeded()  # what billiard raises in the job at the soft limit

    tk.set_rollout("soft", 100, reason="test")
    handle = tk.dispatch("soft", None, account="acct")
    published.clear()
    assert _deliver(backend, handle.run_id, job="soft") == "failed"
    detail = tk.runs.detail(handle.run_id)
    assert detail.run.attempts == 1 and "JobTimeout" in (detail.run.error or "")
    assert [e.kind for e in detail.ledger] == ["DEBIT", "REFUND"] and published == []


# --- the shared token bucket -------------------------------------------------------------------


@pytest.fixture
def bucket() -> Iterator[Any]:
    from toolkit.backends.celery.ratelimit import RedisTokenBucket

    reason = unreachable(REDIS_URL)
    if reason:
        from tests.conftest import service_missing

        service_missing(reason)
    b = RedisTokenBucket(REDIS_URL, prefix=f"tk-test-{uuid.uuid4().hex[:8]}:", rng=lambda: 0.0)
    yield b
    b.close()


def test_token_bucket_bursts_then_reserves_spaced_slots(bucket: Any) -> None:
    from toolkit import RateLimit
    from toolkit.backends.celery.ratelimit import Verdict

    limit = RateLimit("llm", limit=4, period=2.0)  # 2 tokens/s
    try:
        verdicts = [bucket.acquire(limit) for _ in range(9)]
        assert [v.verdict for v in verdicts[:4]] == [Verdict.RUN] * 4  # the burst
        reserved = verdicts[4:8]
        assert [v.verdict for v in reserved] == [Verdict.RESERVED] * 4  # one period ahead
        waits = [v.wait for v in reserved]
        assert waits == pytest.approx([0.5, 1.0, 1.5, 2.0], abs=0.05)  # one refill apart
        assert verdicts[8].verdict is Verdict.LATER  # beyond the horizon: ask again
        assert verdicts[8].wait == pytest.approx(0.5, abs=0.05)
        time.sleep(0.55)  # a refill later the next caller may reserve again
        assert bucket.acquire(limit).verdict is Verdict.RESERVED
    finally:
        bucket.reset(limit)


def test_token_bucket_unreachable_redis_is_a_clear_error() -> None:
    from toolkit import RateLimit
    from toolkit.backends.celery.ratelimit import RedisTokenBucket
    from toolkit.errors import RateLimitUnavailable

    bucket = RedisTokenBucket("redis://127.0.0.1:1/0", connect_timeout=0.5)
    with pytest.raises(RateLimitUnavailable, match="Redis unreachable"):
        bucket.acquire(RateLimit("x", 1, 1.0))
