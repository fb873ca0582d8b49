"""The report's percentiles and rank-test samples: one scan of the started runs per metric.

Runs are grouped by ``Run.arm``, the backend the flag assigned (intent to treat): the queue
time of a run recovered or fallen back onto legacy counts against the arm that lost it.

One definition of the p-th percentile (linear interpolation between the nearest order
statistics, ``percentile_cont``), computed where the store says it is fastest
(``Database.sql.percentiles``). PostgreSQL: ``percentile_cont`` in SQL, one
statement per metric so two connections sort side by side. Each row gets a small arm number
(``CASE`` over job and arm, computed once per row below an ``OFFSET 0`` fence) and every
arm's aggregates are ``FILTER`` clauses on that number, so the rows are never sorted by group
first (above ``FILTER_GROUPS_MAX`` arms one ``GROUP BY`` does). SQLite has no percentile
aggregate: there the timestamps of started runs are streamed into compact arrays (16 bytes a
run) and the same definition is applied in Python (:func:`toolkit.rollout.stats.quantile`).

The rank test needs the observations themselves. They are capped per arm with a deterministic
uniform sample: run ids are random (uuid4), so ``id < cap / n * 2**128`` keeps a fraction
``cap / n`` of an arm's runs, the same ones on every database and on every run of the report.
The sample comes out of the same scan (``array_agg ... FILTER``), not from a query per arm.
"""

from __future__ import annotations

import uuid
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, case, false, func, literal_column, select, true
from sqlalchemy.orm import Session

from toolkit.rollout.queries import Key, Window, scope
from toolkit.rollout.stats import quantile
from toolkit.store.engine import Database
from toolkit.store.models import Run

FRACTIONS = (0.5, 0.95, 0.99)
METRICS = ("queue", "duration")
# Above this many (job, arm) groups one GROUP BY beats one FILTER aggregate per group.
FILTER_GROUPS_MAX = 16


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
    """An arm's rank-test observations (``capped``: a uniform sample of them)."""

    queue: list[float] = field(default_factory=list)
    duration: list[float] = field(default_factory=list)
    capped: bool = False

    def merged(self, other: Samples) -> Samples:
        """Each sample from whichever half has it (each statement fills one metric)."""
        return Samples(
            self.queue or other.queue, self.duration or other.duration, self.capped or other.capped
        )


@dataclass
class Figures:
    """What one scan of the started runs yields: percentiles per arm, samples of some arms."""

    latencies: dict[Key, Latencies] = field(default_factory=dict)
    samples: dict[Key, Samples] = field(default_factory=dict)

    @classmethod
    def empty(cls, groups: Iterable[Key], limits: dict[Key, uuid.UUID | None]) -> Figures:
        """No observations yet for ``groups``; the arms in ``limits`` get samples, capped when
        their limit is an id (None: every run)."""
        return cls(
            {k: Latencies() for k in groups},
            {k: Samples(capped=v is not None) for k, v in limits.items()},
        )

    def put(self, key: Key, slot: tuple[str, str], value: Any) -> None:
        """Store one result cell: ``slot`` is (kind, metric) with kind "pct", "over" or a sample."""
        what, metric = slot
        if what == "pct":
            setattr(self.latencies[key], metric, _triple(value))
        elif what == "over":
            self.latencies[key].queue_over_target = int(value or 0)
        elif key in self.samples:
            getattr(self.samples[key], metric).extend(float(v) for v in value or ())

    def merged(self, other: Figures) -> Figures:
        """Combine the halves computed by two statements (one metric each)."""
        lat, smp = Latencies(), Samples()
        return Figures(
            {
                k: self.latencies.get(k, lat).merged(other.latencies.get(k, lat))
                for k in self.latencies.keys() | other.latencies.keys()
            },
            {
                k: self.samples.get(k, smp).merged(other.samples.get(k, smp))
                for k in self.samples.keys() | other.samples.keys()
            },
        )


def _target_for(targets: dict[str, float], default: float) -> ColumnElement[Any]:
    if not targets:
        return literal_column(repr(float(default)))
    return case({job: float(t) for job, t in targets.items()}, value=Run.job, else_=default)


def sample_limit(started: int, cap: int) -> uuid.UUID | None:
    """The run id below which an arm's rank-test sample lies; None keeps every run."""
    return uuid.UUID(int=min(2**128 - 1, (cap << 128) // started)) if started > cap else None


def latencies(
    s: Session,
    db: Database,
    window: Window,
    jobs: Sequence[str] | None,
    groups: Iterable[Key],
    targets: dict[str, float],
    default_target: float,
    metrics: Sequence[str] = METRICS,
    limits: dict[Key, uuid.UUID | None] | None = None,
) -> Figures:
    """Percentiles per arm, and the rank samples of the arms in ``limits`` (see
    :func:`sample_limit`), from one scan. Where the database has a percentile aggregate
    (``db.sql.percentiles``) only of ``metrics`` (two statements can share the work), otherwise
    always both, streamed. ``jobs`` None: every job in the window."""
    groups = sorted(set(groups))
    if not groups:
        return Figures()
    limits = {k: v for k, v in (limits or {}).items() if k in groups}
    percentiles = db.sql.percentiles(FRACTIONS)
    if percentiles is None:
        return _latencies_python(s, window, jobs, groups, targets, default_target, limits)
    return _latencies_sql(
        s, db, percentiles, window, jobs, groups, targets, default_target, metrics, limits
    )


Slot = tuple[str, str]  # (what, metric): "pct", "over" or "sample"


def _aggregates(
    db: Database,
    percentiles: Callable[[Any], Any],
    metrics: Sequence[str],
    values: dict[str, Any],
    mine: ColumnElement[bool] | None,
    target: Any,
    sampled: ColumnElement[bool] | None,
) -> list[tuple[Slot, Any]]:
    """One arm's aggregates (``mine`` None: the statement groups by arm)."""

    def only(agg: Any, *extra: ColumnElement[bool] | None) -> Any:
        conditions = [c for c in (mine, *extra) if c is not None]
        return agg.filter(and_(*conditions)) if conditions else agg

    out = [(("pct", m), only(percentiles(values[m]))) for m in metrics]
    if "queue" in metrics:
        out.append((("over", "queue"), only(func.count(), values["queue"] > target)))
    if sampled is not None:
        out += [
            (("sample", m), only(db.sql.gathered(values[m]), values[m].is_not(None), sampled))
            for m in metrics
        ]
    return out


def _latencies_sql(
    s: Session,
    db: Database,
    percentiles: Callable[[Any], Any],
    window: Window,
    jobs: Sequence[str] | None,
    groups: list[Key],
    targets: dict[str, float],
    default_target: float,
    metrics: Sequence[str],
    limits: dict[Key, uuid.UUID | None],
) -> Figures:
    expressions = {
        "queue": db.sql.seconds_between(Run.started_at, Run.created_at),
        "duration": db.sql.seconds_between(Run.finished_at, Run.started_at),
    }
    where = and_(scope(window, jobs), Run.started_at.is_not(None))
    out = Figures.empty(groups, limits)
    if len(groups) <= FILTER_GROUPS_MAX:
        arm = case(*((and_(Run.job == j, Run.arm == b), i) for i, (j, b) in enumerate(groups)))
        # OFFSET 0 keeps the subquery: its CASE is computed once per row, not once per FILTER.
        rows = (
            select(arm.label("arm"), Run.id, *(expressions[m].label(m) for m in metrics))
            .where(where)
            .offset(literal_column("0"))
            .subquery()
        )
        slots: list[tuple[Key, Slot]] = []
        columns: list[Any] = []
        for i, key in enumerate(groups):
            for slot, column in _aggregates(
                db,
                percentiles,
                metrics,
                {m: rows.c[m] for m in metrics},
                rows.c.arm == i,
                targets.get(key[0], default_target),
                _below(rows.c.id, limits[key]) if key in limits else None,
            ):
                slots.append((key, slot))
                columns.append(column)
        row = s.execute(select(*columns).select_from(rows)).one()
        for (key, slot), value in zip(slots, row, strict=True):
            out.put(key, slot, value)
        return out
    mine = {k: and_(Run.job == k[0], Run.arm == k[1]) for k in limits}
    sampled = case(*((mine[k], _below(Run.id, v)) for k, v in limits.items()), else_=false())
    aggregates = _aggregates(
        db,
        percentiles,
        metrics,
        expressions,
        None,
        _target_for(targets, default_target),
        sampled if limits else None,
    )
    stmt = (
        select(Run.job, Run.arm, *(column for _, column in aggregates))
        .where(where)
        .group_by(Run.job, Run.arm)
    )
    for job, backend, *values in s.execute(stmt):
        if (job, backend) in out.latencies:
            for (slot, _), value in zip(aggregates, values, strict=True):
                out.put((job, backend), slot, value)
    return out


def _below(run_id: Any, limit: uuid.UUID | None) -> ColumnElement[bool]:
    return run_id < limit if limit is not None else true()


def _triple(values: Sequence[float] | None) -> tuple[float | None, ...]:
    if values is None:
        return (None, None, None)
    return tuple(None if v is None else float(v) for v in values)


def _latencies_python(
    s: Session,
    window: Window,
    jobs: Sequence[str] | None,
    groups: list[Key],
    targets: dict[str, float],
    default_target: float,
    limits: dict[Key, uuid.UUID | None],
) -> Figures:
    """Stream the timestamps of started runs; percentiles by :func:`.stats.quantile`, the
    definition ``percentile_cont`` computes in SQL."""
    queues: dict[Key, array[float]] = {k: array("d") for k in groups}
    durations: dict[Key, array[float]] = {k: array("d") for k in groups}
    out = Figures.empty(groups, limits)
    stmt = select(Run.job, Run.arm, Run.id, Run.created_at, Run.started_at, Run.finished_at).where(
        scope(window, jobs), Run.started_at.is_not(None)
    )
    for job, backend, rid, created, started, finished in s.execute(
        stmt, execution_options={"yield_per": 5000}
    ):
        key = (job, backend)
        if key not in queues or started is None:
            continue
        queue = (started - created).total_seconds()
        duration = None if finished is None else (finished - started).total_seconds()
        queues[key].append(queue)
        if duration is not None:
            durations[key].append(duration)
        below = limits.get(key, rid)  # absent: not sampled; None: every run
        if below is None or rid < below:
            sample = out.samples[key]
            sample.queue.append(queue)
            if duration is not None:
                sample.duration.append(duration)
    for key in groups:
        q = sorted(queues[key])
        d = sorted(durations[key])
        target = targets.get(key[0], default_target)
        out.latencies[key] = Latencies(
            tuple(quantile(q, f) for f in FRACTIONS),
            tuple(quantile(d, f) for f in FRACTIONS),
            len(q) - bisect_right(q, target),
        )
    return out
