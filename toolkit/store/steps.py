"""The step memo's writes: a finished step never runs again for the same run.

Every read and write first fences the attempt with the run's prebuilt heartbeat (the same
statement as :meth:`RunStore.heartbeat`), so an attempt that lost the run (cancelled, failed by
cleanup, taken over) stops at its next step and cannot publish output.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from toolkit.errors import RunLost
from toolkit.events import StepFinished
from toolkit.store.engine import Database
from toolkit.store.models import Step, StepStatus, utcnow
from toolkit.store.transitions import Transitions

_STEP = (Step.run_id == bindparam("step_run"), Step.name == bindparam("step"))


class StepStore:
    """Prebuilt statements of the memo; ``heartbeat`` is the run store's own."""

    def __init__(self, db: Database, transitions: Transitions) -> None:
        self.db = db
        self.events = db.events
        self._heartbeat = transitions.heartbeat
        self._read = select(Step.status, Step.output).where(*_STEP)
        self._insert = db.insert(Step).on_conflict_do_nothing(index_elements=["run_id", "name"])
        self._restart = (
            update(Step)
            .where(*_STEP)
            .values(
                status=StepStatus.RUNNING.value,
                attempt=bindparam("attempt"),
                started_at=bindparam("now", type_=Step.started_at.type),
                error=None,
            )
        )
        self._finish = (
            update(Step)
            # By the attempt that started it: a superseded attempt's error must not overwrite
            # the step its run's new holder is running now.
            .where(
                *_STEP,
                Step.status == StepStatus.RUNNING.value,
                Step.attempt == bindparam("step_attempt"),
            )
            .values(
                status=bindparam("status"),
                output=bindparam("output", type_=Step.output.type),
                error=bindparam("error"),
                finished_at=bindparam("now", type_=Step.finished_at.type),
            )
        )

    def memoized(self, run_id: uuid.UUID, attempt: int, step: str) -> tuple[bool, Any]:
        """Fence the attempt, beat the heart, and return a finished step's stored output;
        otherwise mark the step RUNNING for this attempt."""
        now = utcnow()
        keys = {"step_run": run_id, "step": step}
        with self.db.connect() as conn:
            self.fence(conn, run_id, attempt, now)
            row = conn.execute(self._read, keys).one_or_none()
            if row is not None and row.status == StepStatus.COMPLETED.value:
                return True, row.output
            if row is None:
                conn.execute(
                    self._insert,
                    {
                        "run_id": run_id,
                        "name": step,
                        "status": StepStatus.RUNNING.value,
                        "attempt": attempt,
                        "started_at": now,
                    },
                )
            else:
                conn.execute(self._restart, {**keys, "attempt": attempt, "now": now})
        return False, None

    def finish(
        self,
        run_id: uuid.UUID,
        attempt: int,
        step: str,
        *,
        output: Any = None,
        error: str | None = None,
    ) -> None:
        """Record the step's output (fenced: a lost attempt must not publish it; the run's
        new owner re-runs the step) or its error."""
        now = utcnow()
        with self.db.connect() as conn:
            if error is None:
                self.fence(conn, run_id, attempt, now)
            status = StepStatus.FAILED if error else StepStatus.COMPLETED
            params = {"step_run": run_id, "step": step, "status": status.value, "output": output,
                      "error": error, "now": now, "step_attempt": attempt}  # fmt: skip
            moved = conn.execute(self._finish, params).rowcount
        if moved == 1 and self.events.listeners:
            self.events.emit(
                StepFinished(run_id=run_id, attempt=attempt, at=now, step=step, error=error)
            )

    def fence(self, conn: Connection, run_id: uuid.UUID, attempt: int, now: datetime) -> None:
        """Beat the run's heart if ``attempt`` still owns it; RunLost otherwise."""
        params = {"run_id": run_id, "attempt": attempt, "now": now}
        if conn.execute(self._heartbeat, params).rowcount != 1:
            raise RunLost(f"run {run_id} attempt {attempt} no longer owns the run")
