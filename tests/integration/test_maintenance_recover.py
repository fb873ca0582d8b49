"""Recovery on SQLite and PostgreSQL, through every backend harness (see maintenance_fixture):
stuck runs are handed over again under the same run id, routed by the flag as it is now, at
most --max-recoveries times; the fallback policy applies; a dry run changes nothing; twice
equals once; a live old attempt is fenced out."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from tests.conftest import make_toolkit
from tests.jobs_fixture import ParkedBackend
from tests.maintenance_fixture import (
    HARNESSES,
    JOB,
    OTHER_JOB,
    STRICT_JOB,
    Harness,
    check_ledger,
    dispatch,
    refunds,
    register_jobs,
    run_row,
    setup_jobs,
    snapshot,
    start,
    statuses,
)
from tests.maintenance_fixture import age as make_stuck
from toolkit import Toolkit
from toolkit.errors import AppLoadError, RunLost
from toolkit.maintenance import operations as maintenance_ops
from toolkit.maintenance.sweep import Filters, Report
from toolkit.store.models import Run


@pytest.fixture
def parked(tk: Toolkit) -> ParkedBackend:
    return setup_jobs(tk)[0]


def _installed(name: str, tk: Toolkit) -> Harness:
    h = HARNESSES[name]
    h.install(tk)
    return h


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest, tk: Toolkit, parked: ParkedBackend) -> Harness:
    return _installed(request.param, tk)


@pytest.fixture(params=sorted(name for name, h in HARNESSES.items() if not h.runs_inline))
def queueing_harness(request: pytest.FixtureRequest, tk: Toolkit, parked: ParkedBackend) -> Harness:
    """Only the harnesses that queue a handed-over run: one that runs it inline to the end
    can never leave it stuck again."""
    return _installed(request.param, tk)


def recover(tk: Toolkit, *, apply: bool = False, max_recoveries: int = 3, **kw: object) -> Report:
    # ``kw`` is forwarded as given: Filters checks the values (mypy cannot, field by field)
    filters = Filters(batch_size=2, **kw)  # type: ignore[arg-type]
    return maintenance_ops.recover(
        tk.maintenance, filters, apply=apply, older_than="15m", max_recoveries=max_recoveries
    )


def run_count(tk: Toolkit) -> int:
    with tk.db.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(Run)) or 0)


def test_stuck_runs_are_handed_over_again_under_the_same_id(tk: Toolkit, harness: Harness) -> None:
    queued = harness.stuck(tk, 3)
    running = harness.stuck(tk, 2)
    start(tk, running)
    make_stuck(tk, queued + running)
    stuck = queued + running
    received = {rid: harness.received(tk, rid) for rid in stuck}
    runs_before = run_count(tk)
    before = snapshot(tk)

    dry = recover(tk)
    assert snapshot(tk) == before
    assert {k: t.runs for k, t in dry.totals.items()} == {
        (JOB, harness.name, f"→ {harness.name}"): 5
    }

    report = recover(tk, apply=True)
    assert report.changed == 5 and report.batches == 3
    assert report.outcomes == {f"submitted to {harness.name}": 5}
    assert run_count(tk) == runs_before  # the same runs, no new ids
    for rid in stuck:
        run = run_row(tk, rid)
        assert (run.recoveries, run.backend) == (1, harness.name)
        assert run.route_reason is not None and run.route_reason.startswith("recovery 1: ")
        assert "error" not in run.route_reason
        assert harness.received(tk, rid) == received[rid] + 1
    expected = "COMPLETED" if harness.runs_inline else "QUEUED"
    assert set(statuses(tk, stuck).values()) == {expected}

    once = snapshot(tk)
    assert recover(tk, apply=True).changed == 0  # queued again just now: not stuck any more
    assert snapshot(tk) == once
    check_ledger(tk)


def test_recovery_gives_up_after_max_recoveries_and_cleanup_takes_over(
    tk: Toolkit, queueing_harness: Harness
) -> None:
    (run_id,) = queueing_harness.stuck(tk, 1)
    for attempt in (1, 2):
        make_stuck(tk, [run_id], recoveries=attempt - 1)
        assert recover(tk, apply=True, max_recoveries=2).changed == 1
        assert run_row(tk, run_id).recoveries == attempt
    make_stuck(tk, [run_id], recoveries=2)
    assert recover(tk, apply=True, max_recoveries=2).changed == 0
    cleaned = maintenance_ops.cleanup_orphans(tk.maintenance, apply=True, max_recoveries=2)
    assert cleaned.changed == 1 and run_row(tk, run_id).status == "FAILED"
    assert refunds(tk) == {run_id: 1}
    check_ledger(tk, all_refunded=True)


def test_after_a_rollback_orphans_of_the_new_backend_go_to_legacy(
    tk: Toolkit, parked: ParkedBackend
) -> None:
    run_ids = dispatch(tk, 4, percentage=100)
    make_stuck(tk, run_ids)
    tk.rollback(JOB, reason="incident")
    sent = list(parked.submitted)
    report = recover(tk, apply=True)
    assert {k: t.runs for k, t in report.totals.items()} == {(JOB, "parked", "→ legacy"): 4}
    assert parked.submitted == sent  # nothing went back to the rolled-back backend
    for rid in run_ids:
        run = run_row(tk, rid)
        assert (run.backend, run.status, run.recoveries) == ("legacy", "COMPLETED", 1)
        # Routed by the flag as it is now, not by a flag error (on SQLite a flag read inside
        # the batch's write transaction would have waited for its lock, then failed).
        assert run.route_reason is not None and run.route_reason.startswith("recovery 1: ")
        assert "error" not in run.route_reason
    check_ledger(tk)


def test_legacy_orphans_go_to_the_new_backend_when_the_flag_says_so(
    tk: Toolkit, parked: ParkedBackend
) -> None:
    run_ids = HARNESSES["legacy"].stuck(tk, 3)
    make_stuck(tk, run_ids)
    tk.set_rollout(JOB, 100, reason="full rollout")
    report = recover(tk, apply=True)
    assert report.outcomes == {"submitted to parked": 3}
    assert all(run_row(tk, rid).backend == "parked" for rid in run_ids)
    assert all(parked.submitted.count(rid) == 2 for rid in run_ids)


@pytest.mark.parametrize(
    "job, expected",
    [
        (JOB, "fell back from parked to legacy"),
        (STRICT_JOB, "not submitted: failed and refunded (fallback policy)"),
    ],
)
def test_a_refused_hand_over_follows_the_jobs_fallback_policy(
    tk: Toolkit, parked: ParkedBackend, job: str, expected: str
) -> None:
    run_ids = dispatch(tk, 2, job=job)
    make_stuck(tk, run_ids)
    parked.refuse = "broker down"
    report = recover(tk, apply=True)
    assert report.outcomes == {expected: 2}
    for rid in run_ids:
        run = run_row(tk, rid)
        if job == JOB:
            assert (run.backend, run.fallback_from, run.status) == ("legacy", "parked", "COMPLETED")
        else:
            assert run.status == "FAILED" and "broker down" in (run.error or "")
    check_ledger(tk, all_refunded=True)


def test_the_old_attempt_of_a_recovered_running_run_is_fenced_out(
    tk: Toolkit, parked: ParkedBackend
) -> None:
    (run_id,) = dispatch(tk, 1)
    (old,) = start(tk, [run_id])
    make_stuck(tk, [run_id])
    assert recover(tk, apply=True).changed == 1
    with pytest.raises(RunLost):
        tk.runtime.steps.memoized(old, "predict-gpt")
    new = tk.runtime.claim(run_id)
    assert new is not None and new.attempt == old.attempt + 1
    assert not tk.runtime.complete(run_id, old.attempt, {"late": True})
    assert tk.runtime.complete(run_id, new.attempt, {"ok": True})


def test_recover_routes_through_the_apps_jobs(tk: Toolkit, parked: ParkedBackend) -> None:
    with pytest.raises(AppLoadError, match="--app"):
        maintenance_ops.recover(make_toolkit(tk.db.url).maintenance)  # no jobs: nothing to route
    stuck = dispatch(tk, 2, job=OTHER_JOB)
    make_stuck(tk, stuck)
    other = make_toolkit(tk.db.url)  # an app that no longer declares OTHER_JOB
    try:
        register_jobs(other)
        del other.jobs._jobs[OTHER_JOB]
        report = maintenance_ops.recover(other.maintenance, apply=True)
    finally:
        other.close()
    assert report.changed == 0
    assert report.skipped == {"job not registered in this app": 2}
    assert all(run_row(tk, rid).recoveries == 0 for rid in stuck)


def test_redispatch_is_conditional_on_what_the_caller_saw(
    tk: Toolkit, parked: ParkedBackend
) -> None:
    (run_id,) = dispatch(tk, 1)
    seen = run_row(tk, run_id)
    tk.runtime.claim(run_id)  # it moved after it was read
    assert (
        tk.dispatcher.redispatch(
            run_id, status=seen.status, recoveries=seen.recoveries, attempts=seen.attempts
        )
        is None
    )
    now = run_row(tk, run_id)
    handle = tk.dispatcher.redispatch(
        run_id, status=now.status, recoveries=now.recoveries, attempts=now.attempts
    )
    assert handle is not None and handle.run_id == run_id and handle.backend == "parked"
    assert run_row(tk, run_id).recoveries == 1
    assert tk.dispatcher.redispatch(uuid.uuid4(), status="QUEUED", recoveries=0, attempts=0) is None
