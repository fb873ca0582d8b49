"""``toolkit report``: old path versus new backend, per job, over a time window.

Per job and backend: runs by status, success rate with its Wilson interval, latencies, retries,
timeouts, fallbacks and credit errors. Per new backend against legacy: the success-rate
difference (Newcombe interval, z-test p-value) and Mann-Whitney tests of queue-to-start and
duration. Then the migration's scorecard, PASS / FAIL / INCONCLUSIVE with the number behind it.

The success rate is completed / finished (completed + failed + cancelled); runs still queued or
running are "in flight" and count nowhere else. Runs are compared by the arm the flag assigned
(``Run.arm``, intent to treat): a run that fell back to legacy, or that recovery moved onto
another backend, counts on the arm that lost it, under "fallbacks" or "recovered" there, with
its outcome and its queue time; never silently as legacy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from toolkit.config import LEGACY
from toolkit.errors import InvalidInput, UnknownJob
from toolkit.jobs import JobRegistry
from toolkit.rollout.arms import ArmStats, collect
from toolkit.rollout.gates import Gate, gates, pct
from toolkit.rollout.latency import Samples
from toolkit.rollout.plan import RolloutPlan, plan_for
from toolkit.rollout.queries import Key, Window
from toolkit.rollout.stats import (
    Interval,
    RankTest,
    ZTest,
    mann_whitney,
    newcombe,
    two_proportion_z,
)
from toolkit.store.engine import Database
from toolkit.store.models import Run, utcnow

__all__ = ["LEGACY", "ArmStats", "Comparison", "JobReport", "Report", "build", "scorecard"]

SAMPLE_CAP = 10_000  # observations per arm for the rank tests (a uniform sample above)
DEFAULT_WINDOW = timedelta(hours=24)


@dataclass
class Comparison:
    """A new backend against legacy on the same job and window."""

    backend: str
    difference: Interval | None  # success rate new - legacy, 95 % Newcombe
    z_test: ZTest | None
    queue_test: RankTest | None
    duration_test: RankTest | None
    sampled: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, legacy as the baseline; ``p_new_slower`` is the rank test's superiority."""
        d = self.difference
        return {
            "backend": self.backend,
            "baseline": LEGACY,
            "success_difference": d.estimate if d else None,
            "success_difference_ci95": [d.low, d.high] if d else None,
            "p_value": self.z_test.p_value if self.z_test else None,
            "queue_rank_test": _rank(self.queue_test),
            "duration_rank_test": _rank(self.duration_test),
            "rank_samples_capped": self.sampled,
        }


def _rank(test: RankTest | None) -> dict[str, Any] | None:
    if test is None:
        return None
    return {
        "u": test.u,
        "z": test.z,
        "p_value": test.p_value,
        "p_new_slower": test.superiority,
        "n_new": test.n_x,
        "n_legacy": test.n_y,
    }


@dataclass
class JobReport:
    job: str
    new_backend: str | None
    plan: RolloutPlan
    arms: list[ArmStats]
    comparisons: list[Comparison]
    scorecard: list[Gate]

    def arm(self, backend: str | None) -> ArmStats:
        """The arm of ``backend``; an empty one when it had no runs in the window."""
        found = next((a for a in self.arms if a.backend == backend), None)
        return found or ArmStats(self.job, backend or "-")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: arms, comparisons, scorecard and plan."""
        return {
            "job": self.job,
            "new_backend": self.new_backend,
            "arms": [a.as_dict() for a in self.arms],
            "comparisons": [c.as_dict() for c in self.comparisons],
            "scorecard": [g.as_dict() for g in self.scorecard],
            "plan": self.plan.as_dict(),
        }


@dataclass
class Report:
    window: Window
    jobs: list[JobReport]
    negative_balances: list[str]
    #: The legacy executor mode of the process that built the report ("blocking" runs inline
    #: like the old code; "thread" queues legacy runs for a pool), None when not known.
    legacy_mode: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the window, each job's report and the accounts with a negative balance."""
        return {
            "window": self.window.as_dict(),
            "legacy_mode": self.legacy_mode,
            "jobs": [j.as_dict() for j in self.jobs],
            "negative_balances": self.negative_balances,
        }


def _new_backend(jobs: JobRegistry, job: str, backends: Sequence[str]) -> str | None:
    if job in jobs:
        return jobs.get(job).target
    others = [b for b in backends if b != LEGACY]
    return others[0] if others else None


def _plan(jobs: JobRegistry, job: str) -> RolloutPlan:
    return plan_for(jobs.get(job)) if job in jobs else RolloutPlan()


def resolve_window(
    since: datetime | None, until: datetime | None, now: datetime | None = None
) -> Window:
    """``since``/``until``, by default the 24 hours up to now, in UTC (a time given with another
    offset is converted, so every printed bound is the UTC it is labelled); InvalidInput if it
    is empty."""
    end = _utc(until or now or utcnow())
    start = _utc(since or end - DEFAULT_WINDOW)
    if start >= end:
        raise InvalidInput(
            f"empty window: --since {start.isoformat()} is not before --until {end.isoformat()}"
        )
    return Window(start, end)


def _utc(value: datetime) -> datetime:
    """Aware UTC; a naive value is taken as UTC, as the store takes it."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def check_job(db: Database, jobs: JobRegistry, job: str) -> None:
    """A job is known if the app declares it or the database has runs of it."""
    if job in jobs:
        return
    with db.transaction() as s:
        if s.scalar(select(Run.id).where(Run.job == job).limit(1)) is not None:
            return
    known = ", ".join(jobs.names()) or "none registered; load your app with --app"
    raise UnknownJob(f"unknown job {job!r}: no runs and not declared (known: {known})")


def build(
    db: Database,
    jobs: JobRegistry,
    *,
    job: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    sample_cap: int = SAMPLE_CAP,
    legacy_mode: str | None = None,
) -> Report:
    """The report over ``since``..``until`` (default: the last 24 hours), every job or one.

    ``db`` is only read, in one snapshot; ``jobs`` gives each job's plan and new backend;
    ``legacy_mode`` is stated in the report (it decides whether legacy queue times are like
    the old inline code's).
    """
    window = resolve_window(since, until)
    if job is not None:
        check_job(db, jobs, job)
    targets = {spec.name: plan_for(spec).target_seconds for spec in jobs}
    got = collect(
        db,
        window,
        [job] if job is not None else None,
        targets,
        sample_cap=sample_cap,
        balances=True,
    )
    names = sorted({k[0] for k in got.arms} | ({job} if job else set()))
    reports = []
    for name in names:
        mine = sorted((a for k, a in got.arms.items() if k[0] == name), key=_arm_order)
        new = _new_backend(jobs, name, [a.backend for a in mine])
        plan = _plan(jobs, name)
        report = JobReport(name, new, plan, mine, _compare(mine, got.samples), [])
        report.scorecard = scorecard(plan, report.arm(new), report.arm(LEGACY), new)
        reports.append(report)
    return Report(window, reports, got.negative_balances, legacy_mode)


def _arm_order(arm: ArmStats) -> tuple[bool, str]:
    return (arm.backend != LEGACY, arm.backend)


def _compare(arms: list[ArmStats], samples: dict[Key, Samples]) -> list[Comparison]:
    legacy = next((a for a in arms if a.backend == LEGACY), None)
    if legacy is None:
        return []
    base = samples.get((legacy.job, LEGACY), Samples())
    return [
        _comparison(arm, legacy, samples.get((arm.job, arm.backend), Samples()), base)
        for arm in arms
        if arm.backend != LEGACY
    ]


def _comparison(new: ArmStats, legacy: ArmStats, mine: Samples, base: Samples) -> Comparison:
    return Comparison(
        backend=new.backend,
        difference=newcombe(new.completed, new.finished, legacy.completed, legacy.finished),
        z_test=two_proportion_z(new.completed, new.finished, legacy.completed, legacy.finished),
        queue_test=mann_whitney(mine.queue, base.queue),
        duration_test=mann_whitney(mine.duration, base.duration),
        sampled=mine.capped or base.capped,
    )


# --- scorecard ----------------------------------------------------------------------------------


def _text(d: dict[str, Any]) -> str:
    return str(d["text"])


def scorecard(
    plan: RolloutPlan, new: ArmStats, legacy: ArmStats, backend: str | None
) -> list[Gate]:
    """The migration's success metrics for the new backend of one job: a selection of the
    rollout gates (:data:`toolkit.rollout.gates.RULES`), so the report and ``rollout advance``
    give the same verdict on the same runs; only the names and the numbers shown differ."""
    label = backend or "new backend"
    timeouts, latency, completion, credit, heartbeats = gates(
        ("timeouts", "latency", "success", "credit", "heartbeats"),
        plan,
        new.counts(),
        legacy.counts(),
        0.0,
    )
    new_rate = new.credit_errors / new.finished if new.finished else None
    old_rate = legacy.credit_errors / legacy.finished if legacy.finished else None
    return [
        _shown(
            timeouts,
            "runs failed by timeouts = 0",
            {
                "timeouts": new.timeouts,
                "text": f"{new.timeouts} of {new.finished} finished on {label}",
            },
        ),
        _shown(latency, f"queue-to-processing p95 < {plan.target_seconds:g} s"),
        _shown(completion, "completion rate same or better"),
        _shown(
            credit,
            "no increase in credit-handling errors",
            {
                "new": new.credit_errors,
                "legacy": legacy.credit_errors,
                "text": f"{label} {new.credit_errors} ({pct(new_rate)}) vs legacy "
                f"{legacy.credit_errors} ({pct(old_rate)})",
            },
        ),
        _shown(heartbeats, "heartbeats delivered"),
    ]


def _shown(gate: Gate, name: str, detail: dict[str, Any] | None = None) -> Gate:
    """The gate's verdict under the scorecard's name, with the numbers the report shows."""
    if detail is None:
        return Gate(name, gate.verdict, gate.detail, gate.render, gate.key)
    return Gate(name, gate.verdict, detail, _text, gate.key)
