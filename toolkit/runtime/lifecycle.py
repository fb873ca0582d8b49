"""Executes runs: attempts, retries with backoff, timeouts, and the step memo.

The transitions themselves are the store's (:class:`toolkit.store.lifecycle.RunStore`): each
a conditional UPDATE on the expected status (and, while running, on the attempt number), so
two workers cannot both move a run and terminal states never change, each announced as a
lifecycle event after its commit. Backends call these pieces; none re-implements the lifecycle.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from toolkit.config import RetryPolicy
from toolkit.errors import JobTimeout, NonRetriableError, RunLost
from toolkit.jobs import JobRegistry, JobSpec
from toolkit.runtime.claims import AttemptResult, Claim, Outcome, RunState
from toolkit.runtime.serialization import describe, to_json
from toolkit.runtime.steps import DatabaseJobContext, StepMemo
from toolkit.store.engine import Database
from toolkit.store.lifecycle import RunStore
from toolkit.store.models import RunStatus
from toolkit.store.steps import StepStore

__all__ = ["AttemptResult", "Claim", "Outcome", "RunState", "Runtime"]

log = logging.getLogger("toolkit.runtime")


class Runtime:
    """Runs attempts of the jobs in ``jobs``, moving runs through ``store``."""

    def __init__(
        self,
        store: RunStore,
        jobs: JobRegistry,
        *,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.db: Database = store.db  # for an engine's own reads (Inngest's run lookup)
        self.jobs = jobs
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.rng = rng
        self.steps = StepMemo(StepStore(store.db, store.transitions))

    def retry_policy(self, job: JobSpec) -> RetryPolicy:
        """The job's backoff: its retries, with this runtime's base and maximum delay."""
        return RetryPolicy(job.retries, self.base_delay, self.max_delay)

    # --- whole runs, for in-process executors ---------------------------------------------

    def execute(
        self, run_id: uuid.UUID, *, sleep: Callable[[float], None] = time.sleep
    ) -> AttemptResult:
        """Run attempts until the run is terminal or no longer ours; sleeps out the backoff.

        Returns the last attempt's result (outcome and, for FAILED, the recorded error), so a
        caller in the same thread knows where the run ended without reading it back.
        """
        while True:
            result = self.run_attempt(run_id)
            if result.outcome is not Outcome.RETRY:
                return result
            sleep(result.delay)

    def run_attempt(self, run_id: uuid.UUID, *, take_over: bool = False) -> AttemptResult:
        """Claim the run, execute its job function once, record what happened."""
        claim = self.claim(run_id, take_over=take_over)
        if claim is None:
            return AttemptResult(Outcome.SKIPPED)
        return self.attempt(claim)

    # --- transitions (the store's), as the executors see them ------------------------------

    def claim(
        self,
        run_id: uuid.UUID,
        *,
        take_over: bool = False,
        stale_before: datetime | None = None,
    ) -> Claim | None:
        """QUEUED → RUNNING, counting the attempt. None if another worker or a final state won.

        ``take_over`` also claims a RUNNING run: for a transport that knows its previous holder
        died (a broker redelivering an unacknowledged message). The attempt number moves on, so
        the old holder, if it is still alive after all, is fenced out at its next step.
        ``stale_before`` narrows the take-over to a holder whose heartbeat is older than that
        instant: a holder that still beats is alive and keeps the run. The check is part of the
        conditional UPDATE, so of two deliveries racing to take over, one wins.
        """
        row = self.store.claim(run_id, take_over=take_over, stale_before=stale_before)
        if row is None:
            return None
        return Claim(run_id, row.attempts, self.jobs.get(row.job), row.payload)

    def start(
        self, run_id: uuid.UUID, *, backend: str, external_id: str | None = None
    ) -> Claim | None:
        """QUEUED → RUNNING for an engine that memoizes steps itself and delivers at least once.

        Idempotent: a run already RUNNING on ``backend`` is returned unchanged, so an engine that
        repeats the start (it lost the answer) continues the same execution. None when the run
        is not ``backend``'s (a fallback moved it to legacy), is finished, or was cancelled.
        ``external_id`` records the engine's own run id for operators.
        """
        row = self.store.start(run_id, backend=backend, external_id=external_id)
        if row is None:
            return None
        return Claim(run_id, row.attempts, self.jobs.get(row.job), row.payload)

    def beat(self, run_id: uuid.UUID, attempt: int) -> bool:
        """Heartbeat from an engine that keeps its own step memo; True while the run is RUNNING.

        ``attempt`` is the engine's 1-based attempt of the current step: ``attempts`` rises to
        it and never falls. False means the run was cancelled or failed meanwhile, so the
        caller stops before running the step.
        """
        return self.store.beat(run_id, attempt)

    def heartbeat(self, claim: Claim) -> bool:
        """Mark the attempt alive between steps; False once it no longer owns the run."""
        return self.store.heartbeat(claim.run_id, claim.attempt)

    def complete(self, run_id: uuid.UUID, attempt: int | None, result: Any) -> bool:
        """RUNNING → COMPLETED, by the holder of ``attempt`` when given."""
        return self.store.complete(run_id, attempt, result)

    def requeue(self, run_id: uuid.UUID, attempt: int, error: str, delay: float) -> bool:
        """RUNNING → QUEUED for a retry that waits ``delay`` seconds."""
        return self.store.requeue(run_id, attempt, error, delay)

    def fail(
        self,
        run_id: uuid.UUID,
        error: str,
        *,
        expected: Iterable[RunStatus] = (RunStatus.RUNNING,),
        attempt: int | None = None,
        backend: str | None = None,
    ) -> bool:
        """Final failure: FAILED, dead letter and refund commit together or not at all.

        ``backend`` restricts it to a run recorded on that backend, in the same conditional
        UPDATE: an engine's failure handler must not fail a run a fallback moved elsewhere.
        """
        return self.store.fail(run_id, error, expected=expected, attempt=attempt, backend=backend)

    def cancel(self, run_id: uuid.UUID, reason: str) -> bool:
        """QUEUED or RUNNING → CANCELLED with refund; a running attempt stops at its next step."""
        return self.store.cancel(run_id, reason)

    # --- one attempt ----------------------------------------------------------------------

    def attempt(
        self, claim: Claim, *, time_limit: tuple[type[BaseException], ...] = ()
    ) -> AttemptResult:
        """Execute the job function once and record what happened.

        ``time_limit``: exception types a transport raises inside the job function when the
        job's timeout passed (Celery's soft time limit); they fail the run at once, as
        :meth:`time_out` does, instead of counting as a retriable error.
        """
        job = claim.job
        ctx = DatabaseJobContext(self.steps, claim, deadline=time.monotonic() + job.timeout)
        try:
            value = job.fn(ctx, claim.payload)
            result = to_json(value, what=f"the result of job {job.name!r}")
        except RunLost:
            return AttemptResult(Outcome.SKIPPED, claim.attempt)
        except time_limit:
            return self.time_out(claim)
        except NonRetriableError as exc:
            return self._final(claim, describe(exc))
        except Exception as exc:  # noqa: BLE001 - job code may raise anything; we record it
            error = describe(exc)
            if claim.attempt >= job.max_attempts:
                return self._final(claim, f"{error} (after {claim.attempt} attempts)")
            delay = self.retry_policy(job).delay(claim.attempt, self.rng())
            if not self.requeue(claim.run_id, claim.attempt, error, delay):
                return AttemptResult(Outcome.SKIPPED, claim.attempt)
            return AttemptResult(Outcome.RETRY, claim.attempt, delay, error)
        if self.complete(claim.run_id, claim.attempt, result):
            return AttemptResult(Outcome.COMPLETED, claim.attempt)
        return AttemptResult(Outcome.SKIPPED, claim.attempt)

    def _final(self, claim: Claim, error: str) -> AttemptResult:
        if self.fail(claim.run_id, error, attempt=claim.attempt):
            return AttemptResult(Outcome.FAILED, claim.attempt, error=error)
        return AttemptResult(Outcome.SKIPPED, claim.attempt)

    # --- for transports ---

    def state(self, run_id: uuid.UUID) -> RunState | None:
        """Status, attempt and heartbeat of a run, or None if there is no such run.

        For a transport that could not claim a run and must tell a finished run (drop the
        message) from one whose holder is alive (look again once its heartbeat would be stale).
        """
        row = self.store.state(run_id)
        if row is None:
            return None
        return RunState(RunStatus(row.status), row.attempts, row.heartbeat_at)

    def time_out(self, claim: Claim, how: str = "soft time limit") -> AttemptResult:
        """The transport's own time limit stopped the attempt: a final ``JobTimeout`` failure
        (dead letter, refund), as when the deadline passes between steps. SKIPPED if the
        attempt no longer held the run."""
        job = claim.job
        error = describe(
            JobTimeout(f"run exceeded the {job.timeout:g}s timeout of job {job.name!r} ({how})")
        )
        return self._final(claim, error)

    def after_fork(self) -> None:
        """In a freshly forked worker process: drop the database connections inherited from
        the parent (without closing the parent's) and open one of its own now, so the
        process's first run does not pay for it. A failure is logged; the first run reports it.
        """
        engine = self.db.engine
        engine.dispose(close=False)
        try:
            with engine.connect():
                pass
        except Exception as exc:  # noqa: BLE001 - the first run will report it properly
            log.warning("pool process could not reach the database yet: %s", exc)
