"""The batch engine of the maintenance sweeps: selection, keyset pages, locks, audit.

A :class:`Sweep` (see :mod:`toolkit.maintenance.operations`) says which runs it wants, per status,
and what it does to a batch of them. :class:`Sweeper` pages through those runs in
``(created_at, id)`` order with keyset pagination (constant memory, whatever the table size),
and gives every batch one transaction: select the next page, lock it (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, so concurrent invocations split the work; SQLite serializes writers),
re-check each run is still wanted, act, and write the batch's audit entry. A crash leaves each
batch wholly done or not done, and the next invocation, which selects only what is still
wanted, completes the work. A dry run takes the same path, without locks, writes or audit.
The queries are built once per invocation and only their parameters change from batch to
batch; on PostgreSQL the refund and cleanup sweeps lock and act in one statement per batch
(:mod:`toolkit.store.batches`).
"""

from __future__ import annotations

import math
import time
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import Row, Select, and_, bindparam, exists, func, or_, select, union_all
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter, ColumnElement

from toolkit.backends import OPTIONAL
from toolkit.backends.base import BaseBackend
from toolkit.config import LEGACY
from toolkit.dispatch.dispatcher import Dispatcher
from toolkit.errors import UnknownBackend, UnknownJob
from toolkit.jobs import JobRegistry
from toolkit.maintenance.types import (
    BULK_BATCH,
    DEFAULT_BATCH,
    MAX_BATCH,
    SAMPLE,
    Change,
    Filters,
    Report,
)
from toolkit.store.audit import default_actor, record
from toolkit.store.engine import Database
from toolkit.store.models import Run, RunStatus
from toolkit.store.sweeps import SweepStore

MAX_WINDOW = 16  # a page looks at up to MAX_WINDOW * batch_size runs for batch_size wanted ones


@dataclass(frozen=True)
class Parts:
    """What the sweeps use, and nothing else: the Toolkit builds one (``tk.maintenance``)."""

    db: Database  # read: the pages and their locks (writes go through ``sweeps``)
    jobs: JobRegistry
    backends: Mapping[str, BaseBackend]  # the live mapping: a backend enabled later counts
    dispatcher: Dispatcher  # recovery routes and hands runs over again
    sweeps: SweepStore


Progress = Callable[[int], None]


class Sweep(ABC):
    """One maintenance operation: which runs (per status) and what to do with a batch."""

    action: ClassVar[str]
    statuses: ClassVar[tuple[RunStatus, ...]]
    batch_size: ClassVar[int] = DEFAULT_BATCH  # when the filters name none

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self._batches: dict[Select[Any], Any] = {}  # page query: its store page action

    @abstractmethod
    def criteria(self, status: RunStatus) -> Sequence[ColumnElement[bool]]:
        """What makes a run in ``status`` wanted, beside the filters."""

    def columns(self, *, apply: bool) -> Sequence[Any]:
        """Columns the batch rows need beside id, job, backend, status and created_at."""
        return ()

    def parameters(self) -> dict[str, Any]:
        """The sweep's own options, as recorded in its report and audit entries."""
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

    def apply(self, s: Session, rows: Sequence[Row[Any]]) -> list[Change]:
        """Act on a locked batch inside its transaction (a sweep overrides this or
        :meth:`take`)."""
        raise NotImplementedError

    def take(
        self, s: Session, page: Select[Any], keys: dict[str, Any]
    ) -> tuple[Sequence[Row[Any]], list[Change]]:
        """Lock the batch (``page``, the locking SELECT, with its parameters ``keys``) and act
        on it, in ``s``. Returns the rows locked, in page order, and what was done to each.

        Here: the SELECT, then :meth:`apply`. A sweep may do both in one statement on
        PostgreSQL (``page`` as a CTE), where a round trip per step and re-reading what the
        page just read cost more than the work itself. ``page`` is the same object for every
        batch of an invocation (only ``keys`` change), so such a statement is built once.
        """
        rows = s.connection().execute(page, keys).all()
        return rows, self.apply(s, rows)

    def after_commit(self, report: Report, progress: Progress | None = None) -> int:
        """Work that must follow the batch's commit (a hand-over), counted into ``report``;
        returns how many runs it already reported to ``progress`` itself (one by one, as a
        hand-over that runs inline takes a while each)."""
        return 0


Cursor = tuple[datetime, uuid.UUID]


class Sweeper:
    """Runs a sweep over the runs the filters allow, one keyset page per transaction."""

    def __init__(
        self,
        parts: Parts,
        sweep: Sweep,
        filters: Filters,
        *,
        reason: str | None = None,
        actor: str | None = None,
    ) -> None:
        self.parts = parts
        self.sweep = sweep
        self.batch_size: int = filters.batch_size or sweep.batch_size
        self.filters = replace(filters, batch_size=self.batch_size)  # as the audit shows them
        self.reason = reason
        self.actor = actor or default_actor()
        self._statements: dict[tuple[str, bool, bool], Select[Any]] = {}

    # --- selection -------------------------------------------------------------------------

    def _scope(self, status: RunStatus) -> list[ColumnElement[bool]]:
        return [Run.status == status.value, *self.sweep.criteria(status), *self.filters.criteria()]

    def _statement(self, kind: str, *, after: bool, lock: bool = False) -> Select[Any]:
        """The window or page query, built once per invocation: only the parameters differ
        from batch to batch (``after_at``/``after_id``, ``width``, ``end_at``/``end_id``,
        ``n``), so a batch neither builds nor re-keys a statement."""
        key = (kind, after, lock)
        if key not in self._statements:
            build = self._window_end if kind == "window" else self._rows
            self._statements[key] = build(after, lock)
        return self._statements[key]

    def _window_end(self, after: bool, lock: bool) -> Select[Any]:
        """The last of the next ``width`` runs after the cursor in the sweep's statuses,
        wanted or not, and how many there are.

        Only the status, the filters and the keyset decide the window, so the database walks
        the ``(status, created_at)`` index in order and stops after ``width`` rows. (With the
        sweep's own criteria in here, PostgreSQL misjudges how many rows match, sorts every
        remaining candidate on each page, and a sweep turns quadratic.)
        """
        width: BindParameter[int] = bindparam("width")
        branches = []
        for status in self.sweep.statuses:
            query = select(Run.id.label("id"), Run.created_at.label("created_at")).where(
                Run.status == status.value, *self.filters.criteria(), *_after(after)
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

    def _rows(self, after: bool, lock: bool) -> Select[Any]:
        """The first ``n`` wanted runs in the window (cursor, ``(end_at, end_id)``], locked
        unless another invocation holds them."""
        at = bindparam("end_at", type_=Run.created_at.type)
        last: BindParameter[uuid.UUID] = bindparam("end_id")
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
                *_after(after),
                Run.created_at <= at,
                or_(Run.created_at < at, Run.id <= last),
                wanted,
            )
            .order_by(Run.created_at, Run.id)
            .limit(bindparam("n"))
        )
        if lock:  # ignored by SQLite, where BEGIN IMMEDIATE already serializes writers
            query = query.with_for_update(of=Run, skip_locked=True, key_share=True)
        return query

    def count(self) -> int:
        """How many runs the sweep wants now (at most ``limit``): the progress bar's total."""
        branches = [select(Run.id).where(*self._scope(st)) for st in self.sweep.statuses]
        query = select(func.count()).select_from(union_all(*branches).subquery())
        with self.parts.db.transaction() as s:
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
        size, limit = self.batch_size, self.filters.limit
        width = size
        while limit is None or report.changed < limit:
            n = size if limit is None else min(size, limit - report.changed)
            width = max(n, min(width, n * MAX_WINDOW))
            after = cursor is not None
            with self.parts.db.transaction() as s:
                window = self._statement("window", after=after)
                last = s.connection().execute(window, _keys(cursor, width=width)).one_or_none()
                if last is None:
                    break
                end = (last.created_at, last.id)
                if apply and not self.sweep.prepares:
                    rows, changes = self._apply(s, cursor, end, n)
                else:  # to prepare: every wanted run of the window, whichever get locked next
                    page = self._statement("page", after=after)
                    keys = _keys(cursor, end_at=end[0], end_id=end[1], n=n if not apply else width)
                    rows = s.connection().execute(page, keys).all()
            # Outside any transaction: flag evaluations may read the database themselves (on
            # SQLite a second transaction would wait for this one's write lock).
            if not apply:
                changes = self.sweep.preview(rows)
            elif self.sweep.prepares and not rows:
                changes = []
            elif self.sweep.prepares:
                self.sweep.prepare(rows)
                with self.parts.db.transaction() as s:
                    rows, changes = self._apply(s, cursor, end, n)
            ticked = 0
            if apply:
                report.batches += any(c.skipped is None for c in changes)
                ticked = self.sweep.after_commit(report, progress)
            # A full batch resumes right after its last run; otherwise after the whole window.
            cursor = (rows[-1].created_at, rows[-1].id) if len(rows) == n else end
            report.add(changes)
            if progress is not None and len(rows) > ticked:
                progress(len(rows) - ticked)
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
        page = self._statement("page", after=cursor is not None, lock=True)
        keys = _keys(cursor, end_at=end[0], end_id=end[1], n=n)
        rows, changes = self.sweep.take(s, page, keys)
        done = [c for c in changes if c.skipped is None]
        if done:
            self._audit(s, done)
        return rows, changes

    def _audit(self, s: Session, done: Sequence[Change]) -> None:
        """One entry per batch, in the batch's transaction: it commits with the change."""
        jobs, statuses, backends, changes = set(), Counter[str](), Counter[str](), Counter[str]()
        credits = 0
        for c in done:  # one pass: a batch may hold thousands of runs
            jobs.add(c.job)
            statuses[c.status] += 1
            backends[c.backend] += 1
            changes[c.change] += 1
            credits += c.credits
        record(
            s,
            actor=self.actor,
            action=f"maintenance.{self.sweep.action}",
            target=", ".join(sorted(jobs))[:200],
            before={"statuses": dict(statuses), "backends": dict(backends)},
            after={
                "runs": len(done),
                "credits": credits,
                "changes": dict(changes),
                "run_ids": [str(c.run_id) for c in done],
                "filters": self.filters.as_dict(),
                "parameters": self.sweep.parameters(),
            },
            reason=self.reason,
        )


def _after(after: bool) -> list[ColumnElement[bool]]:
    """Keyset condition: strictly after the cursor ``(after_at, after_id)``, if there is one."""
    if not after:
        return []
    at = bindparam("after_at", type_=Run.created_at.type)
    return [Run.created_at >= at, or_(Run.created_at > at, Run.id > bindparam("after_id"))]


def _keys(cursor: Cursor | None, **params: Any) -> dict[str, Any]:
    if cursor is not None:
        params["after_at"], params["after_id"] = cursor
    return params


def check_filters(tk: Parts, filters: Filters) -> None:
    """Unknown job or backend names are bad input (exit 2), not an empty sweep.

    A name is known if the app registers it or if any run carries it, so the sweeps also work
    without ``--app`` and for jobs or backends that were removed since.
    """
    job = filters.job
    if job is not None and job not in tk.jobs and not _any_run(tk, Run.job == job):
        known = ", ".join(tk.jobs.names()) or "none registered"
        raise UnknownJob(f"unknown job {job!r}: no runs recorded (jobs: {known})")
    if filters.backend is not None:
        known_backends = {LEGACY, *OPTIONAL, *tk.backends}
        if filters.backend not in known_backends and not _any_run(
            tk, Run.backend == filters.backend
        ):
            raise UnknownBackend(
                f"unknown backend {filters.backend!r} (known: {', '.join(sorted(known_backends))})"
            )


def _any_run(tk: Parts, condition: ColumnElement[bool]) -> bool:
    with tk.db.transaction() as s:
        return bool(s.scalar(select(exists().where(condition))))


__all__ = [
    "BULK_BATCH",
    "DEFAULT_BATCH",
    "MAX_BATCH",
    "SAMPLE",
    "Change",
    "Filters",
    "Parts",
    "Progress",
    "Report",
    "Sweep",
    "Sweeper",
    "check_filters",
]
