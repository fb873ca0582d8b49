"""The report's queries: aggregation happens in the database wherever it can.

Counts, fallbacks and credit errors are ``GROUP BY`` queries on every database. Percentiles
are PostgreSQL ``percentile_cont`` (one scan; one in-memory sort per group and metric, with the
groups as ``FILTER`` clauses so the rows are never sorted by group first). SQLite has no
percentile aggregate: there the timestamps of started runs are streamed into compact arrays
(16 bytes a run) and the same definition is applied in Python (:func:`toolkit.stats.quantile`).

The rank test needs the observations themselves. They are capped per arm with a deterministic
uniform sample: run ids are random (uuid4), so ``id < cap / n * 2**128`` keeps a fraction
``cap / n`` of an arm's runs, the same ones on every database and on every run of the report.
"""

from __future__ import annotations

import uuid
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, exists, func, literal_column, or_, select
from sqlalchemy.orm import Session, aliased

from toolkit.models import CreditAccount, CreditEntry, LedgerKind, Run, RunStatus
from toolkit.stats import quantile

FRACTIONS = (0.5, 0.95, 0.99)
Key = tuple[str, str]  # (job, backend)
_DONE_BADLY = (RunStatus.FAILED.value, RunStatus.CANCELLED.value)
# Above this many (job, backend) groups one GROUP BY beats one FILTER aggregate per group.
FILTER_GROUPS_MAX = 16


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime

    def where(self) -> ColumnElement[bool]:
        return and_(Run.created_at >= self.since, Run.created_at < self.until)

    @property
    def seconds(self) -> float:
        return (self.until - self.since).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        return {"since": self.since.isoformat(), "until": self.until.isoformat()}


@dataclass
class Latencies:
    """Percentiles per metric (None without observations) and runs over the latency target."""

    queue: tuple[float | None, ...] = (None, None, None)
    duration: tuple[float | None, ...] = (None, None, None)
    queue_over_target: int = 0

    def merged(self, other: Latencies) -> Latencies:
        """Combine the halves computed by two statements (one metric each)."""

        def known(
            a: tuple[float | None, ...], b: tuple[float | None, ...]
        ) -> tuple[float | None, ...]:
            return a if any(v is not None for v in a) else b

        return Latencies(
            known(self.queue, other.queue),
            known(self.duration, other.duration),
            max(self.queue_over_target, other.queue_over_target),
        )


@dataclass
class Samples:
    queue: list[float] = field(default_factory=list)
    duration: list[float] = field(default_factory=list)
    capped: bool = False


def _scope(window: Window, jobs: Sequence[str] | None) -> ColumnElement[bool]:
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
        .where(_scope(window, jobs))
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
    s: Session, window: Window, jobs: Sequence[str] | None
) -> dict[Key, tuple[int, int]]:
    """(failed or cancelled debited runs without a refund, refunds of runs that did not fail).

    The first starts from the few failed/cancelled runs and probes the ledger's
    UNIQUE(run_id, kind) index; the second starts from the refunds.
    """
    debit = aliased(CreditEntry)
    refund = aliased(CreditEntry)
    unrefunded = (
        select(Run.job, Run.backend, func.count())
        .where(
            _scope(window, jobs),
            Run.status.in_(_DONE_BADLY),
            exists().where(debit.run_id == Run.id, debit.kind == LedgerKind.DEBIT.value),
            ~exists().where(refund.run_id == Run.id, refund.kind == LedgerKind.REFUND.value),
        )
        .group_by(Run.job, Run.backend)
    )
    unexplained = (
        select(Run.job, Run.backend, func.count())
        .select_from(CreditEntry)
        .join(Run, Run.id == CreditEntry.run_id)
        .where(
            CreditEntry.kind == LedgerKind.REFUND.value,
            Run.status.not_in(_DONE_BADLY),
            _scope(window, jobs),
        )
        .group_by(Run.job, Run.backend)
    )
    out: dict[Key, tuple[int, int]] = {}
    for job, backend, n in s.execute(unrefunded):
        out[(job, backend)] = (int(n), 0)
    for job, backend, n in s.execute(unexplained):
        out[(job, backend)] = (out.get((job, backend), (0, 0))[0], int(n))
    return out


def negative_balances(s: Session) -> list[str]:
    """Accounts below zero, by the stored balance or by the ledger's history (all time)."""
    signed = case(
        (CreditEntry.kind == LedgerKind.DEBIT.value, -CreditEntry.amount), else_=CreditEntry.amount
    )
    ledger = select(CreditEntry.account).group_by(CreditEntry.account).having(func.sum(signed) < 0)
    stored = select(CreditAccount.account).where(CreditAccount.balance < 0)
    return sorted(set(s.scalars(ledger)) | set(s.scalars(stored)))


# --- latencies --------------------------------------------------------------------------------


def _target_for(targets: dict[str, float], default: float) -> ColumnElement[Any]:
    if not targets:
        return literal_column(repr(float(default)))
    return case({job: float(t) for job, t in targets.items()}, value=Run.job, else_=default)


METRICS = ("queue", "duration")


def latencies(
    s: Session,
    window: Window,
    groups: Iterable[Key],
    targets: dict[str, float],
    default_target: float,
    metrics: Sequence[str] = METRICS,
) -> dict[Key, Latencies]:
    """Percentiles per arm; on PostgreSQL only of ``metrics`` (two statements can share the
    work), on SQLite always both."""
    groups = sorted(set(groups))
    if not groups:
        return {}
    if s.get_bind().dialect.name == "postgresql":
        return _latencies_pg(s, window, groups, targets, default_target, metrics)
    return _latencies_python(s, window, groups, targets, default_target)


def _pg_seconds(later: Any, earlier: Any) -> ColumnElement[float]:
    return func.date_part("epoch", later - earlier)


def _latencies_pg(
    s: Session,
    window: Window,
    groups: list[Key],
    targets: dict[str, float],
    default_target: float,
    metrics: Sequence[str] = METRICS,
) -> dict[Key, Latencies]:
    fractions: ColumnElement[Any] = literal_column("ARRAY[0.5, 0.95, 0.99]::float8[]")
    expressions = {
        "queue": _pg_seconds(Run.started_at, Run.created_at),
        "duration": _pg_seconds(Run.finished_at, Run.started_at),
    }
    over = expressions["queue"] > _target_for(targets, default_target)
    jobs = sorted({job for job, _ in groups})
    scope = and_(window.where(), Run.job.in_(jobs), Run.started_at.is_not(None))

    def aggregates(mine: ColumnElement[bool] | None) -> list[Any]:
        def only(agg: Any, extra: ColumnElement[bool] | None = None) -> Any:
            conditions = [c for c in (mine, extra) if c is not None]
            return agg.filter(and_(*conditions)) if conditions else agg

        out = [only(func.percentile_cont(fractions).within_group(expressions[m])) for m in metrics]
        return [*out, only(func.count(), over)] if "queue" in metrics else out

    def parsed(values: Sequence[Any]) -> Latencies:
        by_metric = dict(zip(metrics, values, strict=False))
        lat = Latencies(
            _triple(by_metric.get("queue")),
            _triple(by_metric.get("duration")),
        )
        if "queue" in metrics:
            lat.queue_over_target = int(values[len(metrics)] or 0)
        return lat

    width = len(metrics) + ("queue" in metrics)
    out: dict[Key, Latencies] = {}
    if len(groups) <= FILTER_GROUPS_MAX:
        columns: list[Any] = []
        for job, backend in groups:
            columns += aggregates(and_(Run.job == job, Run.backend == backend))
        row = s.execute(select(*columns).where(scope)).one()
        for i, key in enumerate(groups):
            out[key] = parsed(row[width * i : width * (i + 1)])
        return out
    stmt = (
        select(Run.job, Run.backend, *aggregates(None)).where(scope).group_by(Run.job, Run.backend)
    )
    wanted = set(groups)
    for row in s.execute(stmt):
        if (row[0], row[1]) in wanted:
            out[(row[0], row[1])] = parsed(row[2:])
    return out


def _triple(values: Sequence[float] | None) -> tuple[float | None, ...]:
    if values is None:
        return (None, None, None)
    return tuple(None if v is None else float(v) for v in values)


def _latencies_python(
    s: Session,
    window: Window,
    groups: list[Key],
    targets: dict[str, float],
    default_target: float,
) -> dict[Key, Latencies]:
    """Stream the three timestamps of started runs; percentiles as percentile_cont defines them."""
    wanted = set(groups)
    queues: dict[Key, array[float]] = {k: array("d") for k in groups}
    durations: dict[Key, array[float]] = {k: array("d") for k in groups}
    jobs = sorted({job for job, _ in groups})
    stmt = select(Run.job, Run.backend, Run.created_at, Run.started_at, Run.finished_at).where(
        window.where(), Run.job.in_(jobs), Run.started_at.is_not(None)
    )
    for job, backend, created, started, finished in s.execute(
        stmt, execution_options={"yield_per": 5000}
    ):
        key = (job, backend)
        if key not in wanted or started is None:
            continue
        queues[key].append((started - created).total_seconds())
        if finished is not None:
            durations[key].append((finished - started).total_seconds())
    out: dict[Key, Latencies] = {}
    for key in groups:
        q = sorted(queues[key])
        d = sorted(durations[key])
        target = targets.get(key[0], default_target)
        over = len(q) - _count_at_most(q, target)
        out[key] = Latencies(
            tuple(quantile(q, f) for f in FRACTIONS), tuple(quantile(d, f) for f in FRACTIONS), over
        )
    return out


def _count_at_most(sorted_values: Sequence[float], limit: float) -> int:
    lo, hi = 0, len(sorted_values)
    while lo < hi:
        mid = (lo + hi) // 2
        if sorted_values[mid] <= limit:
            lo = mid + 1
        else:
            hi = mid
    return lo


# --- rank-test samples ------------------------------------------------------------------------


def samples(s: Session, window: Window, job: str, backend: str, started: int, cap: int) -> Samples:
    """Queue and duration observations of one arm, at most about ``cap`` runs (uniform sample)."""
    where = [window.where(), Run.job == job, Run.backend == backend, Run.started_at.is_not(None)]
    capped = started > cap
    if capped:
        where.append(Run.id < uuid.UUID(int=min(2**128 - 1, (cap << 128) // started)))
    out = Samples(capped=capped)
    if s.get_bind().dialect.name == "postgresql":
        stmt = select(
            _pg_seconds(Run.started_at, Run.created_at),
            _pg_seconds(Run.finished_at, Run.started_at),
        ).where(*where)
        for q, d in s.execute(stmt):
            out.queue.append(float(q))
            if d is not None:
                out.duration.append(float(d))
        return out
    rows = s.execute(select(Run.created_at, Run.started_at, Run.finished_at).where(*where))
    for created, started_at, finished in rows:
        if started_at is None:  # excluded by the query; keeps the types exact
            continue
        out.queue.append((started_at - created).total_seconds())
        if finished is not None:
            out.duration.append((finished - started_at).total_seconds())
    return out
