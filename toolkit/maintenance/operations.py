"""The three maintenance sweeps: recover stuck runs, clean up orphans, refund what is owed.

Each one only says which runs it wants and what to do with a batch; paging, locking, the
per-batch transaction and the audit entry are :mod:`toolkit.maintenance.sweep`'s. They work through
the dispatcher and the store (:class:`toolkit.store.sweeps.SweepStore`: refund and cleanup
act on a locked page the way the database does it best), so they treat every backend alike.

- **recover**: runs QUEUED longer than ``older_than`` without being started (counted from the
  moment they became startable: dispatch, retry due time, or last recovery), or RUNNING with a
  heartbeat older than that, and recovered fewer than ``max_recoveries`` times, are routed
  again by the flag *now* and handed over again under the same run id.
- **cleanup**: the same stale runs that recovery gave up on (``recoveries >= max``) are failed
  with a reason, a dead letter and their refund.
- **refund**: every FAILED or CANCELLED run with a debit and no refund gets its refund.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, Select, exists, func, select
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.elements import ColumnElement

from toolkit.config import parse_duration
from toolkit.dispatch.dispatcher import Reroute, Route
from toolkit.errors import AppLoadError, InvalidInput
from toolkit.maintenance.sweep import (
    BULK_BATCH,
    Change,
    Filters,
    Parts,
    Progress,
    Report,
    Sweep,
    Sweeper,
    check_filters,
)
from toolkit.store.models import CreditEntry, LedgerKind, Run, RunStatus
from toolkit.store.sweeps import PageAction

DEFAULT_OLDER_THAN = "15m"
DEFAULT_MAX_RECOVERIES = 3
QUEUED = RunStatus.QUEUED.value  # where recovery moves a run, on its new route
NOT_SUBMITTED = "not submitted:"  # how the dispatcher's error starts when no backend took a run

_debit = aliased(CreditEntry, name="debit")
_refund = aliased(CreditEntry, name="refund")

HAS_DEBIT = exists().where(_debit.run_id == Run.id, _debit.kind == LedgerKind.DEBIT.value)
NOT_REFUNDED = ~exists().where(_refund.run_id == Run.id, _refund.kind == LedgerKind.REFUND.value)
# The credits a run is still owed: its debit, unless a refund exists already.
OWED = (
    select(_debit.amount)
    .where(
        _debit.run_id == Run.id,
        _debit.kind == LedgerKind.DEBIT.value,
        ~exists().where(_refund.run_id == _debit.run_id, _refund.kind == LedgerKind.REFUND.value),
    )
    .scalar_subquery()
    .label("owed")
)


class _PagedSweep(Sweep):
    """A sweep whose batch is one of the store's page actions (refund, cleanup)."""

    def columns(self, *, apply: bool) -> Sequence[Any]:
        return self.parts.sweeps.page_columns() if apply else [OWED]

    def page_action(self, page: Select[Any]) -> PageAction:
        """The store's action on ``page``; built once per invocation (one page query)."""
        raise NotImplementedError

    def take(
        self, s: Session, page: Select[Any], keys: dict[str, Any]
    ) -> tuple[Sequence[Row[Any]], list[Change]]:
        if page not in self._batches:
            self._batches[page] = self.page_action(page)
        rows, done = self._batches[page].take(s, keys)
        return rows, self._changes(rows, done)

    def _changes(self, rows: Sequence[Row[Any]], done: dict[uuid.UUID, int]) -> list[Change]:
        raise NotImplementedError


# --- refund ----------------------------------------------------------------------------------


class RefundSweep(_PagedSweep):
    action = "refund"
    batch_size = BULK_BATCH
    REASON = "refund sweep: run failed or cancelled"
    statuses = (RunStatus.FAILED, RunStatus.CANCELLED)

    def criteria(self, status: RunStatus) -> Sequence[ColumnElement[bool]]:
        """Not refunded yet, then debited: most failed runs were refunded, so ask that first."""
        return [NOT_REFUNDED, HAS_DEBIT]  # most failed runs are refunded already: ask that first

    def preview(self, rows: Sequence[Row[Any]]) -> list[Change]:
        """Each row's refund as it stands now (the debit still owed); nothing is written."""
        return [Change.of(r, "refund", r.owed or 0) for r in rows]

    def page_action(self, page: Select[Any]) -> PageAction:
        """The store's refund of a locked page, each run's debit at most once."""
        return self.parts.sweeps.refunds(page, reason=self.REASON)

    def _changes(self, rows: Sequence[Row[Any]], done: dict[uuid.UUID, int]) -> list[Change]:
        return [
            Change.of(r, "refund", done[r.id])
            if r.id in done
            else Change.of(r, "refund", skipped="refunded meanwhile")
            for r in rows
        ]


# --- stale runs: recover and cleanup -----------------------------------------------------------


def stale(status: RunStatus, cutoff: datetime) -> ColumnElement[bool]:
    """No progress since ``cutoff``: not started since it became startable, or no heartbeat."""
    if status is RunStatus.QUEUED:
        return func.coalesce(Run.next_attempt_at, Run.created_at) < cutoff
    return func.coalesce(Run.heartbeat_at, Run.started_at, Run.created_at) < cutoff


class _StaleSweep(Sweep):
    statuses = (RunStatus.QUEUED, RunStatus.RUNNING)

    def __init__(self, parts: Parts, *, older_than: str | float, max_recoveries: int) -> None:
        super().__init__(parts)
        if isinstance(max_recoveries, bool) or not 0 <= max_recoveries <= 1000:
            raise InvalidInput(f"max recoveries must be from 0 to 1000, not {max_recoveries!r}")
        self.older_than = older_than
        self.seconds = parse_duration(older_than, what="--older-than")
        self.max_recoveries = max_recoveries
        # One cutoff for the whole invocation: the selection and every re-check agree.
        self.cutoff = datetime.now(UTC) - timedelta(seconds=self.seconds)

    def parameters(self) -> dict[str, Any]:
        return {
            "older_than": str(self.older_than),
            "max_recoveries": self.max_recoveries,
            "cutoff": self.cutoff.isoformat(),
        }


class CleanupSweep(_StaleSweep, _PagedSweep):
    action = "cleanup"
    batch_size = BULK_BATCH

    def __init__(self, parts: Parts, *, reason: str | None = None, **options: Any) -> None:
        super().__init__(parts, **options)
        self.reason = reason

    def criteria(self, status: RunStatus) -> Sequence[ColumnElement[bool]]:
        """Stale (see :func:`stale`) and recovered ``max_recoveries`` times: recovery gave up."""
        return [Run.recoveries >= self.max_recoveries, stale(status, self.cutoff)]

    def errors(self) -> dict[RunStatus, str]:
        """The error each failed run records, per status it was stuck in; names the cutoff and
        the operator's reason."""
        gave_up = f"recovery gave up after {self.max_recoveries} re-dispatches"
        suffix = f" ({self.reason})" if self.reason else ""
        return {
            status: f"orphaned: {status.value} with no progress for over "
            f"{self.older_than}; {gave_up}{suffix}"
            for status in self.statuses
        }

    def preview(self, rows: Sequence[Row[Any]]) -> list[Change]:
        """Each row's move to FAILED and the credits its refund would return; nothing is written."""
        return [
            Change.of(r, f"{r.status} → FAILED", r.owed or 0, to_status=RunStatus.FAILED.value)
            for r in rows
        ]

    def refund_reason(self) -> str:
        """The ledger reason of the cleanup's refunds, with the operator's reason if given."""
        return "run failed: orphaned, recovery gave up" + (
            f" ({self.reason})" if self.reason else ""
        )

    def page_action(self, page: Select[Any]) -> PageAction:
        """The store's failure of a locked page: FAILED, dead letter and refund per stuck run."""
        return self.parts.sweeps.failures(page, self.errors(), reason=self.refund_reason())

    def _changes(self, rows: Sequence[Row[Any]], failed: dict[uuid.UUID, int]) -> list[Change]:
        label = {st.value: f"{st.value} → FAILED" for st in self.statuses}
        return [
            Change.of(r, label[r.status], failed[r.id], to_status=RunStatus.FAILED.value)
            if r.id in failed
            else Change.of(r, label[r.status], skipped="moved meanwhile")
            for r in rows
        ]


class RecoverSweep(_StaleSweep):
    action = "recover"
    prepares = True  # routes are evaluated before the batch's transaction
    NOT_REGISTERED = "job not registered in this app"

    def __init__(self, parts: Parts, **options: Any) -> None:
        super().__init__(parts, **options)
        if not len(parts.jobs):
            raise AppLoadError(
                "recover routes runs again through your jobs' flags: "
                "pass --app module:attr or set TOOLKIT_APP"
            )
        self._routes: dict[uuid.UUID, Route] = {}
        self._pending: list[Reroute] = []

    def criteria(self, status: RunStatus) -> Sequence[ColumnElement[bool]]:
        """Stale (see :func:`stale`) and recovered fewer than ``max_recoveries`` times."""
        return [Run.recoveries < self.max_recoveries, stale(status, self.cutoff)]

    def columns(self, *, apply: bool) -> Sequence[Any]:
        """What :meth:`Dispatcher.reroute_in` matches on: targeting key, recoveries, attempts."""
        return [Run.targeting_key, Run.recoveries, Run.attempts]

    def _route(self, row: Row[Any]) -> Route | None:
        if row.job not in self.parts.jobs:
            return None
        return self.parts.dispatcher.route(self.parts.jobs.get(row.job), row.targeting_key)

    def preview(self, rows: Sequence[Row[Any]]) -> list[Change]:
        """The backend the flag would pick for each row now; runs of jobs this app does not
        register are skipped."""
        changes = []
        for r in rows:
            route = self._route(r)
            if route is None:
                changes.append(Change.of(r, "→ ?", skipped=self.NOT_REGISTERED))
            else:
                changes.append(
                    Change.of(r, f"→ {route.backend}", to_status=QUEUED, to_backend=route.backend)
                )
        return changes

    def prepare(self, rows: Sequence[Row[Any]]) -> None:
        """Evaluate the flag for the batch before its transaction: a provider that reads the
        database would wait on the batch's write lock (SQLite)."""
        self._routes = {r.id: route for r in rows if (route := self._route(r)) is not None}

    def apply(self, s: Session, rows: Sequence[Row[Any]]) -> list[Change]:
        """Move each locked row back to QUEUED on its new route, in ``s``; a row that moved
        meanwhile is skipped. The hand-over waits for :meth:`after_commit`."""
        changes = []
        for r in rows:
            if r.job not in self.parts.jobs:
                changes.append(Change.of(r, "→ ?", skipped=self.NOT_REGISTERED))
                continue
            route = self._routes.get(r.id)
            reroute = None
            if route is not None:
                reroute = self.parts.dispatcher.reroute_in(
                    s,
                    r.id,
                    status=r.status,
                    recoveries=r.recoveries,
                    attempts=r.attempts,
                    route=route,
                )
            if reroute is None:  # it moved, or became stuck after the routes were evaluated
                changes.append(Change.of(r, "→ ?", skipped="moved meanwhile"))
                continue
            self._pending.append(reroute)
            backend = reroute.route.backend
            changes.append(Change.of(r, f"→ {backend}", to_status=QUEUED, to_backend=backend))
        return changes

    def after_commit(self, report: Report, progress: Progress | None = None) -> int:
        """Hand the batch over once its moves committed, ticking ``progress`` per run (one the
        legacy executor runs inline takes as long as the job); a crash before leaves them
        QUEUED (and stale again after ``older_than``), so the next invocation retries them."""
        handed = 0
        while self._pending:
            handle = self.parts.dispatcher.resubmit(self._pending.pop(0))
            handed += 1
            report.handovers[(handle.backend, handle.fallback_from, handle.status)] += 1
            if handle.status == RunStatus.FAILED.value and (handle.error or "").startswith(
                NOT_SUBMITTED
            ):
                report.outcomes["not submitted: failed and refunded (fallback policy)"] += 1
            elif handle.fallback_from:
                report.outcomes[f"fell back from {handle.fallback_from} to {handle.backend}"] += 1
            else:
                report.outcomes[f"submitted to {handle.backend}"] += 1
            if progress is not None:
                progress(1)
        return handed


# --- entry points ----------------------------------------------------------------------------


def sweeper(
    tk: Parts,
    action: str,
    filters: Filters | None = None,
    *,
    reason: str | None = None,
    actor: str | None = None,
    older_than: str | float = DEFAULT_OLDER_THAN,
    max_recoveries: int = DEFAULT_MAX_RECOVERIES,
) -> Sweeper:
    """A ready sweep, its input checked (bad input raises before anything changes).

    ``tk`` is what the sweeps use (:class:`~toolkit.maintenance.sweep.Parts`): the Toolkit
    builds it as ``tk.maintenance``."""
    filters = filters or Filters()
    sweep: Sweep
    if action == "refund":
        sweep = RefundSweep(tk)
    elif action == "cleanup":
        sweep = CleanupSweep(
            tk, reason=reason, older_than=older_than, max_recoveries=max_recoveries
        )
    elif action == "recover":
        sweep = RecoverSweep(tk, older_than=older_than, max_recoveries=max_recoveries)
    else:
        raise InvalidInput(f"unknown maintenance action {action!r}")
    check_filters(tk, filters)
    return Sweeper(tk, sweep, filters, reason=reason, actor=actor)


def refund(
    tk: Parts, filters: Filters | None = None, *, apply: bool = False, **options: Any
) -> Report:
    """Refund every FAILED or CANCELLED run that has a debit and no refund."""
    return sweeper(tk, "refund", filters, **options).run(apply=apply)


def cleanup_orphans(
    tk: Parts, filters: Filters | None = None, *, apply: bool = False, **options: Any
) -> Report:
    """Fail, dead-letter and refund the stale runs that recovery gave up on."""
    return sweeper(tk, "cleanup", filters, **options).run(apply=apply)


def recover(
    tk: Parts, filters: Filters | None = None, *, apply: bool = False, **options: Any
) -> Report:
    """Route stale runs again by the current flag and hand them over under the same id."""
    return sweeper(tk, "recover", filters, **options).run(apply=apply)
