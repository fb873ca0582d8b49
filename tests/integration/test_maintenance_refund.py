"""The refund sweep on SQLite and PostgreSQL: a dry run changes nothing; --apply refunds every
owed run exactly once, in batches with one audit entry each; twice equals once; filters,
keyset ties and a crash mid-sweep; the ledger invariant after every scenario."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.maintenance_fixture import (
    ACCOUNTS,
    COST,
    JOB,
    OTHER_JOB,
    check_ledger,
    dispatch,
    json_doc,
    owe,
    refunds,
    set_runs,
    setup_jobs,
    snapshot,
)
from toolkit import RunStatus, Toolkit
from toolkit.errors import DatabaseError, InvalidInput, UnknownBackend, UnknownJob
from toolkit.maintenance import operations as maintenance_ops
from toolkit.maintenance.sweep import BULK_BATCH, DEFAULT_BATCH, Change, Filters, Sweeper
from toolkit.store.models import AuditEntry, Run, utcnow


@pytest.fixture(autouse=True)
def jobs(tk: Toolkit) -> None:
    setup_jobs(tk)


def balances(tk: Toolkit) -> int:
    return sum(tk.credits.balance(a) for a in ACCOUNTS)


def audit(tk: Toolkit, action: str = "maintenance.refund") -> list[AuditEntry]:
    with tk.db.transaction() as s:
        return list(
            s.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id))
        )


def test_dry_run_changes_nothing_and_shows_totals(tk: Toolkit) -> None:
    run_ids = dispatch(tk, 12)
    owe(tk, run_ids[:5])
    owe(tk, run_ids[5:8], "CANCELLED")
    tk.cancel(run_ids[8])  # the runtime refunds a cancel at once: nothing owed
    before = snapshot(tk)
    report = maintenance_ops.refund(tk.maintenance, Filters(batch_size=2))
    assert snapshot(tk) == before
    assert not report.applied and report.batches == 0
    assert (report.changed, report.credits) == (8, 8 * COST)
    assert {k: (t.runs, t.credits) for k, t in report.totals.items()} == {
        (JOB, "parked", "refund"): (8, 8 * COST)
    }
    assert {c.run_id for c in report.sample} == set(run_ids[:8])
    check_ledger(tk)


def test_apply_refunds_each_owed_run_once_and_twice_equals_once(tk: Toolkit) -> None:
    run_ids = dispatch(tk, 20) + dispatch(tk, 10, job=OTHER_JOB)
    owed = run_ids[:7] + run_ids[20:24]
    owe(tk, run_ids[:7])
    owe(tk, run_ids[20:24], "CANCELLED")
    tk.runtime.fail(run_ids[10], "boom", expected=(RunStatus.QUEUED,))
    before = balances(tk)

    first = maintenance_ops.refund(tk.maintenance, Filters(batch_size=3), apply=True)
    assert (first.changed, first.credits, first.batches) == (11, 11 * COST, 4)
    assert {k: t.runs for k, t in first.totals.items()} == {
        (JOB, "parked", "refund"): 7,
        (OTHER_JOB, "parked", "refund"): 4,
    }
    assert balances(tk) == before + 11 * COST
    assert refunds(tk) == {rid: 1 for rid in [*owed, run_ids[10]]}
    check_ledger(tk, all_refunded=True)

    entries = audit(tk)
    assert len(entries) == first.batches  # one entry per batch, written in its transaction
    ids = [rid for e in entries for rid in json_doc(e.after)["run_ids"]]
    assert sorted(ids) == sorted(str(r) for r in owed)
    assert sum(json_doc(e.after)["credits"] for e in entries) == 11 * COST

    once = snapshot(tk)
    second = maintenance_ops.refund(tk.maintenance, Filters(batch_size=3), apply=True)
    assert (second.changed, second.batches) == (0, 0)
    assert snapshot(tk) == once  # audit log included: nothing to do, nothing written
    check_ledger(tk, all_refunded=True)


def test_filters_job_backend_since_and_limit(tk: Toolkit) -> None:
    run_ids = dispatch(tk, 12) + dispatch(tk, 4, job=OTHER_JOB)
    owe(tk, run_ids)
    old = utcnow() - timedelta(days=3)
    for i, rid in enumerate(run_ids[:12]):  # distinct, known order for the limit
        set_runs(tk, [rid], created_at=old + timedelta(seconds=i))
    set_runs(tk, run_ids[:2], backend="legacy")

    only_other = maintenance_ops.refund(tk.maintenance, Filters(job=OTHER_JOB), apply=True)
    assert only_other.changed == 4 and set(refunds(tk)) == set(run_ids[12:])
    legacy = maintenance_ops.refund(tk.maintenance, Filters(backend="legacy"), apply=True)
    assert legacy.changed == 2 and set(refunds(tk)) == set(run_ids[12:] + run_ids[:2])
    recent = maintenance_ops.refund(
        tk.maintenance, Filters(since=utcnow() - timedelta(hours=1)), apply=True
    )
    assert recent.changed == 0  # everything left is three days old
    limited = maintenance_ops.refund(tk.maintenance, Filters(limit=3, batch_size=2), apply=True)
    assert (limited.changed, limited.batches) == (3, 2)
    assert set(refunds(tk)) == set(run_ids[12:] + run_ids[:5])  # the three oldest left
    rest = maintenance_ops.refund(tk.maintenance, Filters(batch_size=2), apply=True)
    assert rest.changed == 7
    check_ledger(tk, all_refunded=True)


def test_keyset_pages_through_identical_timestamps(tk: Toolkit) -> None:
    """Ties on created_at are ordered by id: no run is skipped or taken twice across pages."""
    run_ids = dispatch(tk, 23)
    owe(tk, run_ids)
    set_runs(tk, run_ids, created_at=utcnow() - timedelta(hours=1))
    for size in (1, 2, 5):
        dry = maintenance_ops.refund(tk.maintenance, Filters(batch_size=size))
        assert dry.changed == 23
    report = maintenance_ops.refund(tk.maintenance, Filters(batch_size=4), apply=True)
    assert report.changed == 23 and report.batches == 6
    assert refunds(tk) == {rid: 1 for rid in run_ids}
    check_ledger(tk, all_refunded=True)


def test_crash_mid_sweep_keeps_whole_batches_and_the_next_run_completes(
    tk: Toolkit, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_ids = dispatch(tk, 10)
    owe(tk, run_ids)
    real = Sweeper._audit  # the last write of a batch, in its transaction
    calls: list[int] = []

    def dies_in_third_batch(self: Sweeper, s: Session, done: Sequence[Change]) -> None:
        real(self, s, done)  # the refunds and the audit entry are written ...
        calls.append(len(done))
        if len(calls) == 3:
            raise DatabaseError("connection lost")  # ... and the transaction never commits

    monkeypatch.setattr(Sweeper, "_audit", dies_in_third_batch)
    with pytest.raises(DatabaseError):
        maintenance_ops.refund(tk.maintenance, Filters(batch_size=3), apply=True)
    assert len(refunds(tk)) == 6 and len(audit(tk)) == 2  # two whole batches, no part of one
    check_ledger(tk)

    monkeypatch.setattr(Sweeper, "_audit", real)
    rest = maintenance_ops.refund(tk.maintenance, Filters(batch_size=3), apply=True)
    assert rest.changed == 4
    assert refunds(tk) == {rid: 1 for rid in run_ids}
    check_ledger(tk, all_refunded=True)


def test_bad_input_raises_before_anything_changes(tk: Toolkit) -> None:
    owe(tk, dispatch(tk, 3))
    before = snapshot(tk)
    with pytest.raises(InvalidInput, match="limit"):
        Filters(limit=0)
    with pytest.raises(InvalidInput, match="batch size"):
        Filters(batch_size=0)
    with pytest.raises(UnknownJob, match="unknown job 'nope'"):
        maintenance_ops.refund(tk.maintenance, Filters(job="nope"), apply=True)
    with pytest.raises(UnknownBackend, match="unknown backend 'nope'"):
        maintenance_ops.refund(tk.maintenance, Filters(backend="nope"), apply=True)
    assert snapshot(tk) == before
    # Names known only from recorded runs are fine: a removed job or backend can be swept.
    with tk.db.transaction() as s:
        rid = s.scalars(select(Run.id)).first()
    assert rid is not None
    set_runs(tk, [rid], job="retired-job", backend="retired-backend")
    report = maintenance_ops.refund(
        tk.maintenance, Filters(job="retired-job", backend="retired-backend")
    )
    assert report.changed == 1


def test_batch_size_defaults_per_sweep(tk: Toolkit) -> None:
    """Refund and cleanup take 5000 runs per batch unless told; recover, which routes and hands
    over each run on its own, 1000. The audit entries name the size used."""
    assert (
        maintenance_ops.sweeper(tk.maintenance, "refund").filters.batch_size == BULK_BATCH == 5000
    )
    assert maintenance_ops.sweeper(tk.maintenance, "cleanup").filters.batch_size == BULK_BATCH
    assert (
        maintenance_ops.sweeper(tk.maintenance, "recover").filters.batch_size
        == DEFAULT_BATCH
        == 1000
    )
    assert (
        maintenance_ops.sweeper(tk.maintenance, "refund", Filters(batch_size=7)).filters.batch_size
        == 7
    )
    owe(tk, dispatch(tk, 3))
    assert maintenance_ops.refund(tk.maintenance, apply=True).batches == 1
    assert [json_doc(e.after)["filters"]["batch_size"] for e in audit(tk)] == [BULK_BATCH]
