"""The batch engine of the maintenance sweeps: selection, keyset pages, locks, audit.

A :class:`Sweep` (see :mod:`toolkit.maintenance_ops`) says which runs it wants, per status,
and what it does to a batch of them. :class:`Sweeper` pages through those runs in
``(created_at, id)`` order with keyset pagination (constant memory, whatever the table size),
and gives every batch one transaction: select the next page, lock it (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, so concurrent invocations split the work; SQLite serializes writers),
re-check each run is still wanted, act, and write the batch's audit entry. A crash leaves each
batch wholly done or not done, and the next invocation, which selects only what is still
wanted, completes the work. A dry run takes the same path, without locks, writes or audit.
"""

from __future__ import annotations

import math
import time
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import Row, Select, and_, exists, func, or_, select, union_all
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from toolkit.audit import default_actor, record
from toolkit.backends import OPTIONAL
from toolkit.errors import InvalidInput, UnknownBackend, UnknownJob
from toolkit.models import Run, RunStatus

if TYPE_CHECKING:
    from toolkit.app import Toolkit

DEFAULT_BATCH = 1000
MAX_BATCH = 5000
SAMPLE = 20  # rows kept for the "what would change" table; totals cover every run
MAX_WINDOW = 16  # a page looks at up to MAX_WINDOW * batch_size runs for batch_size wanted ones


@dataclass(frozen=True)
class Filters:
    """Which runs a sweep may touch, and how many per invocation and per batch."""

    job: str | None = None
    backend: str | None = None
    since: datetime | None = None
    limit: int | None = None
    batch_size: int = DEFAULT_BATCH

    def __post_init__(self) -> None:
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            raise InvalidInput(f"limit must be at least 1, not {self.limit!r}")
        if isinstance(self.batch_size, bool) or not 1 <= self.batch_size <= MAX_BATCH:
            raise InvalidInput(f"batch size must be from 1 to {MAX_BATCH}, not {self.batch_size!r}")

    def criteria(self) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        if self.job is not None:
            out.append(Run.job == self.job)
        if self.backend is not None:
            out.append(Run.backend == self.backend)
        if self.since is not None:
            out.append(Run.created_at >= self.since)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "backend": self.backend,
            "since": self.since.isoformat() if self.since else None,
            "limit": self.limit,
            "batch_size": self.batch_size,
        }


@dataclass(slots=True)
class Change:
    """What a sweep did, or would do, to one run; ``skipped`` says why it did nothing."""

    run_id: uuid.UUID
    job: str
    backend: str
    status: str
    created_at: datetime
    change: str
    credits: int = 0
    skipped: str | None = None

    @classmethod
    def of(cls, row: Row[Any], change: str, credits: int = 0, skipped: str | None = None) -> Change:
        return cls(
            row.id, row.job, row.backend, row.status, row.created_at, change, credits, skipped
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": str(self.run_id),
            "job": self.job,
            "backend": self.backend,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "change": self.change,
            "credits": self.credits,
            "skipped": self.skipped,
        }


@dataclass
class Totals:
    runs: int = 0
    credits: int = 0


@dataclass
class Report:
    """The outcome of one invocation: totals per (job, backend, change), never every run."""

    action: str
    applied: bool
    filters: Filters
    parameters: dict[str, Any] = field(default_factory=dict)
    changed: int = 0
    credits: int = 0
    batches: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    totals: dict[tuple[str, str, str], Totals] = field(default_factory=dict)
    sample: list[Change] = field(default_factory=list)
    elapsed: float = 0.0

    def add(self, changes: Sequence[Change]) -> None:
        for c in changes:
            if len(self.sample) < SAMPLE:
                self.sample.append(c)
            if c.skipped is not None:
                self.skipped[c.skipped] += 1
                continue
            self.changed += 1
            self.credits += c.credits
            totals = self.totals.setdefault((c.job, c.backend, c.change), Totals())
            totals.runs += 1
            totals.credits += c.credits

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "applied": self.applied,
            "filters": self.filters.as_dict(),
            "parameters": self.parameters,
            "changed": self.changed,
            "credits": self.credits,
            "batches": self.batches,
            "skipped": dict(self.skipped),
            "outcomes": dict(self.outcomes),
            "totals": [
                {"job": j, "backend": b, "change": c, "runs": t.runs, "credits": t.credits}
                for (j, b, c), t in sorted(self.totals.items())
            ],
            "sample": [c.as_dict() for c in self.sample],
            "elapsed_s": round(self.elapsed, 3),
        }


class Sweep(ABC):
    """One maintenance operation: which runs (per status) and what to do with a batch."""

    action: ClassVar[str]
    statuses: ClassVar[tuple[RunStatus, ...]]

    def __init__(self, tk: Toolkit) -> None:
        self.tk = tk

    @abstractmethod
    def criteria(self, status: RunStatus) -> Sequence[ColumnElement[bool]]:
        """What makes a run in ``status`` wanted, beside the filters."""

    def columns(self, *, apply: bool) -> Sequence[Any]:
        """Columns the batch rows need beside id, job, backend, status and created_at."""
        return ()

    def parameters(self) -> dict[str, Any]:
        return {}

    #: True: :meth:`prepare` sees each batch's rows outside any transaction before
    #: :meth:`apply` gets them, locked, in a new one.
    prepares: ClassVar[bool] = False

    def prepare(self, rows: Sequence[Row[Any]]) -> None:
        """Work that must not run inside the batch's transaction (flag evaluations)."""
        return None

    @abstractmethod
    def preview(self, rows: Sequence[Row[Any]]) -> list[Change]:
        """What :meth:`apply` would do to these rows; called outside any transaction."""

    @abstractmethod
    def apply(self, s: Session, rows: Sequence[Row[Any]]) -> list[Change]:
        """Act on a locked batch inside its transaction."""

    def after_commit(self) -> Counter[str]:
        """Work that must follow the batch's commit (a hand-over); outcome counts."""
        return Counter()


Progress = Callable[[int], None]
Cursor = tuple[datetime, uuid.UUID]


class Sweeper:
    """Runs a sweep over the runs the filters allow, one keyset page per transaction."""

    def __init__(
        self,
        tk: Toolkit,
        sweep: Sweep,
        filters: Filters,
        *,
        reason: str | None = None,
        actor: str | None = None,
    ) -> None:
        self.tk = tk
        self.sweep = sweep
        self.filters = filters
        self.reason = reason
        self.actor = actor or default_actor()

    # --- selection -------------------------------------------------------------------------

    def _scope(self, status: RunStatus) -> list[ColumnElement[bool]]:
        return [Run.status == status.value, *self.sweep.criteria(status), *self.filters.criteria()]

    def _window_end(self, cursor: Cursor | None, width: int) -> Select[Any]:
        """The last of the next ``width`` runs after ``cursor`` in the sweep's statuses, wanted
        or not, and how many there are.

        Only the status, the filters and the keyset decide the window, so the database walks
        the ``(status, created_at)`` index in order and stops after ``width`` rows. (With the
        sweep's own criteria in here, PostgreSQL misjudges how many rows match, sorts every
        remaining candidate on each page, and a sweep turns quadratic.)
        """
        branches = []
        for status in self.sweep.statuses:
            query = select(Run.id.label("id"), Run.created_at.label("created_at")).where(
                Run.status == status.value, *self.filters.criteria(), *_after(cursor)
            )
            branches.append(query.order_by(Run.created_at, Run.id).limit(width).subquery())
        merged = union_all(*(select(b.c.id, b.c.created_at) for b in branches)).subquery()
        page = (
            select(merged.c.id, merged.c.created_at)
            .order_by(merged.c.created_at, merged.c.id)
            .limit(width)
            .subquery()
        )
        return (
            select(page.c.id, page.c.created_at, func.count().over().label("size"))
            .order_by(page.c.created_at.desc(), page.c.id.desc())
            .limit(1)
        )

    def _rows(self, cursor: Cursor | None, end: Cursor, n: int, *, lock: bool) -> Select[Any]:
        """The first ``n`` wanted runs in the window ``(cursor, end]``, locked unless another
        invocation holds them."""
        at, last = end
        wanted = or_(*(and_(*self._scope(status)) for status in self.sweep.statuses))
        query = (
            select(
                Run.id,
                Run.job,
                Run.backend,
                Run.status,
                Run.created_at,
                *self.sweep.columns(apply=lock),
            )
            .where(
                Run.status.in_([st.value for st in self.sweep.statuses]),
                *_after(cursor),
                Run.created_at <= at,
                or_(Run.created_at < at, Run.id <= last),
                wanted,
            )
            .order_by(Run.created_at, Run.id)
            .limit(n)
        )
        if lock:  # ignored by SQLite, where BEGIN IMMEDIATE already serializes writers
            query = query.with_for_update(of=Run, skip_locked=True, key_share=True)
        return query

    def count(self) -> int:
        """How many runs the sweep wants now (at most ``limit``): the progress bar's total."""
        branches = [select(Run.id).where(*self._scope(st)) for st in self.sweep.statuses]
        query = select(func.count()).select_from(union_all(*branches).subquery())
        with self.tk.db.transaction() as s:
            total = int(s.scalar(query) or 0)
        return total if self.filters.limit is None else min(total, self.filters.limit)

    # --- the loop --------------------------------------------------------------------------

    def run(self, *, apply: bool = False, progress: Progress | None = None) -> Report:
        """Dry run by default; with ``apply`` each batch acts and commits with its audit entry.

        Each page looks at a window of the next ``width`` runs in the sweep's statuses and
        takes the wanted ones, at most ``batch_size``. The cursor moves past the last run
        taken when the batch is full, else past the whole window, so a run is looked at about
        once per invocation. The window starts at ``batch_size`` and follows the share of
        wanted runs in the last one seen whole (up to ``MAX_WINDOW`` times the batch), so
        batches come out nearly full without looking at runs twice.
        """
        started = time.perf_counter()
        report = Report(self.sweep.action, apply, self.filters, parameters=self.sweep.parameters())
        cursor: Cursor | None = None
        size, limit = self.filters.batch_size, self.filters.limit
        width = size
        while limit is None or report.changed < limit:
            n = size if limit is None else min(size, limit - report.changed)
            width = max(n, min(width, n * MAX_WINDOW))
            with self.tk.db.transaction() as s:
                last = s.connection().execute(self._window_end(cursor, width)).one_or_none()
                if last is None:
                    break
                end = (last.created_at, last.id)
                if apply and not self.sweep.prepares:
                    rows, changes = self._apply(s, cursor, end, n)
                else:  # to prepare: every wanted run of the window, whichever get locked next
                    take = n if not apply else width
                    rows = s.connection().execute(self._rows(cursor, end, take, lock=False)).all()
            # Outside any transaction: flag evaluations may read the database themselves (on
            # SQLite a second transaction would wait for this one's write lock).
            if not apply:
                changes = self.sweep.preview(rows)
            elif self.sweep.prepares and not rows:
                changes = []
            elif self.sweep.prepares:
                self.sweep.prepare(rows)
                with self.tk.db.transaction() as s:
                    rows, changes = self._apply(s, cursor, end, n)
            if apply:
                report.batches += any(c.skipped is None for c in changes)
                report.outcomes.update(self.sweep.after_commit())
            # A full batch resumes right after its last run; otherwise after the whole window.
            cursor = (rows[-1].created_at, rows[-1].id) if len(rows) == n else end
            report.add(changes)
            if progress is not None:
                progress(len(rows))
            if len(rows) < n and last.size < width:
                break
            if len(rows) < n:  # the whole window was seen: size the next one to fill a batch
                width = math.ceil(n * 1.1 * last.size / max(len(rows), 1))
        report.elapsed = time.perf_counter() - started
        return report

    def _apply(
        self, s: Session, cursor: Cursor | None, end: Cursor, n: int
    ) -> tuple[Sequence[Row[Any]], list[Change]]:
        """Lock the batch, act on it and record it, all in the caller's transaction ``s``."""
        rows = s.connection().execute(self._rows(cursor, end, n, lock=True)).all()
        changes = self.sweep.apply(s, rows)
        done = [c for c in changes if c.skipped is None]
        if done:
            self._audit(s, done)
        return rows, changes

    def _audit(self, s: Session, done: Sequence[Change]) -> None:
        """One entry per batch, in the batch's transaction: it commits with the change."""
        record(
            s,
            actor=self.actor,
            action=f"maintenance.{self.sweep.action}",
            target=", ".join(sorted({c.job for c in done}))[:200],
            before={
                "statuses": dict(Counter(c.status for c in done)),
                "backends": dict(Counter(c.backend for c in done)),
            },
            after={
                "runs": len(done),
                "credits": sum(c.credits for c in done),
                "changes": dict(Counter(c.change for c in done)),
                "run_ids": [str(c.run_id) for c in done],
                "filters": self.filters.as_dict(),
                "parameters": self.sweep.parameters(),
            },
            reason=self.reason,
        )


def _after(cursor: Cursor | None) -> list[ColumnElement[bool]]:
    """Keyset condition: strictly after ``cursor`` in ``(created_at, id)`` order."""
    if cursor is None:
        return []
    at, run_id = cursor
    return [Run.created_at >= at, or_(Run.created_at > at, Run.id > run_id)]


def check_filters(tk: Toolkit, filters: Filters) -> None:
    """Unknown job or backend names are bad input (exit 2), not an empty sweep.

    A name is known if the app registers it or if any run carries it, so the sweeps also work
    without ``--app`` and for jobs or backends that were removed since.
    """
    job = filters.job
    if job is not None and job not in tk.jobs and not _any_run(tk, Run.job == job):
        known = ", ".join(tk.jobs.names()) or "none registered"
        raise UnknownJob(f"unknown job {job!r}: no runs recorded (jobs: {known})")
    if filters.backend is not None:
        known_backends = {"legacy", *OPTIONAL, *tk.backends}
        if filters.backend not in known_backends and not _any_run(
            tk, Run.backend == filters.backend
        ):
            raise UnknownBackend(
                f"unknown backend {filters.backend!r} (known: {', '.join(sorted(known_backends))})"
            )


def _any_run(tk: Toolkit, condition: ColumnElement[bool]) -> bool:
    with tk.db.transaction() as s:
        return bool(s.scalar(select(exists().where(condition))))
