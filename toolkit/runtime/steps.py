"""The step memo in the steps table: a finished step never runs again for the same run.

Used by the executors that run job code in our own processes (legacy, Celery); Inngest keeps
its own memo. Every read and write first fences the attempt, so an attempt that lost the run
(cancelled, failed by cleanup, taken over) stops at its next step and cannot publish output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from toolkit.errors import JobTimeout, RunLost
from toolkit.jobs import JobContext
from toolkit.runtime.serialization import describe, to_json
from toolkit.store.engine import Database
from toolkit.store.models import Run, RunStatus, Step, StepStatus, utcnow

if TYPE_CHECKING:
    from toolkit.runtime.lifecycle import Claim


class StepMemo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def memoized(self, claim: Claim, step_id: str) -> tuple[bool, Any]:
        """Fence the attempt, beat the heart, and return a finished step's stored output."""
        now = utcnow()
        with self.db.transaction() as s:
            fence(s, claim, now)
            step = s.execute(
                select(Step).where(Step.run_id == claim.run_id, Step.name == step_id)
            ).scalar_one_or_none()
            if step is not None and step.status == StepStatus.COMPLETED:
                return True, step.output
            if step is None:
                s.add(
                    Step(
                        run_id=claim.run_id,
                        name=step_id,
                        status=StepStatus.RUNNING,
                        attempt=claim.attempt,
                        started_at=now,
                    )
                )
            else:
                step.status = StepStatus.RUNNING
                step.attempt = claim.attempt
                step.started_at = now
                step.error = None
        return False, None

    def finish(
        self, claim: Claim, step_id: str, *, output: Any = None, error: str | None = None
    ) -> None:
        now = utcnow()
        with self.db.transaction() as s:
            if error is None:
                # A lost attempt must not publish output: the run's new owner re-runs the step.
                fence(s, claim, now)
            s.connection().execute(
                update(Step)
                .where(
                    Step.run_id == claim.run_id,
                    Step.name == step_id,
                    Step.status == StepStatus.RUNNING,
                )
                .values(
                    status=StepStatus.FAILED if error else StepStatus.COMPLETED,
                    output=output,
                    error=error,
                    finished_at=now,
                )
            )


def fence(s: Session, claim: Claim, now: datetime) -> None:
    """Beat the run's heart if this attempt still owns it; RunLost otherwise."""
    alive = s.connection().execute(
        update(Run)
        .where(
            Run.id == claim.run_id,
            Run.status == RunStatus.RUNNING,
            Run.attempts == claim.attempt,
        )
        .values(heartbeat_at=now)
    )
    if alive.rowcount != 1:
        raise RunLost(f"run {claim.run_id} attempt {claim.attempt} no longer owns the run")


class DatabaseJobContext(JobContext):
    """Step memo in the steps table: used by the legacy and Celery backends."""

    def __init__(self, steps: StepMemo, claim: Claim, *, deadline: float) -> None:
        super().__init__(claim.run_id, claim.attempt, claim.job, claim.payload)
        self._steps = steps
        self._claim = claim
        self._deadline = deadline

    def _run_step(
        self, step_id: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        done, output = self._steps.memoized(self._claim, step_id)
        if done:
            return output
        if time.monotonic() > self._deadline:
            raise JobTimeout(
                f"run exceeded the {self.job.timeout:g}s timeout of job "
                f"{self.job.name!r} before step {step_id!r}"
            )
        try:
            output = to_json(fn(*args, **kwargs), what=f"the output of step {step_id!r}")
        except Exception as exc:
            self._steps.finish(self._claim, step_id, error=describe(exc))
            raise
        self._steps.finish(self._claim, step_id, output=output)
        return output
