"""Intent to treat, on SQLite and PostgreSQL: every run keeps the arm the flag assigned, and the
report and the rollout gates count a run a backend refused or lost against that arm.

The issue's scenario: runs sent to Celery with no worker, the flag rolled back, the runs
recovered onto legacy. Before ``Run.arm`` they showed up as legacy runs with a huge queue p95,
the Celery row vanished and "fallbacks" said 0.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from tests.jobs_fixture import ParkedBackend
from tests.maintenance_fixture import JOB, dispatch, set_runs, setup_jobs
from tests.support.celery_app import TEST_BACKEND_OPTIONS, register_jobs
from toolkit import Toolkit
from toolkit.backends.celery.backend import CeleryBackend
from toolkit.maintenance import operations as maintenance_ops
from toolkit.maintenance.sweep import Filters
from toolkit.rollout.gates import evaluate
from toolkit.rollout.plan import RolloutPlan
from toolkit.rollout.report import build
from toolkit.store.models import Run, utcnow

CELERY_JOB = "celery-steps"
STEPS = {"steps": ["a"]}


def _arms(tk: Toolkit, run_ids: list[uuid.UUID]) -> set[tuple[str, str, str | None]]:
    with tk.db.transaction() as s:
        rows = s.execute(
            select(Run.arm, Run.backend, Run.fallback_from).where(Run.id.in_(run_ids))
        ).all()
    return {(r.arm, r.backend, r.fallback_from) for r in rows}


def test_runs_lost_by_celery_and_recovered_onto_legacy_count_on_the_celery_arm(
    tk: Toolkit,
) -> None:
    register_jobs(tk)
    backend = tk.use_backend("celery", broker_url="memory://", **TEST_BACKEND_OPTIONS)
    assert isinstance(backend, CeleryBackend)
    sent: list[uuid.UUID] = []

    def publish(job: Any, run_id: uuid.UUID, **_: Any) -> None:
        sent.append(run_id)  # published to a broker no worker reads: never runs

    backend.publish = publish  # type: ignore[method-assign]
    tk.credits.grant("acct", 1_000)
    tk.set_rollout(CELERY_JOB, 0, reason="test: legacy")
    on_legacy = [tk.dispatch(CELERY_JOB, STEPS, key=f"l{i}", account="acct") for i in range(3)]
    assert {h.status for h in on_legacy} == {"COMPLETED"}
    tk.set_rollout(CELERY_JOB, 100, reason="test: all to celery")
    lost = [tk.dispatch(CELERY_JOB, STEPS, key=f"c{i}", account="acct").run_id for i in range(5)]
    assert sorted(sent) == sorted(lost)

    # Queued 30 minutes ago and never started: what a broker without a worker leaves.
    set_runs(tk, lost, created_at=utcnow() - timedelta(minutes=30))
    tk.rollback(CELERY_JOB, reason="no worker")
    recovered = maintenance_ops.recover(
        tk.maintenance, Filters(), apply=True, older_than="15m", max_recoveries=3
    )
    assert recovered.changed == 5
    assert _arms(tk, lost) == {("celery", "legacy", None)}  # ran on legacy, assigned celery

    report = build(tk.db, tk.jobs, since=utcnow() - timedelta(hours=2))
    [job] = report.jobs
    celery, legacy = job.arm("celery"), job.arm("legacy")
    assert (celery.runs, celery.completed, celery.recovered, celery.fallbacks) == (5, 5, 5, 0)
    assert (legacy.runs, legacy.completed, legacy.recovered) == (3, 3, 0)
    # The 30 minutes the lost runs waited count against celery, not legacy.
    assert celery.latencies.queue[1] is not None and celery.latencies.queue[1] > 1_000
    assert legacy.latencies.queue[1] is not None and legacy.latencies.queue[1] < 60
    [cmp] = job.comparisons
    assert cmp.backend == "celery"
    arms = {a["arm"]: a for a in report.as_dict()["jobs"][0]["arms"]}
    assert arms["celery"]["recovered_elsewhere"] == 5 and arms["legacy"]["runs"] == 3
    # The gates read the same per-arm figures: celery's queue p95 is judged as celery's.
    plan = RolloutPlan(min_runs=1, latency_target=10)
    latency = next(
        g for g in evaluate(plan, celery.counts(), legacy.counts(), 1e9).gates if g.key == "latency"
    )
    assert latency.verdict.value == "FAIL"


def test_a_refused_hand_over_keeps_its_arm_and_counts_as_that_arms_fallback(tk: Toolkit) -> None:
    parked, _ = setup_jobs(tk)
    assert isinstance(parked, ParkedBackend)
    parked.refuse = "transport down"
    run_ids = dispatch(tk, 4, percentage=100)
    assert _arms(tk, run_ids) == {("parked", "legacy", "parked")}

    report = build(tk.db, tk.jobs, since=utcnow() - timedelta(hours=1))
    [job] = report.jobs
    assert [a.backend for a in job.arms] == ["parked"]  # no legacy arm: nothing assigned to it
    parked_arm = job.arm("parked")
    assert (parked_arm.runs, parked_arm.completed, parked_arm.fallbacks) == (4, 4, 4)
    assert job.arm("legacy").runs == 0
    assert job.job == JOB
