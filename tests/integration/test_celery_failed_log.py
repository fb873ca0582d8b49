"""A real Celery worker logs a failed run as failed, never as ``succeeded …: 'failed'``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import service_missing
from tests.support.celery_app import make_app
from tests.support.celery_harness import (
    REDIS_URL,
    CeleryTestEnv,
    celery_workers,
    unreachable,
    wait_for,
)
from toolkit import Toolkit

pytestmark = pytest.mark.postgres


@pytest.fixture
def env() -> Iterator[CeleryTestEnv]:
    reason = unreachable(REDIS_URL)
    if reason:
        service_missing(reason)
    env = CeleryTestEnv.isolated(REDIS_URL)
    yield env
    env.cleanup()


@pytest.fixture
def app(pg_url: str, env: CeleryTestEnv) -> Iterator[Toolkit]:
    tk = make_app(pg_url, env.broker_url, env.options)
    try:
        tk.set_rollout("celery-steps", 100, reason="celery tests")
        tk.credits.grant("acct", 1000)
        yield tk
    finally:
        tk.close()


def test_the_worker_log_says_a_failed_run_failed(
    app: Toolkit, pg_url: str, env: CeleryTestEnv, tmp_path: Path
) -> None:
    with celery_workers(pg_url, env, workdir=tmp_path) as workers:
        doomed = app.dispatch(
            "celery-steps", {"steps": ["a"], "fail_until": {"a": 99}}, account="acct"
        )
        ok = app.dispatch("celery-steps", {"steps": ["a"]}, account="acct")
        wait_for(
            lambda: all(app.runs.get(r).terminal for r in (doomed.run_id, ok.run_id)) or None,
            30,
            interval=0.1,
            what="runs to finish",
        )
        logs = workers.logs(tail=100_000)
    assert app.runs.get(doomed.run_id).status == "FAILED", logs
    task = re.escape(f"[{doomed.run_id}]")
    # Every line about the failed run's last delivery: not "succeeded", and says it failed.
    assert not re.search(rf"{task} succeeded in [\d.]+s: 'failed'", logs), logs
    assert re.search(rf"{task} raised expected: RunFailed\(.*failed", logs), logs
    # A completed run still logs as succeeded.
    assert re.search(rf"\[{ok.run_id}\] succeeded in [\d.]+s: 'completed'", logs), logs
