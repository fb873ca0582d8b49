"""Every transition of a run, written in one place, each announced once after its commit.

Each transition is a conditional UPDATE on the expected status (and, while running, on the
attempt number), so two callers cannot both move a run and terminal states never change. The
hot ones (claim, heartbeat, complete, requeue) are one prebuilt statement in autocommit
(:mod:`toolkit.store.transitions`). The final ones are batches (:meth:`RunStore.fail_many_in`,
:meth:`RunStore.cancel_many_in`); their single-run forms are the batch of one, so a run failed
by a worker and one failed by a maintenance sweep get the same dead letter and the same refund.

A transition's event (:mod:`toolkit.events`) is emitted only by the caller whose UPDATE moved
the run, after the commit; with no listener registered it is not even built.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, func, literal, select, update
from sqlalchemy.orm import Session

from toolkit.events import (
    RunCancelled,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunFellBack,
    RunRerouted,
    RunRetried,
    RunStarted,
)
from toolkit.store.credits import Credits
from toolkit.store.engine import Database
from toolkit.store.models import TERMINAL, DeadLetter, Run, RunStatus, utcnow
from toolkit.store.transitions import Transitions, dead_letters, failing

_CANCELLABLE = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)


class RunStore:
    """The run lifecycle's writes; parameters are checked by the callers (runtime, dispatch)."""

    def __init__(self, db: Database, credits: Credits) -> None:
        self.db = db
        self.credits = credits
        self.events = db.events
        self.transitions = Transitions()

    # --- hot transitions: one prebuilt statement each, in autocommit -------------------------

    def claim(
        self, run_id: uuid.UUID, *, take_over: bool = False, stale_before: datetime | None = None
    ) -> Row[Any] | None:
        """QUEUED → RUNNING (or, with ``take_over``, a RUNNING run too, if its heartbeat is
        older than ``stale_before`` when given), counting the attempt. Returns ``job``,
        ``attempts``, ``payload``, ``backend``; None if another caller or a final state won."""
        stale = take_over and stale_before is not None
        params: dict[str, Any] = {"run_id": run_id, "now": utcnow()}
        if stale:
            params["stale_before"] = stale_before
        if take_over and self.events.listeners:  # say whether it was a take-over
            return self._claim_said(params, stale=stale)
        with self.db.autocommit() as conn:
            row = conn.execute(self.transitions.claim[(take_over, stale)], params).one_or_none()
        if row is not None and self.events.listeners:
            self.events.emit(_started(run_id, row, params["now"], taken_over=False))
        return row

    def _claim_said(self, params: dict[str, Any], *, stale: bool) -> Row[Any] | None:
        """The take-over claim in two steps, so its event can tell a take-over: the plain
        claim, then (if that found no QUEUED run) the take-over of a RUNNING one."""
        statements = (self.transitions.claim[(False, False)], self.transitions.take_over[stale])
        for taken_over, statement in enumerate(statements):
            with self.db.autocommit() as conn:
                row = conn.execute(statement, params).one_or_none()
            if row is not None:
                now = params["now"]
                self.events.emit(_started(params["run_id"], row, now, taken_over=bool(taken_over)))
                return row
        return None

    def start(
        self, run_id: uuid.UUID, *, backend: str, external_id: str | None = None
    ) -> Row[Any] | None:
        """QUEUED → RUNNING for an engine that memoizes steps itself (Inngest); a run already
        RUNNING on ``backend`` is returned unchanged (the engine repeats a start it lost the
        answer to). Returns ``job``, ``attempts``, ``payload``; None if not ``backend``'s run,
        finished or cancelled."""
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
        columns = (Run.job, Run.attempts, Run.payload, Run.started_at)
        with self.db.transaction() as s:
            conn = s.connection()
            row = conn.execute(
                update(Run)
                .where(*ours, Run.status == RunStatus.QUEUED)
                .values(**values)
                .returning(*columns)
            ).one_or_none()
            moved = row is not None
            if row is None:
                running = select(*columns).where(*ours, Run.status == RunStatus.RUNNING)
                row = conn.execute(running).one_or_none()
        if moved and self.events.listeners:
            assert row is not None
            self.events.emit(
                RunStarted(
                    run_id=run_id, job=row.job, backend=backend, attempt=row.attempts, at=now
                )
            )
        return row

    def state(self, run_id: uuid.UUID) -> Row[str, int, datetime | None] | None:
        """``status, attempts, heartbeat_at`` of a run (None: no such run), for a transport
        that could not claim it and must decide whether to look again."""
        with self.db.autocommit() as conn:
            return conn.execute(self.transitions.state, {"run_id": run_id}).one_or_none()

    def beat(self, run_id: uuid.UUID, attempt: int) -> bool:
        """Heartbeat of an engine's own attempt counter: ``attempts`` rises to ``attempt``,
        never falls. True while the run is RUNNING."""
        with self.db.autocommit() as conn:
            alive = conn.execute(
                self.transitions.beat, {"run_id": run_id, "attempt": attempt, "now": utcnow()}
            )
        return alive.rowcount == 1

    def heartbeat(self, run_id: uuid.UUID, attempt: int) -> bool:
        """Mark ``attempt`` alive; False once it no longer owns the run."""
        with self.db.autocommit() as conn:
            alive = conn.execute(
                self.transitions.heartbeat, {"run_id": run_id, "attempt": attempt, "now": utcnow()}
            )
        return alive.rowcount == 1

    def complete(self, run_id: uuid.UUID, attempt: int | None, result: Any) -> bool:
        """RUNNING → COMPLETED with ``result``, by the holder of ``attempt`` when given."""
        params = {"run_id": run_id, "result": result, "finished_at": utcnow()}
        if attempt is not None:
            params["attempt"] = attempt
        if not self.events.listeners:
            with self.db.autocommit() as conn:
                moved = conn.execute(self.transitions.complete[attempt is not None], params)
            return moved.rowcount == 1
        with self.db.autocommit() as conn:
            statement = self.transitions.complete_said[attempt is not None]
            row = conn.execute(statement, params).one_or_none()
        if row is None:
            return False
        self.events.emit(
            RunCompleted(
                run_id=run_id,
                job=row.job,
                backend=row.backend,
                attempt=row.attempts,
                at=params["finished_at"],
            )
        )
        return True

    def requeue(self, run_id: uuid.UUID, attempt: int, error: str, delay: float) -> bool:
        """RUNNING → QUEUED for a retry that is due in ``delay`` seconds."""
        now = utcnow()
        params = {
            "run_id": run_id,
            "attempt": attempt,
            "error": error,
            "next_attempt_at": now + timedelta(seconds=delay),
        }
        if not self.events.listeners:
            with self.db.autocommit() as conn:
                moved = conn.execute(self.transitions.requeue, params)
            return moved.rowcount == 1
        with self.db.autocommit() as conn:
            row = conn.execute(self.transitions.requeue_said, params).one_or_none()
        if row is None:
            return False
        self.events.emit(
            RunRetried(
                run_id=run_id,
                job=row.job,
                backend=row.backend,
                attempt=attempt,
                at=now,
                error=error,
                delay=delay,
            )
        )
        return True

    # --- final transitions: the batch, and its batch of one ----------------------------------

    def fail(
        self,
        run_id: uuid.UUID,
        error: str,
        *,
        expected: Iterable[RunStatus] = (RunStatus.RUNNING,),
        attempt: int | None = None,
        backend: str | None = None,
    ) -> bool:
        """Final failure of one run: :meth:`fail_many_in` of one, in its own transaction."""
        with self.db.transaction() as s:
            failed = self.fail_many_in(
                s, [run_id], error, expected=expected, attempt=attempt, backend=backend
            )
            return bool(failed)

    def fail_many_in(
        self,
        s: Session,
        run_ids: Sequence[uuid.UUID],
        error: str | Mapping[RunStatus, str],
        *,
        expected: Iterable[RunStatus] = (RunStatus.RUNNING,),
        reason: str | None = None,
        attempt: int | None = None,
        backend: str | None = None,
    ) -> dict[uuid.UUID, int]:
        """FAILED, a dead letter each and their refunds, in ``s``, for the runs still in an
        ``expected`` state (and at ``attempt``, on ``backend``, when given).

        ``error`` may differ per expected state (``{status: error}``). The refunds are one
        :meth:`Credits.refund_many_in` (``reason``: by default "run failed: <error>").
        Returns ``{run_id: credits refunded}`` for the runs this call failed.
        """
        errors = dict(error) if isinstance(error, Mapping) else dict.fromkeys(expected, error)
        errors = {RunStatus(st): msg for st, msg in errors.items() if st not in TERMINAL}
        if not run_ids or not errors:
            return {}
        now = utcnow()
        which = self.db.among(Run.id, run_ids)
        if attempt is not None:
            which = which & (Run.attempts == attempt)
        if backend is not None:
            which = which & (Run.backend == backend)
        moved = (
            s.connection()
            .execute(
                failing(which, errors, now).returning(
                    Run.id, Run.job, Run.backend, Run.attempts, Run.error
                )
            )
            .all()
        )
        if not moved:
            return {}
        ids = [r.id for r in moved]
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
                ).where(self.db.among(Run.id, ids)),
            )
        )
        if reason is None:
            reason = f"run failed: {error[:200]}" if isinstance(error, str) else "run failed"
        if self.events.listeners:  # before the refunds': a run fails, then is refunded
            self.db.after_commit(s, [_failed(r, now) for r in moved])
        refunded = self.credits.refund_many_in(s, ids, reason=reason)
        return {run_id: refunded.get(run_id, 0) for run_id in ids}

    def cancel(self, run_id: uuid.UUID, reason: str) -> bool:
        """QUEUED or RUNNING → CANCELLED with refund: :meth:`cancel_many_in` of one."""
        with self.db.transaction() as s:
            return bool(self.cancel_many_in(s, [run_id], reason))

    def cancel_many_in(
        self, s: Session, run_ids: Sequence[uuid.UUID], reason: str
    ) -> dict[uuid.UUID, int]:
        """QUEUED or RUNNING → CANCELLED and their refunds, in ``s``; a running attempt stops
        at its next step. Returns ``{run_id: credits refunded}`` for the runs cancelled here."""
        if not run_ids:
            return {}
        now = utcnow()
        moved = (
            s.connection()
            .execute(
                update(Run)
                .where(self.db.among(Run.id, run_ids), Run.status.in_(_CANCELLABLE))
                .values(
                    status=RunStatus.CANCELLED.value,
                    error=f"cancelled: {reason}",
                    finished_at=now,
                )
                .returning(Run.id, Run.job, Run.backend, Run.attempts)
            )
            .all()
        )
        if not moved:
            return {}
        if self.events.listeners:
            events: list[RunEvent] = [
                RunCancelled(
                    run_id=r.id,
                    job=r.job,
                    backend=r.backend,
                    attempt=r.attempts,
                    at=now,
                    reason=reason,
                )
                for r in moved
            ]
            self.db.after_commit(s, events)
        ids = [r.id for r in moved]
        refunded = self.credits.refund_many_in(s, ids, reason=f"run cancelled: {reason}")
        return {run_id: refunded.get(run_id, 0) for run_id in ids}

    # --- hand-over: fallback and recovery ---------------------------------------------------

    def fall_back(self, run_id: uuid.UUID, *, from_backend: str, to: str, reason: str) -> bool:
        """A QUEUED run its backend refused moves to ``to`` (legacy); False if it moved on."""
        params = {
            "run_id": run_id,
            "backend": to,
            "fallback_from": from_backend,
            "route_reason": f"fallback: {reason}"[:500],
        }
        with self.db.autocommit() as conn:
            row = conn.execute(self.transitions.fall_back, params).one_or_none()
        if row is None:
            return False
        if self.events.listeners:
            self.events.emit(
                RunFellBack(
                    run_id=run_id, job=row.job, backend=to, from_backend=from_backend, reason=reason
                )
            )
        return True

    def recovery_row(self, s: Session, run_id: uuid.UUID) -> Row[Any] | None:
        """What recovery needs to route a run again: ``job``, ``payload``, ``targeting_key``,
        ``backend``."""
        return s.execute(
            select(Run.job, Run.payload, Run.targeting_key, Run.backend).where(Run.id == run_id)
        ).one_or_none()

    def reroute_in(
        self,
        s: Session,
        run_id: uuid.UUID,
        *,
        seen: tuple[str, int, int],
        backend: str,
        route_reason: str,
        job: str | None = None,
        previous_backend: str | None = None,
    ) -> bool:
        """Recovery, in ``s``: the run, still as the caller ``seen`` it (status, recoveries,
        attempts), goes back to QUEUED on ``backend`` with its recovery counted."""
        status, recoveries, attempts = seen
        now = utcnow()
        moved = s.connection().execute(
            self.transitions.reroute,
            {
                "run_id": run_id,
                "seen_status": status,
                "seen_recoveries": recoveries,
                "seen_attempts": attempts,
                "backend": backend,
                "recoveries": recoveries + 1,
                "now": now,
                "route_reason": route_reason[:500],
            },
        )
        if moved.rowcount != 1:
            return False
        if self.events.listeners:
            event = RunRerouted(
                run_id=run_id, job=job, backend=backend, attempt=attempts, at=now,
                from_backend=previous_backend, recovery=recoveries + 1,
            )  # fmt: skip
            self.db.after_commit(s, [event])
        return True


def _started(run_id: uuid.UUID, row: Row[Any], now: datetime, *, taken_over: bool) -> RunStarted:
    return RunStarted(
        run_id=run_id,
        job=row.job,
        backend=row.backend,
        attempt=row.attempts,
        at=now,
        taken_over=taken_over,
    )


def _failed(row: Any, now: datetime) -> RunFailed:
    return RunFailed(
        run_id=row.id, job=row.job, backend=row.backend, attempt=row.attempts, at=now,
        error=row.error,
    )  # fmt: skip
