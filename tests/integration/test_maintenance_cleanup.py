"""Orphan cleanup on SQLite and PostgreSQL: only stuck runs that recovery gave up on are failed,
each with its dead letter and exactly one refund; a dry run changes nothing; twice equals once;
a cleaned-up attempt that is still alive is fenced out."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from tests.maintenance_fixture import (
    COST,
    JOB,
    check_ledger,
    dispatch,
    refunds,
    run_row,
    set_runs,
    setup_jobs,
    snapshot,
    start,
    statuses,
)
from tests.maintenance_fixture import age as make_stuck
from toolkit import Toolkit
from toolkit.errors import InvalidDuration, InvalidInput, RunLost
from toolkit.maintenance import operations as maintenance_ops
from toolkit.maintenance.sweep import Filters, Report
from toolkit.store.models import DeadLetter, utcnow


@pytest.fixture(autouse=True)
def jobs(tk: Toolkit) -> None:
    setup_jobs(tk)


def cleanup(tk: Toolkit, *, apply: bool = False, reason: str | None = None) -> Report:
    return maintenance_ops.cleanup_orphans(
        tk.maintenance,
        Filters(batch_size=2),
        apply=apply,
        older_than="15m",
        max_recoveries=3,
        reason=reason,
    )


def scenario(tk: Toolkit) -> dict[str, list[uuid.UUID]]:
    """Stuck runs recovery gave up on, and runs cleanup must leave alone."""
    run_ids = dispatch(tk, 12)
    queued, running = run_ids[:3], run_ids[3:5]
    start(tk, running)
    make_stuck(tk, queued + running, recoveries=3)
    recoverable = run_ids[5:7]  # stuck, but recovery may still try
    make_stuck(tk, recoverable, recoveries=2)
    fresh = run_ids[7:9]  # gave up long ago, but queued again a minute ago by a recovery
    make_stuck(tk, fresh, recoveries=3)
    set_runs(tk, fresh, next_attempt_at=utcnow() - timedelta(minutes=1))
    beating = run_ids[9:10]  # old, RUNNING, and its heartbeat is recent: alive
    start(tk, beating)
    make_stuck(tk, beating, recoveries=3)
    set_runs(tk, beating, heartbeat_at=utcnow())
    done = run_ids[10:12]
    start(tk, done)
    for rid in done:
        tk.runtime.complete(rid, None, {"ok": True})
    make_stuck(tk, done, recoveries=3)
    return {
        "orphans": queued + running,
        "queued": queued,
        "running": running,
        "untouched": recoverable + fresh + beating + done,
    }


def test_dry_run_changes_nothing(tk: Toolkit) -> None:
    runs = scenario(tk)
    before = snapshot(tk)
    report = cleanup(tk)
    assert snapshot(tk) == before
    assert {c.run_id for c in report.sample} == set(runs["orphans"])
    assert {k: (t.runs, t.credits) for k, t in report.totals.items()} == {
        (JOB, "parked", "QUEUED → FAILED"): (3, 3 * COST),
        (JOB, "parked", "RUNNING → FAILED"): (2, 2 * COST),
    }


def test_apply_fails_dead_letters_and_refunds_once_and_twice_equals_once(tk: Toolkit) -> None:
    runs = scenario(tk)
    untouched_before = statuses(tk, runs["untouched"])
    report = cleanup(tk, apply=True, reason="incident 42")
    assert (report.changed, report.credits, report.batches) == (5, 5 * COST, 3)
    assert set(statuses(tk, runs["orphans"]).values()) == {"FAILED"}
    assert statuses(tk, runs["untouched"]) == untouched_before
    error = run_row(tk, runs["queued"][0]).error or ""
    assert "orphaned: QUEUED" in error and "recovery gave up after 3" in error
    assert "incident 42" in error
    assert "orphaned: RUNNING" in (run_row(tk, runs["running"][0]).error or "")
    with tk.db.transaction() as s:
        dead = set(s.scalars(select(DeadLetter.run_id)))
    assert dead == set(runs["orphans"])
    assert refunds(tk) == {rid: 1 for rid in runs["orphans"]}
    check_ledger(tk, all_refunded=True)
    entries = [e for e in tk.audit.entries() if e.action == "maintenance.cleanup"]
    assert len(entries) == 3 and all(e.reason == "incident 42" for e in entries)

    once = snapshot(tk)
    again = cleanup(tk, apply=True)
    assert (again.changed, again.batches) == (0, 0)
    assert snapshot(tk) == once
    # Nothing is left owed, so the refund sweep after cleanup has nothing to do either.
    assert maintenance_ops.refund(tk.maintenance, apply=True).changed == 0


def test_a_cleaned_up_attempt_that_is_still_alive_is_fenced_out(tk: Toolkit) -> None:
    (run_id,) = dispatch(tk, 1)
    (claim,) = start(tk, [run_id])
    make_stuck(tk, [run_id], recoveries=3)
    assert cleanup(tk, apply=True).changed == 1
    with pytest.raises(RunLost):
        tk.runtime.steps.memoized(claim, "predict-gpt")  # its next step stops it
    assert not tk.runtime.complete(run_id, claim.attempt, {"late": True})
    assert run_row(tk, run_id).status == "FAILED"
    check_ledger(tk, all_refunded=True)


def test_max_recoveries_zero_fails_every_stuck_run(tk: Toolkit) -> None:
    run_ids = dispatch(tk, 4)
    make_stuck(tk, run_ids, recoveries=0)
    assert cleanup(tk).changed == 0  # recovery has not given up on them
    report = maintenance_ops.cleanup_orphans(
        tk.maintenance, apply=True, older_than="30m", max_recoveries=0
    )
    assert report.changed == 4
    assert (
        maintenance_ops.cleanup_orphans(tk.maintenance, older_than="2h", max_recoveries=0).changed
        == 0
    )
    check_ledger(tk, all_refunded=True)


def test_cleanup_input_is_checked_first(tk: Toolkit) -> None:
    run_ids = dispatch(tk, 2)
    make_stuck(tk, run_ids, recoveries=3)
    before = snapshot(tk)
    with pytest.raises(InvalidDuration):
        maintenance_ops.cleanup_orphans(tk.maintenance, apply=True, older_than="abc")
    with pytest.raises(InvalidDuration):
        maintenance_ops.cleanup_orphans(tk.maintenance, apply=True, older_than="-5m")
    with pytest.raises(InvalidInput, match="max recoveries"):
        maintenance_ops.cleanup_orphans(tk.maintenance, apply=True, max_recoveries=-1)
    assert snapshot(tk) == before
    with tk.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(DeadLetter)) == 0
