"""The app Celery worker subprocesses load: ``--app tests.support.celery_app:build``.

The test process builds the same app with :func:`make_app` (same jobs, same task names) to
dispatch. Configuration travels in environment variables, so a subprocess sees what the test
chose: ``TOOLKIT_DATABASE_URL``, ``TOOLKIT_BROKER_URL``, ``TOOLKIT_TEST_CELERY`` (JSON:
backend options, retry delays, ``steps_timeout``), ``TOOLKIT_TEST_STEP_LOG`` (a file every
step function appends a line to, the cross-process proof of what ran), ``TOOLKIT_TEST_WORKER``
(a name the jobs report back).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from toolkit import JobContext, NonRetriableError, RateLimit, Toolkit

CELERY_OPTIONS_ENV = "TOOLKIT_TEST_CELERY"
STEP_LOG_ENV = "TOOLKIT_TEST_STEP_LOG"
WORKER_ENV = "TOOLKIT_TEST_WORKER"

# Short limits so fault tests finish in seconds. Whatever changes here must keep the broker's
# visibility timeout above the longest hard limit plus the longest countdown (the backend
# refuses to start otherwise).
STEPS_TIMEOUT = 3.0
SLOW_TIMEOUT = 1.0
SHARED_LIMIT = RateLimit("test-shared-llm", limit=5, period=0.5)
TEST_BACKEND_OPTIONS: dict[str, Any] = {
    "visibility_timeout": 6.0,
    "time_limit_grace": 1.0,
    "heartbeat_interval": 0.5,
    "stale_after": 1.5,
    "retry_delay": 1.0,
    "transport_options": {"unacked_restore_interval": 1, "unacked_restore_throttle": 1},
    # a killed pool child's job is declared lost after this (default 10 s > our hard limits)
    "celery_config": {"worker_lost_wait": 0.5},
}


def log_step(ctx: JobContext, name: str) -> None:
    path = os.environ.get(STEP_LOG_ENV)
    if not path:
        return
    line = f"{ctx.run_id} {name} {ctx.attempt} {os.getpid()} {time.time():.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one O_APPEND write: lines from processes never interleave
    finally:
        os.close(fd)


def make_app(
    database_url: str | None = None,
    broker_url: str | None = None,
    options: dict[str, Any] | None = None,
) -> Toolkit:
    config = dict(options if options is not None else _env_options())
    retry_base = float(config.pop("retry_base_delay", 0.2))
    retry_max = float(config.pop("retry_max_delay", 1.0))
    steps_timeout = float(config.pop("steps_timeout", STEPS_TIMEOUT))
    tk = Toolkit(
        database_url or os.environ["TOOLKIT_DATABASE_URL"],
        legacy_mode="blocking",
        retry_base_delay=retry_base,
        retry_max_delay=retry_max,
    )
    register_jobs(tk, steps_timeout=steps_timeout)
    backend_options = {**TEST_BACKEND_OPTIONS, **config}
    if broker_url:
        backend_options["broker_url"] = broker_url
    tk.use_backend("celery", **backend_options)
    return tk


def build() -> Toolkit:
    """The ``--app`` factory of the worker subprocesses."""
    return make_app()


def _env_options() -> dict[str, Any]:
    raw = os.environ.get(CELERY_OPTIONS_ENV)
    return dict(json.loads(raw)) if raw else {}


def register_jobs(tk: Toolkit, *, steps_timeout: float = STEPS_TIMEOUT) -> None:
    @tk.job("celery-steps", target="celery", cost=5, retries=3, timeout=steps_timeout)
    def steps(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        """Payload: steps (names), fail_until {step: last failing attempt}, hold {step: s}
        (sleep inside the step on attempt 1 only), fatal (non-retriable failure)."""
        if payload.get("fatal"):
            raise NonRetriableError("fatal payload")
        outputs = [ctx.step(name, _step, ctx, name, payload) for name in payload["steps"]]
        return {"worker": os.environ.get(WORKER_ENV), "outputs": outputs}

    @tk.job("celery-slow", target="celery", cost=3, retries=2, timeout=SLOW_TIMEOUT)
    def slow(ctx: JobContext, payload: dict[str, Any]) -> None:
        ctx.step("sleep", _sleep_step, ctx, float(payload["sleep"]))

    @tk.job("celery-stubborn", target="celery", cost=3, retries=2, timeout=SLOW_TIMEOUT)
    def stubborn(ctx: JobContext, payload: dict[str, Any]) -> None:
        """Swallows the soft time limit, as careless job code does: only the hard limit stops it."""
        log_step(ctx, "stubborn")
        deadline = time.monotonic() + float(payload["sleep"])
        while time.monotonic() < deadline:
            try:
                time.sleep(0.05)
            except Exception:  # noqa: BLE001 - deliberately careless
                continue

    @tk.job(
        "celery-limited",
        target="celery",
        retries=1,
        timeout=STEPS_TIMEOUT,
        rate_limit=SHARED_LIMIT,  # shared by every worker through Redis
    )
    def limited(ctx: JobContext, payload: Any) -> str | None:
        ctx.step("call", log_step, ctx, "call")
        return os.environ.get(WORKER_ENV)


def _step(ctx: JobContext, name: str, payload: dict[str, Any]) -> dict[str, Any]:
    log_step(ctx, name)
    if ctx.attempt <= int(payload.get("fail_until", {}).get(name, 0)):
        raise RuntimeError(f"{name} flaked on attempt {ctx.attempt}")
    hold = float(payload.get("hold", {}).get(name, 0))
    if hold and ctx.attempt == 1:
        time.sleep(hold)
    return {"step": name, "attempt": ctx.attempt}


def _sleep_step(ctx: JobContext, seconds: float) -> None:
    log_step(ctx, "sleep")
    time.sleep(seconds)
