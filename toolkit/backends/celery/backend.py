"""Celery backend: one task per job (task id = run id), at-least-once, crash-safe.

The settings below are the durability contract (docs/celery.md explains each):

* ``task_acks_late``: the message is acknowledged after the attempt, not before, so a worker
  that dies mid-run leaves it unacknowledged and the broker delivers it again;
* ``task_reject_on_worker_lost``: a prefork child killed mid-run (OOM, SIGKILL) requeues the
  message at once instead of acknowledging it as failed;
* ``worker_prefetch_multiplier = 1``: a worker reserves one message per free process, so a
  crash strands at most that many and a busy worker does not sit on others' work;
* soft time limit = the job's timeout (the run fails as ``JobTimeout``, with refund), hard
  limit = timeout + grace (the child is killed; the worker's parent fails the run);
* a Redis visibility timeout longer than the longest hard limit plus the longest countdown,
  refused otherwise (:meth:`CeleryBackend.check_config`): shorter, and Redis hands a message
  that is still running (or waiting for its countdown) to a second worker.

The lifecycle stays in :mod:`toolkit.runtime`; :mod:`~toolkit.backends.celery.delivery` turns one
delivered message into runtime calls (claim or take over, attempt, re-publish).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
import warnings
from typing import Any
from urllib.parse import urlsplit

from celery import Celery, Task
from celery.exceptions import TimeLimitExceeded
from celery.signals import worker_process_init

from toolkit.backends.base import BaseBackend
from toolkit.backends.celery.config import (
    RATE_LIMIT_URL_ENV,
    TASK_PREFIX,
    CelerySettings,
    mask_url,
)
from toolkit.backends.celery.delivery import Delivery
from toolkit.backends.celery.ratelimit import RedisTokenBucket, longest_wait
from toolkit.errors import BackendUnavailable, BrokerConfigError, JobTimeout, RunFailed
from toolkit.jobs import JobRegistry, JobSpec, SubmittedRun
from toolkit.runtime.lifecycle import Outcome, Runtime
from toolkit.store.models import RunStatus

log = logging.getLogger("toolkit.backends.celery")


class CeleryBackend(BaseBackend):
    name = "celery"

    def __init__(self, runtime: Runtime, jobs: JobRegistry, **options: Any) -> None:
        """``jobs``: the registry whose jobs get a task each (jobs declared later too)."""
        super().__init__(runtime)
        self.jobs = jobs
        try:
            self.settings = CelerySettings(**options)
        except TypeError as exc:
            raise BrokerConfigError(f"celery backend: {exc}") from exc
        self.settings.validate()
        self.broker = mask_url(self.settings.broker_url)
        self.app = self._make_app()
        self._tasks: dict[str, Any] = {}
        self._checked: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._limiter: RedisTokenBucket | None = None
        self.delivery = Delivery(runtime, self.settings, self)
        for job in self.jobs:
            self.task_for(job)

    # --- configuration -------------------------------------------------------------------

    def _make_app(self) -> Celery:
        app = Celery(f"toolkit-{uuid.uuid4().hex[:8]}", set_as_current=False)
        app.conf.update(self.settings.celery_conf())
        return app

    @property
    def publish_policy(self) -> dict[str, float]:
        """Celery's publish retry policy: few, short retries, so an unreachable broker fails
        dispatch fast and the run falls back."""
        return self.settings.publish_policy

    def hard_limit(self, job: JobSpec) -> float:
        """Celery's hard time limit in seconds: the job's timeout plus the grace, after which the
        worker process is killed."""
        return job.timeout + self.settings.time_limit_grace

    def longest_countdown(self, jobs: list[JobSpec]) -> float:
        """The longest a message can wait before it runs: backoff, rate limit, or take-over."""
        waits = [
            self.runtime.max_delay,
            self.settings.retry_delay,
            self.settings.stale_after + self.settings.heartbeat_interval,
        ]
        waits += [longest_wait(j.rate_limit) for j in jobs if j.rate_limit is not None]
        return max(waits)

    def required_visibility_timeout(self, job: JobSpec) -> float:
        """The smallest broker visibility timeout (seconds) under which Redis never redelivers a
        message still held: hard limit plus the longest countdown."""
        return self.hard_limit(job) + self.longest_countdown([job])

    def check_job(self, job: JobSpec) -> None:
        """Refuse a job this broker would deliver twice, or a rate limit it cannot enforce."""
        checked = (job.name, len(self.jobs))  # a job declared later may share a limit
        if checked in self._checked:
            return
        limit = job.rate_limit
        if limit is not None:
            if limit.limit < 1 or not limit.period > 0:
                raise BrokerConfigError(
                    f"job {job.name!r}: rate limit {limit.key!r} needs limit >= 1 and period > 0"
                )
            for other in self.jobs:
                if (
                    other.rate_limit
                    and other.rate_limit.key == limit.key
                    and (
                        (other.rate_limit.limit, other.rate_limit.period)
                        != (limit.limit, limit.period)
                    )
                ):
                    raise BrokerConfigError(
                        f"jobs {job.name!r} and {other.name!r} share rate limit {limit.key!r} "
                        "with different limits: one key, one limit"
                    )
            self.limiter()  # raises when there is no Redis to keep the bucket in
        if self.settings.is_redis or not self.settings.is_amqp:
            needed = self.required_visibility_timeout(job)
            if self.settings.visibility_timeout < needed:
                raise BrokerConfigError(
                    f"the broker's visibility timeout ({self.settings.visibility_timeout:g}s) is "
                    f"shorter than job {job.name!r} can hold a message: hard time limit "
                    f"{self.hard_limit(job):g}s (timeout {job.timeout:g}s + grace "
                    f"{self.settings.time_limit_grace:g}s) + longest countdown "
                    f"{needed - self.hard_limit(job):g}s (retry backoff, rate limit or "
                    f"take-over wait) = {needed:g}s. Redis would deliver the message to a second "
                    f"worker while the first still holds it. Set visibility_timeout >= {needed:g} "
                    "or shorten the job's timeout"
                )
        self._checked.add(checked)

    def check_config(self) -> list[JobSpec]:
        """Check every job this worker serves; returns them. Run before taking any work."""
        jobs = [j for j in self.jobs if j.target == self.name] or list(self.jobs)
        for job in jobs:
            self.check_job(job)
            if job.concurrency is not None:
                log.warning(
                    "job %r declares concurrency=%d: the celery backend does not enforce it; "
                    "size --concurrency and queues instead",
                    job.name,
                    job.concurrency,
                )
        return jobs

    def limiter(self) -> RedisTokenBucket:
        """The shared Redis token bucket, made on first use; BrokerConfigError when there is no
        Redis to keep it in."""
        if self._limiter is None:
            url = self.settings.rate_limit_url or os.environ.get(RATE_LIMIT_URL_ENV)
            if url is None and self.settings.is_redis:
                url = self.settings.broker_url
            if url is None:
                raise BrokerConfigError(
                    f"jobs with a rate limit need Redis for the shared bucket: the broker "
                    f"{self.broker} is not Redis, so set {RATE_LIMIT_URL_ENV} or "
                    "use_backend('celery', rate_limit_url=...)"
                )
            self._limiter = RedisTokenBucket(
                url,
                prefix=self.settings.key_prefix,
                connect_timeout=self.settings.connect_timeout,
                socket_timeout=self.settings.socket_timeout,
            )
        return self._limiter

    # --- tasks ---------------------------------------------------------------------------

    def queue_for(self, job: JobSpec) -> str:
        """The job's ``queue`` option, else the backend's default queue."""
        return str(job.options.get("queue") or self.settings.queue)

    def queues(self) -> list[str]:
        """Every queue the jobs publish to, default included: what a worker must consume."""
        return sorted({self.queue_for(j) for j in self.jobs} | {self.settings.queue})

    def task_for(self, job: JobSpec) -> Any:
        """The job's Celery task, registered on first use (jobs may be declared later)."""
        task = self._tasks.get(job.name)
        if task is not None:
            return task
        with self._lock:
            if job.name not in self._tasks:
                self._tasks[job.name] = self._make_task(job)
            return self._tasks[job.name]

    def _make_task(self, job: JobSpec) -> Any:
        delivery = self.delivery

        def run(task: Any, run_id: str, reserved: bool = False) -> str:
            outcome = delivery.handle(task, job, run_id, reserved=reserved)
            if outcome == Outcome.FAILED.value:
                # Returned, it would be logged as "succeeded ...: 'failed'". Raised and listed
                # in `throws`, the worker logs "raised expected: RunFailed(...)" at INFO, with
                # no traceback; `acks_on_failure` acknowledges it and nothing retries it.
                raise RunFailed(
                    f"run {run_id} of job {job.name!r} failed: toolkit runs show {run_id}"
                )
            return outcome

        run.__name__ = run.__qualname__ = "run_" + re.sub(r"\W", "_", job.name)
        return self.app.task(
            run,
            name=TASK_PREFIX + job.name,
            base=_RunTask,
            bind=True,
            shared=False,
            acks_late=True,
            reject_on_worker_lost=True,
            acks_on_failure=True,
            acks_on_timeout=True,
            soft_time_limit=job.timeout,
            time_limit=self.hard_limit(job),
            max_retries=None,
            throws=(RunFailed,),
            ignore_result=True,
            toolkit_backend=self,
            toolkit_job=job.name,
        )

    # --- submission ----------------------------------------------------------------------

    def _send(self, run: SubmittedRun) -> None:
        self.check_job(run.job)
        try:
            self.publish(run.job, run.run_id)
        except Exception as exc:
            raise BackendUnavailable(
                f"celery broker {self.broker} refused run {run.run_id}: "
                f"{type(exc).__name__}: {self._scrub(str(exc))}"
            ) from exc

    def publish(
        self, job: JobSpec, run_id: uuid.UUID, *, countdown: float = 0.0, reserved: bool = False
    ) -> None:
        """One message for the run; the task id is the run id, so logs and tools line up."""
        self.task_for(job).apply_async(
            args=(str(run_id),),
            kwargs={"reserved": True} if reserved else None,
            task_id=str(run_id),
            queue=self.queue_for(job),
            countdown=countdown if countdown > 0 else None,
            retry=True,
            retry_policy=self.publish_policy,
        )

    def _scrub(self, text: str) -> str:
        password = urlsplit(self.settings.broker_url).password
        return text.replace(password, "***") if password else text

    # --- worker ----------------------------------------------------------------------------

    def run_worker(
        self,
        *,
        concurrency: int | None = None,
        queues: list[str] | None = None,
        pool: str = "prefork",
        loglevel: str = "INFO",
        hostname: str | None = None,
    ) -> int:
        """Start a Celery worker in this process for every job; returns its exit code."""
        jobs = self.check_config()
        for job in self.jobs:
            self.task_for(job)
        worker_process_init.connect(self._after_fork, weak=False)
        warnings.filterwarnings(  # we chose False on purpose (see _make_app)
            "ignore", message=r"(?s).*worker_cancel_long_running_tasks_on_connection_loss"
        )
        log.info(
            "worker for %d job(s) on %s, queues %s", len(jobs), self.broker, queues or self.queues()
        )
        from celery.utils.nodenames import default_nodename, host_format

        worker = self.app.Worker(
            hostname=host_format(default_nodename(hostname)),
            pool_cls=pool,
            concurrency=concurrency,
            queues=queues or self.queues(),
            loglevel=loglevel,
            without_mingle=True,
            without_gossip=True,
        )
        worker.start()
        return int(worker.exitcode or 0)

    def _after_fork(self, **_: Any) -> None:
        # A forked pool child must not share the parent's database sockets.
        self.runtime.after_fork()

    def fail_after_hard_limit(self, job_name: str, run_id: str, limit: float) -> None:
        """Called in the worker's parent when it killed a child at the hard time limit."""
        job = self.jobs.get(job_name)
        error = (
            f"{JobTimeout.__name__}: run exceeded the hard time limit of {limit:g}s of job "
            f"{job.name!r} (timeout {job.timeout:g}s + grace); the worker process was killed"
        )
        try:
            self.runtime.fail(uuid.UUID(run_id), error, expected=(RunStatus.RUNNING,))
        except Exception:
            log.exception("could not record the hard time limit of run %s", run_id)

    def close(self, *, wait: bool = True) -> None:
        """Close the rate-limit client and the producer pool; nothing to wait for: runs execute
        in the workers."""
        if self._limiter is not None:
            self._limiter.close()
        self.app.close()  # releases the producer connection pool


class _RunTask(Task):  # type: ignore[misc]
    """Base of the per-job tasks: turns a hard time limit into a failed, refunded run."""

    toolkit_backend: CeleryBackend
    toolkit_job: str

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if isinstance(exc, TimeLimitExceeded):
            limit = float(exc.args[0]) if exc.args else float(self.time_limit or 0)
            self.toolkit_backend.fail_after_hard_limit(self.toolkit_job, task_id, limit)
