"""On PostgreSQL a refund or cleanup batch is one statement (:mod:`toolkit.store.batches`);
it must leave exactly what the generic batch (locking SELECT, then ``Credits.refund_many_in``
or ``RunStore.fail_many_in``) leaves: the same statuses, errors, dead letters, refunds, balances
and audit entries, run for run."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select

from tests.maintenance_fixture import (
    JOB,
    OTHER_JOB,
    age,
    check_ledger,
    dispatch,
    owe,
    setup_jobs,
    start,
)
from toolkit import Toolkit
from toolkit.maintenance import operations as maintenance_ops
from toolkit.maintenance.sweep import Filters
from toolkit.store.models import AuditEntry, CreditEntry, DeadLetter, Run

pytestmark = pytest.mark.postgres


@pytest.fixture(autouse=True)
def jobs(tk: Toolkit) -> None:
    setup_jobs(tk)


@pytest.fixture
def db_url(pg_url: str) -> str:
    return pg_url


def outcome(tk: Toolkit, run_ids: list[uuid.UUID]) -> list[tuple[Any, ...]]:
    """Per run, in dispatch order: what a sweep leaves, without ids and clock times."""
    with tk.db.transaction() as s:
        runs = {r.id: r for r in s.scalars(select(Run).where(Run.id.in_(run_ids)))}
        dead = {d.run_id: d for d in s.scalars(select(DeadLetter))}
        ledger = {
            (e.run_id, e.kind): e
            for e in s.scalars(select(CreditEntry).where(CreditEntry.run_id.in_(run_ids)))
        }
    out = []
    for rid in run_ids:
        run, refund = runs[rid], ledger.get((rid, "REFUND"))
        out.append(
            (
                run.status,
                run.error,
                run.finished_at is not None,
                (dead[rid].error, dead[rid].attempts, dead[rid].payload) if rid in dead else None,
                (refund.account, refund.amount, refund.reason) if refund else None,
            )
        )
    return out


def audits(tk: Toolkit, job: str) -> dict[str, Any]:
    """The sweep's audit entries for ``job``, summed (which run lands in which batch depends on
    the random run ids), without what differs by invocation."""
    with tk.db.transaction() as s:
        entries = list(
            s.scalars(
                select(AuditEntry).where(
                    AuditEntry.target == job, AuditEntry.action.like("maintenance.%")
                )
            )
        )
    totals: dict[str, Any] = {"entries": len(entries), "runs": 0, "credits": 0}
    for key in ("changes", "statuses", "backends"):
        totals[key] = Counter[str]()
    for e in entries:
        assert e.after is not None and e.before is not None  # nullable columns; never here
        totals["runs"] += e.after["runs"]
        totals["credits"] += e.after["credits"]
        assert len(e.after["run_ids"]) == e.after["runs"]
        totals["changes"].update(e.after["changes"])
        totals["statuses"].update(e.before["statuses"])
        totals["backends"].update(e.before["backends"])
        totals["same"] = (
            e.action,
            e.actor,
            e.reason,
            {k: v for k, v in e.after["filters"].items() if k != "job"},
            {k: v for k, v in e.after["parameters"].items() if k != "cutoff"},
        )
    return totals


def generic(tk: Toolkit, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch as on SQLite: the store's locking SELECT, then ``Credits.refund_many_in`` or
    ``RunStore.fail_many_in`` (the dialect says a batch is not one statement)."""
    assert tk.db.sql.one_statement_batches
    monkeypatch.setattr(tk.db.sql, "one_statement_batches", False)


@pytest.mark.parametrize("action", ["refund", "cleanup"])
def test_one_statement_batch_equals_the_generic_batch(
    tk: Toolkit, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    sides = {job: dispatch(tk, 9, job=job) for job in (JOB, OTHER_JOB)}
    for run_ids in sides.values():  # the same shape on both sides
        if action == "refund":
            owe(tk, run_ids[:4])
            owe(tk, run_ids[4:7], "CANCELLED")
        else:
            start(tk, run_ids[3:6])
            age(tk, run_ids[:6], recoveries=3)
            age(tk, run_ids[6:], recoveries=1)  # recovery may still try: left alone
    options: dict[str, Any] = {} if action == "refund" else {"older_than": "15m", "reason": "t"}
    sweep = maintenance_ops.refund if action == "refund" else maintenance_ops.cleanup_orphans

    one = sweep(tk.maintenance, Filters(job=OTHER_JOB, batch_size=2), apply=True, **options)
    with monkeypatch.context() as m:
        generic(tk, m)
        two = sweep(tk.maintenance, Filters(job=JOB, batch_size=2), apply=True, **options)

    assert one.changed == two.changed > 0 and one.batches == two.batches
    assert {k[2:]: (t.runs, t.credits) for k, t in one.totals.items()} == {
        k[2:]: (t.runs, t.credits) for k, t in two.totals.items()
    }
    assert outcome(tk, sides[OTHER_JOB]) == outcome(tk, sides[JOB])
    assert audits(tk, OTHER_JOB) == audits(tk, JOB)
    check_ledger(tk, all_refunded=True)
