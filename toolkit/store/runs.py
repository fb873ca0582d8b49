"""Read side of the run ledger: what operators and the CLI look at."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select

from toolkit.errors import AmbiguousRun, InvalidInput, UnknownRun
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


SHORT_ID = 8  # hex digits a short id has at least, as git shows commits
MIN_PREFIX = 4  # hex digits a prefix needs to be looked up
_PREFIX = re.compile(r"^[0-9a-f]+$")
_CANDIDATES = 5  # ambiguous prefix: how many matching ids the error names


def _common(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _hex(value: object) -> str:
    """A neighbour id as hex; the empty string when there is none."""
    if value is None:
        return ""
    return value.hex if isinstance(value, uuid.UUID) else str(value).replace("-", "").lower()


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

    def resolve(self, run_id: object) -> uuid.UUID:
        """A full run id, or a unique prefix of its hex (at least 4 digits, dashes optional)
        such as the short ids tables show; UnknownRun if nothing matches, AmbiguousRun naming a
        few candidates if several do. A prefix is one indexed range query: ids from
        prefix-000… to prefix-fff… (PostgreSQL orders uuids bytewise, SQLite stores them as
        32 lowercase hex digits, which sort the same way)."""
        if isinstance(run_id, uuid.UUID):
            return run_id
        text = str(run_id).strip().lower()
        digits = text.replace("-", "")
        if len(digits) == 32:
            return parse_run_id(text)
        if len(digits) < MIN_PREFIX or not _PREFIX.match(digits):
            raise UnknownRun(
                f"unknown run id {run_id!r}: not a UUID or a hex prefix of at least "
                f"{MIN_PREFIX} digits"
            )
        low, high = uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))
        query = (
            select(Run.id)
            .where(Run.id >= low, Run.id <= high)
            .order_by(Run.id)
            .limit(_CANDIDATES + 1)
        )
        with self._db.autocommit() as conn:
            found = list(conn.scalars(query))
        if not found:
            raise UnknownRun(f"unknown run id {run_id!r}: no run id starts with {digits}")
        if len(found) > 1:
            names = ", ".join(f.hex[:12] for f in found[:_CANDIDATES])
            more = ", ..." if len(found) > _CANDIDATES else ""
            raise AmbiguousRun(
                f"ambiguous run id {run_id!r}: matches {names}{more}; give more digits"
            )
        return found[0]

    def short_ids(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
        """Each id's shortest unique hex prefix, at least 8 digits, as git abbreviates commits:
        what tables show and :meth:`resolve` accepts. Unique among every run stored now: each
        id is compared with its neighbours in id order, found by index, one statement per
        chunk of ids."""
        wanted = list(dict.fromkeys(ids))
        out: dict[uuid.UUID, str] = {}
        for start in range(0, len(wanted), 200):
            chunk = wanted[start : start + 200]
            columns = []
            for n, rid in enumerate(chunk):
                # PostgreSQL has no max(uuid): the neighbours by index order, one row each.
                before = select(Run.id).where(Run.id < rid).order_by(Run.id.desc()).limit(1)
                after = select(Run.id).where(Run.id > rid).order_by(Run.id).limit(1)
                columns.append(before.scalar_subquery().label(f"p{n}"))
                columns.append(after.scalar_subquery().label(f"n{n}"))
            with self._db.autocommit() as conn:
                row = conn.execute(select(*columns)).one()
            for n, rid in enumerate(chunk):
                hexed = rid.hex
                shared = max(
                    (_common(hexed, _hex(other)) for other in (row[2 * n], row[2 * n + 1])),
                    default=0,
                )
                out[rid] = hexed[: max(SHORT_ID, shared + 1)]
        return out

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
        UnknownRun if absent. ``run_id`` may be a unique prefix (:meth:`resolve`). The run and the
        rest are two reads, not one snapshot."""
        view = self.get(self.resolve(run_id))
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
