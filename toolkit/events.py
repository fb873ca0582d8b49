"""Lifecycle events: every transition of a run, as a typed value, after its commit.

The store emits each event exactly once, and only for the caller whose conditional UPDATE
moved the run (a lost race emits nothing), after the transaction that made the change
committed: a listener that reads the run sees the new state. Monitoring, metrics and flag
tracking are listeners (``Toolkit.on``); nothing else logs transitions.

A listener runs in the thread that made the transition, so it should be quick; one that
raises is logged (``log.exception``) and never breaks the run. With no listener registered
the store does not even build the event.

This module imports nothing from the toolkit: every layer may depend on it.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

log = logging.getLogger("toolkit.events")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True, slots=True)
class RunEvent:
    """What every transition says: which run, where, which attempt, its status after it."""

    run_id: uuid.UUID
    job: str | None = None
    backend: str | None = None
    attempt: int | None = None
    status: str = ""
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True, kw_only=True, slots=True)
class RunQueued(RunEvent):
    """A run was recorded by dispatch (with its debit, if the job costs credits)."""

    status: str = "QUEUED"
    route_reason: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class RunStarted(RunEvent):
    """An attempt claimed the run; ``taken_over`` when it took a RUNNING run from a holder
    presumed dead (a redelivered message)."""

    status: str = "RUNNING"
    taken_over: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class StepFinished(RunEvent):
    """A step of a run executed in our own processes finished (``error`` if it raised)."""

    status: str = "RUNNING"
    step: str = ""
    error: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class RunRetried(RunEvent):
    """An attempt failed and the run is QUEUED again, due after ``delay`` seconds."""

    status: str = "QUEUED"
    error: str | None = None
    delay: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class RunCompleted(RunEvent):
    status: str = "COMPLETED"


@dataclass(frozen=True, kw_only=True, slots=True)
class RunFailed(RunEvent):
    """Final failure: the dead letter and the refund committed with it."""

    status: str = "FAILED"
    error: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class RunCancelled(RunEvent):
    status: str = "CANCELLED"
    reason: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class RunRefunded(RunEvent):
    """A FAILED or CANCELLED run's debit went back to its account (once per run). Follows the
    run's RunFailed or RunCancelled; ``status``, ``job`` and ``backend`` are only filled in
    where the refund path read them anyway (the maintenance batches)."""

    account: str = ""
    amount: int = 0
    reason: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class RunFellBack(RunEvent):
    """A backend refused a QUEUED run at hand-over and the run moved to legacy."""

    status: str = "QUEUED"
    from_backend: str = ""
    reason: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class RunRerouted(RunEvent):
    """Recovery routed a stuck run again (same id), to ``backend``, as recovery ``recovery``."""

    status: str = "QUEUED"
    from_backend: str | None = None
    recovery: int = 0


E = TypeVar("E", bound=RunEvent)
Listener = Callable[[Any], object]


class Events:
    """The listeners of one ``Toolkit``, and the one way events reach them.

    ``listeners`` is an immutable tuple, replaced whole under a lock when a listener is added or
    removed: the hot paths test it without a lock before building an event, and an emit that
    runs while another thread registers sees one consistent set.
    """

    def __init__(self) -> None:
        self.listeners: tuple[tuple[type[RunEvent], Listener], ...] = ()
        #: Exceptions a listener lets through instead of having them logged: a transport's
        #: own time limit (Celery's soft limit) must still stop the job it interrupts.
        self.passthrough: tuple[type[BaseException], ...] = ()
        self._lock = threading.Lock()

    def on(self, kind: type[RunEvent] | Listener, listener: Listener | None = None) -> Any:
        """Register ``listener`` for events of type ``kind`` (subclasses included).

        ``on(fn)`` listens to every event; ``on(RunFailed, fn)`` to one type; ``on(RunFailed)``
        returns a decorator. Returns the listener, so it can be kept to :meth:`off` later.
        """
        if not isinstance(kind, type):
            self._add(RunEvent, kind)
            return kind
        if not issubclass(kind, RunEvent):
            raise TypeError(f"{kind!r} is not a RunEvent type")
        event_type: type[RunEvent] = kind
        if listener is None:

            def register(fn: Listener) -> Listener:
                self._add(event_type, fn)
                return fn

            return register
        self._add(event_type, listener)
        return listener

    def off(self, listener: Listener) -> None:
        """Unregister ``listener`` from every type it listens to (compared by equality, so
        ``off(obj.method)`` removes what ``on(obj.method)`` added)."""
        with self._lock:
            self.listeners = tuple((k, fn) for k, fn in self.listeners if fn != listener)

    def _add(self, kind: type[RunEvent], listener: Listener) -> None:
        with self._lock:
            self.listeners = (*self.listeners, (kind, listener))

    def emit(self, event: RunEvent) -> None:
        """Call every listener of ``event``'s type; one that raises is logged, not raised.

        Callers emit after the commit of the transition, never inside its transaction.
        """
        for kind, listener in self.listeners:
            if isinstance(event, kind):
                try:
                    listener(event)
                except self.passthrough:
                    raise
                except Exception:
                    log.exception(
                        "listener %r failed on %s for run %s",
                        listener,
                        type(event).__name__,
                        event.run_id,
                    )

    def emit_all(self, events: Iterable[RunEvent]) -> None:
        """:meth:`emit` each of ``events``, in order (a batch: one event per run moved)."""
        for event in events:
            self.emit(event)


__all__ = [
    "Events",
    "RunCancelled",
    "RunCompleted",
    "RunEvent",
    "RunFailed",
    "RunFellBack",
    "RunQueued",
    "RunRefunded",
    "RunRerouted",
    "RunRetried",
    "RunStarted",
    "StepFinished",
]
