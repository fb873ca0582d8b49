"""What the maintenance tests share: seeding stuck and owed runs, snapshots, the ledger invariant,
and one harness per backend so recovery is tested the same way on each of them.

To test recovery on another backend, add a harness to ``HARNESSES`` (and, if it needs a
service, a skip inside ``install``): every test parametrised with ``harness`` then runs on it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from tests.jobs_fixture import SESSION, Calls, ParkedBackend, register_session_job
from toolkit import DispatchRequest, Toolkit
from toolkit.store.models import (
    AuditEntry,
    CreditAccount,
    CreditEntry,
    DeadLetter,
    LedgerKind,
    Run,
    RunStatus,
    Step,
    utcnow,
)

JOB = "prediction-session"
OTHER_JOB = "nightly-batch"
STRICT_JOB = "strict-session"  # fallback="fail"
COST = 5
ACCOUNTS = ("u1", "u2", "u3")


def register_jobs(tk: Toolkit) -> tuple[ParkedBackend, Calls]:
    """The parked backend, the seed's session job (5 credits), a second job, and a job whose
    fallback policy is "fail"; all target the parked backend. Writes nothing."""
    parked = ParkedBackend(tk)
    tk.use_backend("parked", parked)
    calls = Calls()
    register_session_job(tk, calls, name=JOB, cost=COST, target="parked")
    register_session_job(tk, calls, name=OTHER_JOB, cost=COST, target="parked")
    register_session_job(tk, calls, name=STRICT_JOB, cost=COST, target="parked", fallback="fail")
    return parked, calls


def setup_jobs(tk: Toolkit) -> tuple[ParkedBackend, Calls]:
    """:func:`register_jobs`, and credits for the test accounts."""
    parked, calls = register_jobs(tk)
    for account in ACCOUNTS:
        tk.credits.grant(account, 100_000)
    return parked, calls


def dispatch(tk: Toolkit, n: int, *, job: str = JOB, percentage: float = 100) -> list[uuid.UUID]:
    """``n`` debited runs, routed by the flag at ``percentage`` (100: the job's target)."""
    tk.set_rollout(job, percentage, reason="test")
    requests = [
        DispatchRequest(SESSION, key=f"user-{i}", account=ACCOUNTS[i % len(ACCOUNTS)])
        for i in range(n)
    ]
    return [h.run_id for h in tk.dispatch_many(job, requests)]


def set_runs(tk: Toolkit, run_ids: Iterable[uuid.UUID], **values: Any) -> None:
    ids = list(run_ids)
    with tk.db.transaction() as s:
        for start in range(0, len(ids), 500):
            s.execute(update(Run).where(Run.id.in_(ids[start : start + 500])).values(**values))


def owe(tk: Toolkit, run_ids: Iterable[uuid.UUID], status: str = "FAILED") -> None:
    """Finished without their refund: what a crash or the old inline code left behind."""
    set_runs(tk, run_ids, status=status, error="lost before refund", finished_at=utcnow())


def age(
    tk: Toolkit, run_ids: Iterable[uuid.UUID], *, minutes: float = 60, recoveries: int = 0
) -> None:
    """Make runs look stuck for ``minutes``: queued, started and last heard of that long ago."""
    past = utcnow() - timedelta(minutes=minutes)
    set_runs(
        tk,
        run_ids,
        created_at=past,
        next_attempt_at=None,
        heartbeat_at=past,
        started_at=past,
        recoveries=recoveries,
    )


def start(tk: Toolkit, run_ids: Iterable[uuid.UUID]) -> list[Any]:
    """Claim the runs (QUEUED → RUNNING) as a worker that then dies would have."""
    claims = [tk.runtime.claim(rid) for rid in run_ids]
    assert all(c is not None for c in claims)
    return claims


def mark_running(tk: Toolkit, run_ids: Iterable[uuid.UUID]) -> None:
    """RUNNING with one attempt, as a claim leaves it; in one statement, for big seeds."""
    now = utcnow()
    set_runs(tk, run_ids, status="RUNNING", attempts=1, started_at=now, heartbeat_at=now)


def run_row(tk: Toolkit, run_id: uuid.UUID) -> Run:
    with tk.db.transaction() as s:
        return s.get_one(Run, run_id)


def statuses(tk: Toolkit, run_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    with tk.db.transaction() as s:
        rows = s.execute(select(Run.id, Run.status).where(Run.id.in_(list(run_ids)))).all()
    return {r.id: r.status for r in rows}


def refunds(tk: Toolkit) -> dict[uuid.UUID | None, int]:
    """Refunds per run (the invariant says at most one each)."""
    with tk.db.transaction() as s:
        rows = s.execute(
            select(CreditEntry.run_id, func.count())
            .where(CreditEntry.kind == LedgerKind.REFUND.value)
            .group_by(CreditEntry.run_id)
        ).all()
    return {r[0]: r[1] for r in rows}


TABLES = (Run, Step, CreditAccount, CreditEntry, DeadLetter, AuditEntry)


def snapshot(tk: Toolkit) -> dict[str, list[tuple[str, ...]]]:
    """Every row of every toolkit table, as text: a dry run must leave this identical."""
    out: dict[str, list[tuple[str, ...]]] = {}
    with tk.db.transaction() as s:
        for model in TABLES:
            rows = s.execute(select(model.__table__)).all()
            out[model.__tablename__] = sorted(tuple(str(v) for v in row) for row in rows)
    return out


def json_doc(value: Any) -> dict[str, Any]:
    """An audit entry's ``before``/``after`` as a dict: the columns are nullable JSON, but every
    maintenance entry writes both, so a missing one fails here rather than as a TypeError."""
    assert isinstance(value, dict), value
    return value


def without_audit(snap: dict[str, list[tuple[str, ...]]]) -> dict[str, list[tuple[str, ...]]]:
    return {k: v for k, v in snap.items() if k != AuditEntry.__tablename__}


def check_ledger(tk: Toolkit, *, all_refunded: bool = False) -> None:
    """The ledger invariant: every balance equals grants - debits + refunds from the ledger
    and is ≥ 0; a run has at most one debit and one refund, and a refund only with a debit of
    the same amount. With ``all_refunded``: every FAILED or CANCELLED debited run is refunded.
    """
    with tk.db.transaction() as s:
        accounts = s.execute(select(CreditAccount.account, CreditAccount.balance)).all()
        per_run = s.execute(
            select(CreditEntry.run_id, CreditEntry.kind, func.count(), func.sum(CreditEntry.amount))
            .where(CreditEntry.run_id.is_not(None))
            .group_by(CreditEntry.run_id, CreditEntry.kind)
        ).all()
        finished = dict(
            s.execute(
                select(Run.id, Run.status).where(
                    Run.status.in_([RunStatus.FAILED.value, RunStatus.CANCELLED.value])
                )
            ).all()
        )
    for account, balance in accounts:
        totals = tk.credits.totals(account)
        assert balance == totals.balance, (account, balance, totals)
        assert balance >= 0, (account, balance)
    amounts: dict[uuid.UUID | None, dict[str, int]] = {}
    for run_id, kind, count, total in per_run:
        assert count == 1, f"run {run_id} has {count} {kind} entries"
        amounts.setdefault(run_id, {})[kind] = total
    for run_id, kinds in amounts.items():
        if LedgerKind.REFUND.value in kinds:
            assert kinds.get(LedgerKind.DEBIT.value) == kinds[LedgerKind.REFUND.value], run_id
    if all_refunded:
        owed = [
            rid
            for rid, kinds in amounts.items()
            if rid in finished and LedgerKind.REFUND.value not in kinds
        ]
        assert owed == [], f"{len(owed)} failed or cancelled runs still owed a refund"


# --- one harness per backend, for recovery ------------------------------------------------------


@dataclass
class Harness:
    """How recovery is observed on one backend.

    ``install`` registers the backend on a Toolkit (with ``setup_jobs`` already run) and
    returns the name the flag routes to; ``stuck`` makes ``n`` runs that this backend was
    handed and never ran; ``received`` says how many times the backend was handed a run.
    """

    name: str
    install: Callable[[Toolkit], str]
    stuck: Callable[[Toolkit, int], list[uuid.UUID]]
    received: Callable[[Toolkit, uuid.UUID], int]
    runs_inline: bool = False  # the hand-over executes the run (legacy blocking)


def _parked(tk: Toolkit) -> ParkedBackend:
    backend = tk.backends["parked"]
    assert isinstance(backend, ParkedBackend)
    return backend


def _legacy_stuck(tk: Toolkit, n: int) -> list[uuid.UUID]:
    # Dispatched while the flag said legacy; the process died before running them. Recorded
    # through the parked transport (so nothing runs), then marked as legacy's.
    run_ids = dispatch(tk, n, percentage=100)
    set_runs(tk, run_ids, backend="legacy", route_reason="DEFAULT")
    tk.set_rollout(JOB, 0, reason="test: legacy")
    return run_ids


def _legacy_received(tk: Toolkit, run_id: uuid.UUID) -> int:
    return run_row(tk, run_id).attempts  # blocking legacy runs what it is handed at once


HARNESSES: dict[str, Harness] = {
    "parked": Harness(
        name="parked",
        install=lambda tk: "parked",
        stuck=lambda tk, n: dispatch(tk, n, percentage=100),
        received=lambda tk, rid: _parked(tk).submitted.count(rid),
    ),
    "legacy": Harness(
        name="legacy",
        install=lambda tk: "legacy",
        stuck=_legacy_stuck,
        received=_legacy_received,
        runs_inline=True,
    ),
}


def ids(values: Sequence[Any]) -> list[str]:
    return sorted(str(v) for v in values)
