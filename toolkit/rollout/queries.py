"""The report's queries: aggregation happens in the database wherever it can.

Every figure is grouped by ``Run.arm``, the backend the flag assigned at dispatch, never by
``Run.backend``, where the run ended up: a run a backend refused (fallback) or lost (recovered
onto another backend) counts against the arm that had it (intent to treat).

Counts, fallbacks and recoveries elsewhere are one ``GROUP BY``; the two credit-error counts
are one statement that starts from the few failed runs and the refunds, not from every run;
negative balances are one ``GROUP BY`` over the ledger. Percentiles and rank samples:
:mod:`toolkit.rollout.latency`.
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

Key = tuple[str, str]  # (job, arm): the arm is the backend the flag assigned
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


def counts(s: Session, window: Window, jobs: Sequence[str] | None) -> dict[Key, dict[str, int]]:
    """One GROUP BY on (job, arm) (parallel on PostgreSQL): status counts, retries, timeouts,
    starts, missing heartbeats, and the runs the arm did not keep: ``fallbacks`` (refused at
    hand-over, ``fallback_from`` set) and ``recovered`` (moved by recovery onto another backend).
    """
    started = Run.started_at.is_not(None)
    fell_back = Run.fallback_from.is_not(None)
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
        "fallbacks": func.count().filter(fell_back),
        "recovered": func.count().filter(and_(~fell_back, Run.backend != Run.arm)),
    }
    stmt = (
        select(Run.job, Run.arm, *(c.label(n) for n, c in columns.items()))
        .where(scope(window, jobs))
        .group_by(Run.job, Run.arm)
    )
    return {
        (row.job, row.arm): {name: int(row._mapping[name]) for name in columns}
        for row in s.execute(stmt)
    }


def credit_errors(
    s: Session, db: Database, window: Window, jobs: Sequence[str] | None
) -> dict[Key, tuple[int, int]]:
    """(failed or cancelled debited runs without a refund, refunds of runs that did not fail)
    per (job, arm).

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
            Run.arm,
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
        .group_by(Run.job, Run.arm)
    )
    return {
        (job, arm): (int(unrefunded), int(unexplained))
        for job, arm, unrefunded, unexplained in s.execute(stmt)
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
