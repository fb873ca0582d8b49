"""Per-arm figures (one arm of one job over a window), read from one consistent snapshot.

An arm is the backend the flag assigned at dispatch (``Run.arm``), not the one a run ended on:
runs a backend refused or lost count against it (intent to treat), and ``fallbacks`` and
``recovered`` say how many of its runs finished elsewhere.

Shared by the report (:mod:`.report`) and the rollout controller (:mod:`.controller`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from toolkit.config import LEGACY
from toolkit.rollout import latency as lat
from toolkit.rollout import queries as q
from toolkit.rollout.gates import ArmCounts
from toolkit.rollout.latency import Latencies, Samples
from toolkit.rollout.plan import RolloutPlan
from toolkit.rollout.queries import Key, Window
from toolkit.rollout.stats import Interval, wilson
from toolkit.store.engine import Database
from toolkit.store.snapshot import snapshot


@dataclass
class ArmStats:
    """One arm (the backend the flag assigned) of one job over the window."""

    job: str
    backend: str
    runs: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    queued: int = 0
    running: int = 0
    retries: int = 0
    timeouts: int = 0
    started: int = 0
    missing_heartbeats: int = 0
    fallbacks: int = 0  # refused at hand-over, run on legacy instead
    recovered: int = 0  # moved by recovery onto another backend
    unrefunded: int = 0
    refunds_without_failure: int = 0
    latencies: Latencies = field(default_factory=Latencies)

    @property
    def finished(self) -> int:
        """Completed, failed or cancelled: the runs the success rate is over."""
        return self.completed + self.failed + self.cancelled

    @property
    def in_flight(self) -> int:
        """Queued or running: what a rollback leaves to drain."""
        return self.queued + self.running

    @property
    def credit_errors(self) -> int:
        """Debited failed/cancelled runs with no refund, plus refunds of runs that did not fail."""
        return self.unrefunded + self.refunds_without_failure

    @property
    def success(self) -> Interval | None:
        """Success rate over finished runs, with its 95 % Wilson interval; None before any ends."""
        return wilson(self.completed, self.finished)

    def counts(self) -> ArmCounts:
        """What the gates read from this arm (queue p95 included)."""
        return ArmCounts(
            finished=self.finished,
            completed=self.completed,
            started=self.started,
            queue_p95=self.latencies.queue[1],
            queue_over_target=self.latencies.queue_over_target,
            credit_errors=self.credit_errors,
            timeouts=self.timeouts,
            missing_heartbeats=self.missing_heartbeats,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: counts, success rate and interval, queue and duration percentiles."""
        ci = self.success
        return {
            "backend": self.backend,
            "arm": self.backend,
            "runs": self.runs,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "in_flight": self.in_flight,
            "success_rate": ci.estimate if ci else None,
            "success_ci95": [ci.low, ci.high] if ci else None,
            "queue_seconds": _percentiles(self.latencies.queue),
            "duration_seconds": _percentiles(self.latencies.duration),
            "retries": self.retries,
            "timeouts": self.timeouts,
            "fallbacks": self.fallbacks,
            "recovered_elsewhere": self.recovered,
            "credit_errors": {
                "unrefunded": self.unrefunded,
                "refunds_without_failure": self.refunds_without_failure,
            },
            "started": self.started,
            "missing_heartbeats": self.missing_heartbeats,
        }


def _percentiles(values: tuple[float | None, ...]) -> dict[str, float | None]:
    return dict(zip(("p50", "p95", "p99"), values, strict=True))


@dataclass
class Collected:
    arms: dict[Key, ArmStats]
    samples: dict[Key, Samples] = field(default_factory=dict)
    negative_balances: list[str] = field(default_factory=list)


def collect(
    db: Database,
    window: Window,
    jobs: Sequence[str] | None,
    targets: dict[str, float],
    *,
    sample_cap: int | None = None,
    balances: bool = False,
) -> Collected:
    """Every figure over the window from one consistent read.

    The credit checks (and balances) need no arm, so they start at once on a worker connection
    while the lead counts the arms. Then, where the snapshot reads in parallel (PostgreSQL), the
    worker pool scans the started runs for queue times while the lead does the same for
    durations: two server processes sort at once, and each scan also yields its half of the
    rank samples.
    ``sample_cap`` None skips the rank samples; ``balances`` adds the negative balances.
    """
    with snapshot(db, workers=2) as snap:
        s = snap.session
        credit = snap.submit(lambda s2: _credit(s2, db, window, jobs, balances))
        counted = q.counts(s, window, jobs)
        arms = {k: _arm(k, c) for k, c in counted.items()}
        started = {k: a.started for k, a in arms.items() if a.started}
        default = RolloutPlan().target_seconds
        compared = _compared(arms) if sample_cap else []
        limits = {k: lat.sample_limit(n, sample_cap or 0) for k, n in started.items()}
        limits = {k: v for k, v in limits.items() if k in compared}

        def scan(metrics: Sequence[str]) -> Callable[[Session], lat.Figures]:
            return lambda s2: lat.latencies(
                s2, db, window, jobs, started, targets, default, metrics, limits
            )

        if snap.parallel:
            queue = snap.submit(scan(("queue",)))
            figures = scan(("duration",))(s).merged(queue.result())
        else:
            figures = scan(lat.METRICS)(s)
        for key, latencies in figures.latencies.items():
            arms[key].latencies = latencies
        out = Collected(arms, {k: figures.samples.get(k, Samples()) for k in compared})
        credit_errors, out.negative_balances = credit.result()
        for key, (unrefunded, unexplained) in credit_errors.items():
            arm = arms.setdefault(key, ArmStats(*key))
            arm.unrefunded, arm.refunds_without_failure = unrefunded, unexplained
    return out


def _credit(
    s: Session, db: Database, window: Window, jobs: Sequence[str] | None, balances: bool
) -> tuple[dict[Key, tuple[int, int]], list[str]]:
    return q.credit_errors(s, db, window, jobs), q.negative_balances(s) if balances else []


def _compared(arms: dict[Key, ArmStats]) -> list[Key]:
    """The arms of jobs that have a legacy arm and at least one other."""
    jobs = {j for j, b in arms if b == LEGACY}
    paired = {j for j, b in arms if b != LEGACY and j in jobs}
    return sorted(k for k in arms if k[0] in paired)


def _arm(key: Key, c: dict[str, int]) -> ArmStats:
    return ArmStats(
        key[0],
        key[1],
        runs=c["runs"],
        completed=c["completed"],
        failed=c["failed"],
        cancelled=c["cancelled"],
        queued=c["queued"],
        running=c["running"],
        retries=c["retries"],
        timeouts=c["timeouts"],
        started=c["started"],
        missing_heartbeats=c["missing_heartbeats"],
        fallbacks=c["fallbacks"],
        recovered=c["recovered"],
    )
