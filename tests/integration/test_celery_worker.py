"""The Celery backend with real prefork workers (subprocesses) on Redis and RabbitMQ.

Workers and test share a PostgreSQL database; what a step function did is logged to a file
by the worker processes themselves, so "a finished step never ran again" is proven across
processes, not with in-memory lists. Limits are short (see tests/support/celery_app.py).
"""

from __future__ import annotations

import itertools
import os
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import service_missing
from tests.support.celery_app import SHARED_LIMIT, make_app
from tests.support.celery_harness import (
    RABBITMQ_URL,
    REDIS_URL,
    CeleryTestEnv,
    CeleryWorkers,
    celery_workers,
    unreachable,
    wait_for,
)
from toolkit import Toolkit
from toolkit.store.runs import RunView

pytestmark = pytest.mark.postgres

STEPS = {"steps": ["a", "b", "c"]}


def _env(broker_url: str) -> Iterator[CeleryTestEnv]:
    reason = unreachable(broker_url)
    if reason:
        service_missing(reason)
    env = CeleryTestEnv.isolated(broker_url)
    yield env
    env.cleanup()


@pytest.fixture
def redis_env() -> Iterator[CeleryTestEnv]:
    yield from _env(REDIS_URL)


@pytest.fixture
def rabbit_env() -> Iterator[CeleryTestEnv]:
    if unreachable(REDIS_URL):  # rate-limited jobs keep their bucket in Redis
        service_missing(unreachable(REDIS_URL) or "")
    yield from _env(RABBITMQ_URL)


@contextmanager
def _app(database_url: str, env: CeleryTestEnv) -> Iterator[Toolkit]:
    """The test's side of the app: every job at 100 % on celery, 1000 credits on "acct"."""
    tk = make_app(database_url, env.broker_url, env.options)
    try:
        for job in tk.jobs.names():
            tk.set_rollout(job, 100, reason="celery tests: every run on celery")
        tk.credits.grant("acct", 1000)
        yield tk
    finally:
        tk.close()


@pytest.fixture
def app(pg_url: str, redis_env: CeleryTestEnv) -> Iterator[Toolkit]:
    with _app(pg_url, redis_env) as tk:
        yield tk


def _finished(
    tk: Toolkit, run_ids: list[Any], workers: CeleryWorkers, timeout: float
) -> list[RunView]:
    def done() -> list[RunView] | None:
        views = [tk.runs.get(r) for r in run_ids]
        return views if all(v.terminal for v in views) else None

    try:
        return wait_for(done, timeout, interval=0.1, what="runs to finish")
    except AssertionError as exc:
        states = [(str(r), tk.runs.get(r).status) for r in run_ids]
        raise AssertionError(f"{exc}: {states}\n{workers.logs()}") from None


def _ledger(tk: Toolkit, run_id: Any) -> list[str]:
    return [e.kind for e in tk.runs.detail(run_id).ledger]


def test_runs_complete_on_a_real_worker(
    app: Toolkit, pg_url: str, redis_env: CeleryTestEnv, tmp_path: Path
) -> None:
    with celery_workers(pg_url, redis_env, workdir=tmp_path) as workers:
        handles = [app.dispatch("celery-steps", STEPS, account="acct") for _ in range(4)]
        assert {(h.backend, h.status) for h in handles} == {("celery", "QUEUED")}
        views = _finished(app, [h.run_id for h in handles], workers, 20)
    assert {v.status for v in views} == {"COMPLETED"}, workers.logs()
    for view in views:
        assert view.attempts == 1 and view.backend == "celery"
        assert [o["step"] for o in view.result["outputs"]] == ["a", "b", "c"]
        assert _ledger(app, view.id) == ["DEBIT"]
    calls = Counter((run, step) for run, step, *_ in workers.steps())
    assert set(calls.values()) == {1} and len(calls) == 12  # every step ran exactly once
    assert app.credits.balance("acct") == 1000 - 4 * 5


def test_retries_wait_out_their_backoff_then_fail_for_good(
    app: Toolkit, pg_url: str, redis_env: CeleryTestEnv, tmp_path: Path
) -> None:
    with celery_workers(pg_url, redis_env, workdir=tmp_path) as workers:
        flaky = app.dispatch("celery-steps", {**STEPS, "fail_until": {"b": 2}}, account="acct")
        doomed = app.dispatch("celery-steps", {**STEPS, "fail_until": {"a": 99}}, account="acct")
        ok, failed = _finished(app, [flaky.run_id, doomed.run_id], workers, 30)

    assert ok.status == "COMPLETED" and ok.attempts == 3, workers.logs()
    log = [row for row in workers.steps() if row[0] == str(flaky.run_id)]
    assert [(step, attempt) for _, step, attempt, _, _ in log] == [
        ("a", 1), ("b", 1), ("b", 2), ("b", 3), ("c", 3),
    ]  # fmt: skip
    # Exponential backoff with equal jitter, base 0.2 s: after attempt n the run waits
    # 0.2 * 2**(n-1) * [0.5, 1.0] seconds (plus delivery); never less.
    b_times = [at for _, step, _, _, at in log if step == "b"]
    gaps = [later - earlier for earlier, later in itertools.pairwise(b_times)]
    assert 0.1 <= gaps[0] < 0.2 + 1.0 and 0.2 <= gaps[1] < 0.4 + 1.0, gaps
    assert _ledger(app, ok.id) == ["DEBIT"]

    assert failed.status == "FAILED" and failed.attempts == 4  # retries=3
    assert "after 4 attempts" in (failed.error or "")
    detail = app.runs.detail(failed.id)
    assert detail.dead_letter and [e.kind for e in detail.ledger] == ["DEBIT", "REFUND"]
    assert app.credits.balance("acct") == 1000 - 5


def test_time_limits_fail_the_run_with_refund(
    app: Toolkit, pg_url: str, redis_env: CeleryTestEnv, tmp_path: Path
) -> None:
    with celery_workers(pg_url, redis_env, workdir=tmp_path) as workers:
        soft = app.dispatch("celery-slow", {"sleep": 30}, account="acct")
        hard = app.dispatch("celery-stubborn", {"sleep": 30}, account="acct")
        by_soft, by_hard = _finished(app, [soft.run_id, hard.run_id], workers, 15)
        # the pool replaced the killed child: the worker still takes work
        after = app.dispatch("celery-steps", STEPS, account="acct")
        (later,) = _finished(app, [after.run_id], workers, 15)

    # soft limit (= the job's 1 s timeout): the job sees it, the run fails as JobTimeout
    assert by_soft.status == "FAILED" and by_soft.attempts == 1, workers.logs()
    assert "JobTimeout" in (by_soft.error or "") and "soft time limit" in (by_soft.error or "")
    assert by_soft.duration_seconds is not None and by_soft.duration_seconds < 2.5
    # hard limit (timeout + 1 s grace): the job swallowed the soft limit, the child is killed
    assert by_hard.status == "FAILED" and by_hard.attempts == 1
    assert "hard time limit of 2s" in (by_hard.error or "")
    for view in (by_soft, by_hard):  # not retried, dead-lettered, refunded
        detail = app.runs.detail(view.id)
        assert detail.dead_letter and [e.kind for e in detail.ledger] == ["DEBIT", "REFUND"]
    assert later.status == "COMPLETED"
    assert app.credits.balance("acct") == 1000 - 5


def test_sigkilled_worker_resumes_on_a_restarted_worker(
    app: Toolkit, pg_url: str, redis_env: CeleryTestEnv, tmp_path: Path
) -> None:
    """A machine crash mid-run: the message stays unacknowledged in Redis, comes back after
    the visibility timeout, and the new worker takes over the RUNNING run (its heartbeat
    stopped), skipping the step that had finished."""
    with celery_workers(pg_url, redis_env, workdir=tmp_path) as workers:
        handle = app.dispatch(
            "celery-steps", {**STEPS, "hold": {"b": 20}}, account="acct"
        )  # step b hangs on attempt 1
        wait_for(
            lambda: any(r[0] == str(handle.run_id) and r[1] == "b" for r in workers.steps()),
            15,
            what="step b to start",
        )
        workers[0].kill(signal.SIGKILL)  # the worker and its pool children, mid-step
        assert app.runs.get(handle.run_id).status == "RUNNING"
        workers.start()
        (view,) = _finished(app, [handle.run_id], workers, 25)

    assert view.status == "COMPLETED" and view.attempts == 2, workers.logs()
    log = [(step, attempt) for run, step, attempt, *_ in workers.steps() if run == str(view.id)]
    # a: finished before the crash, memoized after it; b: interrupted mid-step, so run again
    assert log == [("a", 1), ("b", 1), ("b", 2), ("c", 2)]
    assert view.result["worker"] == "w2"
    assert _ledger(app, view.id) == ["DEBIT"]  # debited once, never refunded
    assert app.credits.balance("acct") == 1000 - 5


def test_killed_pool_child_is_taken_over_once_its_heartbeat_stops(
    pg_url: str, redis_env: CeleryTestEnv, tmp_path: Path
) -> None:
    """reject_on_worker_lost requeues the message once the pool notices the dead child (up to
    ~5 s: billiard's pool maintenance interval); the redelivered message waits for the dead
    child's heartbeat to go stale (never two live attempts), then takes the run over."""
    # a timeout longer than the pool's detection delay, or the hard limit would fire first
    env = CeleryTestEnv(
        redis_env.broker_url, {**redis_env.options, "steps_timeout": 8, "visibility_timeout": 11}
    )
    with (
        _app(pg_url, env) as app,
        celery_workers(pg_url, env, concurrency=1, workdir=tmp_path) as workers,
    ):
        handle = app.dispatch("celery-steps", {**STEPS, "hold": {"b": 20}}, account="acct")
        row = wait_for(
            lambda: next(
                (r for r in workers.steps() if r[0] == str(handle.run_id) and r[1] == "b"), None
            ),
            15,
            what="step b to start",
        )
        os.kill(row[3], signal.SIGKILL)  # only the pool child running the step
        (view,) = _finished(app, [handle.run_id], workers, 15)
        assert workers[0].alive()

        ledger = _ledger(app, view.id)

    assert view.status == "COMPLETED" and view.attempts == 2, workers.logs()
    log = [(step, attempt) for run, step, attempt, *_ in workers.steps() if run == str(view.id)]
    assert log == [("a", 1), ("b", 1), ("b", 2), ("c", 2)]
    assert ledger == ["DEBIT"]


def test_rate_limit_is_shared_by_two_workers(
    app: Toolkit, pg_url: str, redis_env: CeleryTestEnv, tmp_path: Path
) -> None:
    limit, period = SHARED_LIMIT.limit, SHARED_LIMIT.period
    rate = limit / period  # 10 starts/s; the two workers could start ~100/s without it
    n = 25
    with celery_workers(pg_url, redis_env, count=2, workdir=tmp_path) as workers:
        handles = app.dispatch_many("celery-limited", [None] * n)
        views = _finished(app, [h.run_id for h in handles], workers, 20)

    assert {v.status for v in views} == {"COMPLETED"}, workers.logs()
    assert {v.result for v in views} == {"w1", "w2"}  # both workers took part
    starts = sorted(at for _, step, _, _, at in workers.steps() if step == "call")
    assert len(starts) == n
    # Token bucket: admissions in any window of w seconds are at most limit + rate * w. A start
    # is logged after its claim, some ms after its admission (the first run of a process
    # waits longest), so allow `slack` starts of skew. Per-worker limits would allow twice
    # the burst and twice the rate: all 25 within 0.75 s.
    slack = 3
    offsets = [round(t - starts[0], 3) for t in starts]
    for i, first in enumerate(starts):
        for w in (0.5, 1.0, 1.5):
            in_window = sum(1 for t in starts[i:] if t - first <= w)
            assert in_window <= limit + rate * w + slack, f"{in_window} in {w}s: {offsets}"
    assert offsets[-1] >= (n - limit) / rate - 0.4, offsets  # 2 s of admissions, not 0.75
    assert offsets[-1] <= (n - limit) / rate + 2.0, offsets  # and not throttled beyond it


def test_rabbitmq_smoke(pg_url: str, rabbit_env: CeleryTestEnv, tmp_path: Path) -> None:
    with _app(pg_url, rabbit_env) as tk:
        with celery_workers(pg_url, rabbit_env, workdir=tmp_path) as workers:
            handles = [tk.dispatch("celery-steps", STEPS, account="acct") for _ in range(3)]
            handles.append(tk.dispatch("celery-slow", {"sleep": 30}, account="acct"))
            views = _finished(tk, [h.run_id for h in handles], workers, 20)
        assert [v.status for v in views] == ["COMPLETED"] * 3 + ["FAILED"], workers.logs()
        assert "JobTimeout" in (views[-1].error or "")
        assert tk.credits.balance("acct") == 1000 - 3 * 5
