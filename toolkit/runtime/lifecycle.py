"""Executes runs: the state machine, the step memo, retries, and failure with refund.

Every transition is a conditional UPDATE on the expected status (and, while running, on the
attempt number), so two workers cannot both move a run and terminal states never change.
Backends call these pieces; none of them re-implements the lifecycle.
"""

from __future__ import annotations

import enum
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.orm import Session

from toolkit.config import RetryPolicy
from toolkit.errors import (
    JobTimeout,
    NonRetriableError,
    RunLost,
)
from toolkit.jobs import JobRegistry, JobSpec
from toolkit.runtime.serialization import describe, to_json
from toolkit.runtime.steps import DatabaseJobContext, StepMemo
from toolkit.store.credits import Credits
from toolkit.store.engine import Database
from toolkit.store.models import (
    TERMINAL,
    DeadLetter,
    Run,
    RunStatus,
    utcnow,
)
from toolkit.store.transitions import Transitions, dead_letters, failing

log = logging.getLogger("toolkit.runtime")


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    RETRY = "retry"
    SKIPPED = "skipped"  # not ours to run: already claimed, finished, or cancelled


@dataclass(frozen=True)
class AttemptResult:
    outcome: Outcome
    attempt: int = 0
    delay: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class RunState:
    """Where a run is, for a transport deciding what to do with a message it could not claim."""

    status: RunStatus
    attempts: int
    heartbeat_at: datetime | None


@dataclass(frozen=True)
class Claim:
    run_id: uuid.UUID
    attempt: int
    job: JobSpec
    payload: Any


class Runtime:
    def __init__(
        self,
        db: Database,
        credits: Credits,
        jobs: JobRegistry,
        *,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.db = db
        self.credits = credits
        self.jobs = jobs
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.rng = rng
        self.steps = StepMemo(db)
        self.transitions = Transitions()

    def retry_policy(self, job: JobSpec) -> RetryPolicy:
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

    # --- transitions ------------------------------------------------------------------------

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
        statement = self.transitions.claim[(take_over, take_over and stale_before is not None)]
        params: dict[str, Any] = {"run_id": run_id, "now": utcnow()}
        if take_over and stale_before is not None:
            params["stale_before"] = stale_before
        with self.db.autocommit() as conn:
            row = conn.execute(statement, params).one_or_none()
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
        now = utcnow()
        values: dict[str, Any] = {
            "status": RunStatus.RUNNING,
            "attempts": Run.attempts + 1,
            "started_at": func.coalesce(Run.started_at, now),
            "heartbeat_at": now,
            "next_attempt_at": None,
        }
        if external_id is not None:
            values["external_id"] = external_id[:200]
        ours = (Run.id == run_id, Run.backend == backend)
        with self.db.transaction() as s:
            row = (
                s.connection()
                .execute(
                    update(Run)
                    .where(*ours, Run.status == RunStatus.QUEUED)
                    .values(**values)
                    .returning(Run.job, Run.attempts, Run.payload, Run.started_at)
                )
                .one_or_none()
            )
            if row is None:
                row = (
                    s.connection()
                    .execute(
                        select(Run.job, Run.attempts, Run.payload, Run.started_at).where(
                            *ours, Run.status == RunStatus.RUNNING
                        )
                    )
                    .one_or_none()
                )
        if row is None:
            return None
        return Claim(run_id, row.attempts, self.jobs.get(row.job), row.payload)

    def beat(self, run_id: uuid.UUID, attempt: int) -> bool:
        """Heartbeat from an engine that keeps its own step memo; True while the run is RUNNING.

        ``attempt`` is the engine's 1-based attempt of the current step: ``attempts`` rises to
        it and never falls. False means the run was cancelled or failed meanwhile, so the
        caller stops before running the step.
        """
        with self.db.autocommit() as conn:
            alive = conn.execute(
                self.transitions.beat, {"run_id": run_id, "attempt": attempt, "now": utcnow()}
            )
        return alive.rowcount == 1

    def heartbeat(self, claim: Claim) -> bool:
        """Mark the attempt alive between steps; False once it no longer owns the run."""
        with self.db.autocommit() as conn:
            alive = conn.execute(
                self.transitions.heartbeat,
                {"run_id": claim.run_id, "attempt": claim.attempt, "now": utcnow()},
            )
        return alive.rowcount == 1

    def complete(self, run_id: uuid.UUID, attempt: int | None, result: Any) -> bool:
        params = {"run_id": run_id, "result": result, "finished_at": utcnow()}
        if attempt is not None:
            params["attempt"] = attempt
        with self.db.autocommit() as conn:
            moved = conn.execute(self.transitions.complete[attempt is not None], params)
        return moved.rowcount == 1

    def requeue(self, run_id: uuid.UUID, attempt: int, error: str, delay: float) -> bool:
        """RUNNING → QUEUED for a retry that waits ``delay`` seconds."""
        params = {
            "run_id": run_id,
            "attempt": attempt,
            "error": error,
            "next_attempt_at": utcnow() + timedelta(seconds=delay),
        }
        with self.db.autocommit() as conn:
            moved = conn.execute(self.transitions.requeue, params)
        return moved.rowcount == 1

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
        with self.db.transaction() as s:
            moved = False
            for status in expected:
                if self._move(
                    s.connection(),
                    run_id,
                    status,
                    RunStatus.FAILED,
                    attempt,
                    backend=backend,
                    error=error,
                    finished_at=utcnow(),
                ):
                    moved = True
                    break
            if not moved:
                return False
            run = s.get_one(Run, run_id)
            s.execute(
                self.db.insert(DeadLetter)
                .values(
                    run_id=run_id,
                    job=run.job,
                    payload=run.payload,
                    error=error,
                    attempts=run.attempts,
                    created_at=utcnow(),
                )
                .on_conflict_do_nothing(index_elements=["run_id"])
            )
            self.credits.refund_in(s, run_id, reason=f"run failed: {error[:200]}")
        log.warning("run %s failed: %s", run_id, error)
        return True

    def cancel(self, run_id: uuid.UUID, reason: str) -> bool:
        """QUEUED or RUNNING → CANCELLED with refund; a running attempt stops at its next step."""
        with self.db.transaction() as s:
            for status in (RunStatus.QUEUED, RunStatus.RUNNING):
                if self._move(
                    s.connection(),
                    run_id,
                    status,
                    RunStatus.CANCELLED,
                    None,
                    error=f"cancelled: {reason}",
                    finished_at=utcnow(),
                ):
                    self.credits.refund_in(s, run_id, reason=f"run cancelled: {reason}")
                    return True
        return False

    # --- batches, for maintenance (inside the caller's transaction) ----------------------

    def fail_many_in(
        self,
        s: Session,
        run_ids: Sequence[uuid.UUID],
        error: str | Mapping[RunStatus, str],
        *,
        expected: Iterable[RunStatus] = (RunStatus.RUNNING,),
        reason: str | None = None,
    ) -> dict[uuid.UUID, int]:
        """The batch form of :meth:`fail`: FAILED, dead letters and refunds in ``s``.

        Only runs still in an ``expected`` state move (one conditional UPDATE); ``error`` may
        differ per expected state (``{status: error}``). Each moved run gets its dead letter,
        and all of them their refunds in one ``Credits.refund_many_in`` (refund ``reason``: by
        default "run failed: <error>"). Returns ``{run_id: credits refunded}`` for the runs
        this call failed.
        """
        errors = dict(error) if isinstance(error, Mapping) else dict.fromkeys(expected, error)
        errors = {RunStatus(st): msg for st, msg in errors.items() if st not in TERMINAL}
        if not run_ids or not errors:
            return {}
        now = utcnow()
        moved = s.scalars(
            failing(self.db.among(Run.id, run_ids), errors, now)
            .returning(Run.id)
            .execution_options(synchronize_session=False)
        ).all()
        if not moved:
            return {}
        s.execute(
            dead_letters(
                self.db.insert,
                select(
                    Run.id,
                    Run.job,
                    Run.payload,
                    Run.error,
                    Run.attempts,
                    literal(now, DeadLetter.created_at.type),
                ).where(self.db.among(Run.id, moved)),
            )
        )
        if reason is None:
            reason = f"run failed: {error[:200]}" if isinstance(error, str) else "run failed"
        refunded = self.credits.refund_many_in(s, moved, reason=reason)
        log.info("%d runs failed: %s", len(moved), reason)
        return {run_id: refunded.get(run_id, 0) for run_id in moved}

    @staticmethod
    def _move(
        conn: Connection,
        run_id: uuid.UUID,
        expected: RunStatus,
        target: RunStatus,
        attempt: int | None,
        backend: str | None = None,
        **values: Any,
    ) -> bool:
        if expected in TERMINAL:  # terminal states never change, whatever a caller asks
            return False
        query = update(Run).where(Run.id == run_id, Run.status == expected)
        if attempt is not None:
            query = query.where(Run.attempts == attempt)
        if backend is not None:
            query = query.where(Run.backend == backend)
        moved = conn.execute(query.values(status=target, **values))
        return moved.rowcount == 1

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
        except NonRetriableError as exc:
            return self._final(claim, describe(exc))
        except time_limit:
            return self.time_out(claim)
        except Exception as exc:  # noqa: BLE001 - job code may raise anything; we record it
            error = describe(exc)
            if claim.attempt >= job.max_attempts:
                return self._final(claim, f"{error} (after {claim.attempt} attempts)")
            delay = self.retry_policy(job).delay(claim.attempt, self.rng())
            if not self.requeue(claim.run_id, claim.attempt, error, delay):
                return AttemptResult(Outcome.SKIPPED, claim.attempt)
            log.info(
                "run %s attempt %d failed, retry in %.2fs: %s",
                claim.run_id,
                claim.attempt,
                delay,
                error,
            )
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
        with self.db.autocommit() as conn:
            row = conn.execute(
                select(Run.status, Run.attempts, Run.heartbeat_at).where(Run.id == run_id)
            ).one_or_none()
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
