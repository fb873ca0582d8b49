"""The contract's jobs, declared once for every backend (and loaded by the Celery workers).

Every step function appends a line to the step log (``TOOLKIT_TEST_STEP_LOG``: a file, so calls
made in a worker process count too) before it does anything else. The payload says what a step
does, counted in *calls of that step for that run*, which every backend sees the same way:

- ``steps``: the step names, run in order; the result lists them;
- ``fail``: ``{step: n}``, the first ``n`` calls of the step raise (a retriable error);
- ``die``: a step whose first call kills its worker: the Celery pool child SIGKILLs itself
  (``TOOLKIT_TEST_DIE=kill``), in-process executors get :class:`WorkerDied`, a BaseException
  that no lifecycle code catches, so the run stays RUNNING as a crashed worker leaves it;
- ``hold``: ``{step: seconds}``, the first call sleeps that long;
- ``fatal``: the job raises NonRetriableError before any step.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.support.celery_app import (
    CELERY_OPTIONS_ENV,
    STEP_LOG_ENV,
    TEST_BACKEND_OPTIONS,
    log_step,
)
from toolkit import JobContext, NonRetriableError, Toolkit

JOB = "contract-steps"  # fallback "legacy"
STRICT = "contract-strict"  # the same job, fallback "fail"
SLOW = "contract-slow"  # a 1 s timeout
JOBS = (JOB, STRICT, SLOW)
COST = 5
RETRIES = 2
STEPS_TIMEOUT = 8.0
SLOW_TIMEOUT = 1.0
DIE_ENV = "TOOLKIT_TEST_DIE"

# Celery limits for the contract's workers: the visibility timeout must exceed the longest hard
# limit (STEPS_TIMEOUT + grace) plus the longest countdown (the backend checks at start).
CELERY_OPTIONS: dict[str, Any] = {**TEST_BACKEND_OPTIONS, "visibility_timeout": 12.0}


class WorkerDied(BaseException):
    """The in-process stand-in for a worker crash: not an Exception, so nothing records it."""


def register_contract_jobs(tk: Toolkit, *, target: str) -> None:
    """The contract's jobs on ``tk``, all targeting ``target`` (the flag's "on" backend)."""

    def session(ctx: JobContext, payload: dict[str, Any]) -> list[Any]:
        if payload.get("fatal"):
            raise NonRetriableError("fatal payload")
        return [ctx.step(name, _step, ctx, name, payload) for name in payload["steps"]]

    tk.job(JOB, target=target, cost=COST, retries=RETRIES, timeout=STEPS_TIMEOUT)(session)
    tk.job(
        STRICT, target=target, cost=COST, retries=RETRIES, timeout=STEPS_TIMEOUT, fallback="fail"
    )(session)
    tk.job(SLOW, target=target, cost=COST, retries=RETRIES, timeout=SLOW_TIMEOUT)(session)


def _step(ctx: JobContext, name: str, payload: dict[str, Any]) -> dict[str, Any]:
    before = step_calls(ctx.run_id, name)
    log_step(ctx, name)
    if payload.get("die") == name and before == 0:
        if os.environ.get(DIE_ENV) == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise WorkerDied(f"worker died in step {name}")
    if before < int(payload.get("fail", {}).get(name, 0)):
        raise RuntimeError(f"{name} flaked (call {before + 1})")
    hold = float(payload.get("hold", {}).get(name, 0))
    if hold and before == 0:
        time.sleep(hold)
    return {"step": name}


def read_step_log(path: Path, run_id: object) -> list[str]:
    """The step names called for ``run_id``, in order, from the log at ``path``."""
    if not path.exists():
        return []
    rid = str(run_id)
    return [line.split()[1] for line in path.read_text().splitlines() if line.startswith(rid)]


def step_calls(run_id: object, name: str) -> int:
    path = os.environ.get(STEP_LOG_ENV)
    return read_step_log(Path(path), run_id).count(name) if path else 0


def build_celery() -> Toolkit:
    """The ``--app`` factory of the contract's Celery worker subprocesses."""
    tk = Toolkit(
        os.environ["TOOLKIT_DATABASE_URL"],
        legacy_mode="blocking",
        retry_base_delay=0.05,
        retry_max_delay=0.2,
    )
    register_contract_jobs(tk, target="celery")
    tk.use_backend("celery", **{**CELERY_OPTIONS, **json.loads(os.environ[CELERY_OPTIONS_ENV])})
    return tk
