"""The report's queries: aggregation happens in the database wherever it can.

Counts and fallbacks are one ``GROUP BY``; the two credit-error counts are one statement that
starts from the few failed runs and the refunds, not from every run; negative balances are one
``GROUP BY`` over the ledger. Percentiles and rank samples: :mod:`toolkit.rollout.latency`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from toolkit.store.engine import Database
from toolkit.store.models import CreditAccount, CreditEntry, LedgerKind, Run, RunStatus

Key = tuple[str, str]  # (job, backend)
_DONE_BADLY = (RunStatus.FAILED.value, RunStatus.CANCELLED.value)


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime

    def where(self) -> ColumnElement[bool]:
        """Runs created in the window: ``since`` included, ``until`` excluded."""
        return and_(Run.created_at >= self.since, Run.created_at < self.until)

    @property
    def seconds(self) -> float:
        """The window's length in seconds."""
        return (self.until - self.since).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: both bounds in ISO 8601."""
        return {"since": self.since.isoformat(), "until": self.until.isoformat()}


def scope(window: Window, jobs: Sequence[str] | None) -> ColumnElement[bool]:
    """The window's runs, of ``jobs`` only when given (None: every job)."""
    where = window.where()
    return and_(where, Run.job.in_(jobs)) if jobs is not None else where


def _is_timeout() -> ColumnElement[bool]:
    """Failed by a time limit: the toolkit's JobTimeout, or an engine's own wording."""
    return and_(
        Run.status == RunStatus.FAILED.value,
        or_(Run.error.like("%JobTimeout%"), func.lower(Run.error).like("%time limit%")),
    )


def counts(
    s: Session, window: Window, jobs: Sequence[str] | None
) -> tuple[dict[Key, dict[str, int]], dict[Key, int]]:
    """One GROUP BY (parallel on PostgreSQL): status counts, retries, timeouts, starts, missing
    heartbeats; and fallbacks, by also grouping on ``fallback_from`` (a handful of values).

    Returns (counts per arm, fallbacks keyed by the backend the runs left).
    """
    started = Run.started_at.is_not(None)
    columns = {
        "runs": func.count(),
        **{
            status.value.lower(): func.count().filter(Run.status == status.value)
            for status in RunStatus
        },
        "retries": func.count().filter(Run.attempts > 1),
        "timeouts": func.count().filter(_is_timeout()),
        "started": func.count().filter(started),
        "missing_heartbeats": func.count().filter(and_(started, Run.heartbeat_at.is_(None))),
    }
    stmt = (
        select(Run.job, Run.backend, Run.fallback_from, *(c.label(n) for n, c in columns.items()))
        .where(scope(window, jobs))
        .group_by(Run.job, Run.backend, Run.fallback_from)
    )
    arms: dict[Key, dict[str, int]] = {}
    left: dict[Key, int] = {}
    for row in s.execute(stmt):
        arm = arms.setdefault((row.job, row.backend), dict.fromkeys(columns, 0))
        for name in columns:
            arm[name] += int(row._mapping[name])
        if row.fallback_from is not None:
            key = (row.job, str(row.fallback_from))
            left[key] = left.get(key, 0) + int(row.runs)
    return arms, left


def credit_errors(
    s: Session, db: Database, window: Window, jobs: Sequence[str] | None
) -> dict[Key, tuple[int, int]]:
    """(failed or cancelled debited runs without a refund, refunds of runs that did not fail).

    One statement: the runs it reads are the failed/cancelled ones (status index) and the
    refunded ones (primary key, ``= ANY(ARRAY(...))`` on PostgreSQL), a few percent of the
    window; each is joined to the refunds (one scan of the ledger), and only a failed run
    without a refund probes the ledger's UNIQUE(run_id, kind) index for its debit.
    """
    refunds = (
        select(CreditEntry.run_id)
        .where(CreditEntry.kind == LedgerKind.REFUND.value, CreditEntry.run_id.is_not(None))
        .cte("refunds")
    )
    debit = aliased(CreditEntry)
    bad = Run.status.in_(_DONE_BADLY)
    refunded = refunds.c.run_id.is_not(None)
    in_refunds = db.sql.in_subquery(Run.id, select(refunds.c.run_id))
    stmt = (
        select(
            Run.job,
            Run.backend,
            func.count().filter(
                and_(
                    bad,
                    ~refunded,
                    exists().where(debit.run_id == Run.id, debit.kind == LedgerKind.DEBIT.value),
                )
            ),
            func.count().filter(and_(~bad, refunded)),
        )
        .select_from(Run)
        .outerjoin(refunds, refunds.c.run_id == Run.id)
        .where(scope(window, jobs), or_(bad, in_refunds))
        .group_by(Run.job, Run.backend)
    )
    return {
        (job, backend): (int(unrefunded), int(unexplained))
        for job, backend, unrefunded, unexplained in s.execute(stmt)
        if unrefunded or unexplained
    }


def negative_balances(s: Session) -> list[str]:
    """Accounts below zero, by the stored balance or by the ledger's history (all time)."""
    signed = case(
        (CreditEntry.kind == LedgerKind.DEBIT.value, -CreditEntry.amount), else_=CreditEntry.amount
    )
    ledger = select(CreditEntry.account).group_by(CreditEntry.account).having(func.sum(signed) < 0)
    stored = select(CreditAccount.account).where(CreditAccount.balance < 0)
    return sorted(set(s.scalars(ledger)) | set(s.scalars(stored)))
