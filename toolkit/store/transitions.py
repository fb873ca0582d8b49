"""The run transitions as statements built once, executed with parameters; and the final
failure of many runs, which :class:`~toolkit.store.lifecycle.RunStore` and the one-statement
maintenance batches both build on.

Building an ``update(Run).where(...)`` costs more CPU than running it (every call coerces
each clause and computes a cache key), and claim, heartbeat and complete run for every run
on every worker. These are built once per :class:`RunStore`; each is a single conditional
UPDATE, atomic on its own, so the store runs the hot ones with ``Database.autocommit()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import (
    Select,
    Text,
    Update,
    and_,
    bindparam,
    case,
    func,
    literal,
    or_,
    select,
    update,
)

from toolkit.store.models import DeadLetter, Run, RunStatus

QUEUED, RUNNING = RunStatus.QUEUED.value, RunStatus.RUNNING.value


def _claim(*, queued: bool = True, take_over: bool, stale: bool) -> Update:
    claimable: Any = Run.status == QUEUED
    if take_over:
        running: Any = Run.status == RUNNING
        if stale:
            running = and_(
                running,
                or_(Run.heartbeat_at.is_(None), Run.heartbeat_at < bindparam("stale_before")),
            )
        claimable = or_(claimable, running) if queued else running
    now = bindparam("now", type_=Run.started_at.type)
    return (
        update(Run)
        .where(Run.id == bindparam("run_id"), claimable)
        .values(
            status=RUNNING,
            attempts=Run.attempts + 1,
            started_at=func.coalesce(Run.started_at, now),  # the first start counts
            heartbeat_at=now,
            next_attempt_at=None,
        )
        .returning(Run.job, Run.attempts, Run.payload, Run.backend)
    )


def _running(*, attempt: bool) -> Any:
    """WHERE of a transition out of RUNNING, by the holder of ``attempt`` when given."""
    where = and_(Run.id == bindparam("run_id"), Run.status == RUNNING)
    return and_(where, Run.attempts == bindparam("attempt")) if attempt else where


class Transitions:
    """Prebuilt statements; parameter names are the keyword arguments of each method."""

    def __init__(self) -> None:
        self.claim = {
            (take_over, stale): _claim(take_over=take_over, stale=stale)
            for take_over, stale in ((False, False), (True, False), (True, True))
        }
        # Only the take-over half, by stale: with a listener, a take-over claim first tries
        # the plain claim and then this, so the event can say which one it was.
        self.take_over = {
            stale: _claim(queued=False, take_over=True, stale=stale) for stale in (False, True)
        }
        self.complete = {
            attempt: update(Run)
            .where(_running(attempt=attempt))
            .values(
                status=RunStatus.COMPLETED.value,
                result=bindparam("result", type_=Run.result.type),
                error=None,
                finished_at=bindparam("finished_at", type_=Run.finished_at.type),
            )
            for attempt in (False, True)
        }
        self.requeue = (
            update(Run)
            .where(_running(attempt=True))
            .values(
                status=QUEUED,
                error=bindparam("error"),
                next_attempt_at=bindparam("next_attempt_at", type_=Run.next_attempt_at.type),
            )
        )
        # With a listener: the same statements, telling the event which run it was.
        self.complete_said = {
            attempt: stmt.returning(Run.job, Run.backend, Run.attempts)
            for attempt, stmt in self.complete.items()
        }
        self.requeue_said = self.requeue.returning(Run.job, Run.backend)
        self.fall_back = (
            update(Run)
            .where(Run.id == bindparam("run_id"), Run.status == QUEUED)
            .values(
                backend=bindparam("backend"),
                fallback_from=bindparam("fallback_from"),
                route_reason=bindparam("route_reason"),
            )
            .returning(Run.job)
        )
        self.reroute = (
            update(Run)
            .where(
                Run.id == bindparam("run_id"),
                Run.status == bindparam("seen_status"),
                Run.recoveries == bindparam("seen_recoveries"),
                Run.attempts == bindparam("seen_attempts"),
            )
            .values(
                status=QUEUED,
                backend=bindparam("backend"),
                recoveries=bindparam("recoveries"),
                next_attempt_at=bindparam("now", type_=Run.next_attempt_at.type),
                route_reason=bindparam("route_reason"),
            )
        )
        # Where a run is, for a transport that could not claim it (not a write: read by id).
        self.state = select(Run.status, Run.attempts, Run.heartbeat_at).where(
            Run.id == bindparam("run_id")
        )
        self.heartbeat = (
            update(Run)
            .where(_running(attempt=True))
            .values(heartbeat_at=bindparam("now", type_=Run.heartbeat_at.type))
        )
        # An engine's own attempt counter: attempts rises to it and never falls.
        self.beat = (
            update(Run)
            .where(_running(attempt=False))
            .values(
                heartbeat_at=bindparam("now", type_=Run.heartbeat_at.type),
                attempts=case(
                    (Run.attempts < bindparam("attempt"), bindparam("attempt")),
                    else_=Run.attempts,
                ),
            )
        )


# --- final failure of many runs: one definition for the runtime and the maintenance sweeps -----

DEAD_LETTER_COLUMNS = ("run_id", "job", "payload", "error", "attempts", "created_at")


def failing(which: Any, errors: Mapping[RunStatus, str], finished_at: Any) -> Update:
    """``UPDATE`` the runs ``which`` selects that are still in one of ``errors``' statuses to
    FAILED, each with the error for the status it was in. Add ``.returning(...)`` as needed."""
    message = case({st.value: literal(msg, Text()) for st, msg in errors.items()}, value=Run.status)
    return (
        update(Run)
        .where(which, Run.status.in_([st.value for st in errors]))
        .values(status=RunStatus.FAILED.value, error=message, finished_at=finished_at)
    )


def dead_letters(insert: Callable[[Any], Any], failed: Select[Any]) -> Any:
    """Insert one dead letter per row of ``failed`` (its columns in ``DEAD_LETTER_COLUMNS``
    order); a run that has one already keeps it. ``insert`` is ``Database.insert``."""
    return (
        insert(DeadLetter)
        .from_select(list(DEAD_LETTER_COLUMNS), failed)
        .on_conflict_do_nothing(index_elements=["run_id"])
    )
