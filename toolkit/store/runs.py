"""Read side of the run ledger: what operators and the CLI look at."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select

from toolkit.errors import InvalidInput, UnknownRun
from toolkit.store.engine import Database
from toolkit.store.models import TERMINAL, CreditEntry, DeadLetter, Run, RunStatus, Step


def parse_run_id(value: object) -> uuid.UUID:
    """A UUID or its string form; anything else raises UnknownRun, not ValueError, so callers report
    an unknown run."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise UnknownRun(f"unknown run id {value!r}: not a UUID") from None


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


@dataclass(frozen=True)
class RunView:
    id: uuid.UUID
    job: str
    status: str
    backend: str
    targeting_key: str
    idempotency_key: str | None
    attempts: int
    account: str | None
    cost: int
    route_reason: str | None
    fallback_from: str | None
    external_id: str | None
    recoveries: int
    error: str | None
    payload: Any
    result: Any
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None

    @property
    def terminal(self) -> bool:
        """True once the run can no longer change: completed, failed or cancelled."""
        return RunStatus(self.status) in TERMINAL

    @property
    def queue_seconds(self) -> float | None:
        """Seconds from dispatch to the first start; None until it started."""
        if self.started_at is None:
            return None
        return (self.started_at - self.created_at).total_seconds()

    @property
    def duration_seconds(self) -> float | None:
        """Seconds from the first start to the finish (retries included); None until it finished."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @classmethod
    def from_row(cls, r: Any) -> RunView:
        """From a ``Run`` or a row of its columns."""
        return cls(**{f.name: getattr(r, f.name) for f in fields(cls)})

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO 8601, UUIDs as strings, plus the two durations."""
        data = {f.name: _iso(getattr(self, f.name)) for f in fields(self)}
        data["queue_seconds"] = self.queue_seconds
        data["duration_seconds"] = self.duration_seconds
        return data


@dataclass(frozen=True)
class StepView:
    name: str
    status: str
    attempt: int
    output: Any
    error: str | None
    started_at: datetime
    finished_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO 8601."""
        return {f.name: _iso(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class LedgerView:
    account: str
    kind: str
    amount: int
    reason: str | None
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO 8601."""
        return {f.name: _iso(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class RunDetail:
    run: RunView
    steps: list[StepView]
    ledger: list[LedgerView]
    dead_letter: bool

    def as_dict(self) -> dict[str, Any]:
        """The run's fields with its steps, ledger entries and dead-letter flag, JSON-ready."""
        return {
            **self.run.as_dict(),
            "steps": [s.as_dict() for s in self.steps],
            "ledger": [e.as_dict() for e in self.ledger],
            "dead_letter": self.dead_letter,
        }


class RunQueries:
    def __init__(self, db: Database) -> None:
        self._db = db
        # One row by primary key, no ORM session: handles refresh through this after every
        # blocking legacy run.
        self._get = select(*Run.__table__.c).where(Run.id == bindparam("run_id"))

    def get(self, run_id: object) -> RunView:
        """The run as stored now, one autocommit read (handles refresh through it); UnknownRun if
        absent."""
        rid = parse_run_id(run_id)
        with self._db.autocommit() as conn:
            run = conn.execute(self._get, {"run_id": rid}).one_or_none()
        if run is None:
            raise UnknownRun(f"unknown run id {rid}")
        return RunView.from_row(run)

    def detail(self, run_id: object) -> RunDetail:
        """The run, its steps and credit entries in order, and whether it was dead-lettered;
        UnknownRun if absent. The run and the rest are two reads, not one snapshot."""
        view = self.get(run_id)
        with self._db.transaction() as s:
            steps = s.scalars(select(Step).where(Step.run_id == view.id).order_by(Step.id)).all()
            ledger = s.scalars(
                select(CreditEntry).where(CreditEntry.run_id == view.id).order_by(CreditEntry.id)
            ).all()
            dead = s.scalar(select(DeadLetter.id).where(DeadLetter.run_id == view.id))
            return RunDetail(
                view,
                [
                    StepView(
                        x.name, x.status, x.attempt, x.output, x.error, x.started_at, x.finished_at
                    )
                    for x in steps
                ],
                [LedgerView(e.account, e.kind, e.amount, e.reason, e.created_at) for e in ledger],
                dead is not None,
            )

    def list(
        self,
        *,
        job: str | None = None,
        status: str | None = None,
        backend: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[RunView]:
        """Newest first, at most ``limit``, filtered by any of job, status (case-insensitive),
        backend and creation time; an unknown status raises InvalidInput."""
        if limit < 1:
            raise InvalidInput("limit must be at least 1")
        query = select(Run).order_by(Run.created_at.desc(), Run.id).limit(limit)
        if job is not None:
            query = query.where(Run.job == job)
        if status is not None:
            try:
                query = query.where(Run.status == RunStatus(status.upper()).value)
            except ValueError:
                known = ", ".join(s.value for s in RunStatus)
                raise InvalidInput(f"unknown status {status!r} (known: {known})") from None
        if backend is not None:
            query = query.where(Run.backend == backend)
        if since is not None:
            query = query.where(Run.created_at >= since)
        with self._db.transaction() as s:
            return [RunView.from_row(r) for r in s.scalars(query).all()]

    def in_flight(self, job: str | None = None) -> dict[tuple[str, str], dict[str, int]]:
        """Queued and running runs per (job, backend): what a rollback leaves to drain."""
        query = (
            select(Run.job, Run.backend, Run.status, func.count())
            .where(Run.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value]))
            .group_by(Run.job, Run.backend, Run.status)
        )
        if job is not None:
            query = query.where(Run.job == job)
        out: dict[tuple[str, str], dict[str, int]] = {}
        with self._db.transaction() as s:
            for job_name, backend, status, count in s.execute(query):
                out.setdefault((job_name, backend), {"QUEUED": 0, "RUNNING": 0})[status] = count
        return out
