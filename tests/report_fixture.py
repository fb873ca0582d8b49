"""Seeding runs for the report and rollout-controller tests: rows inserted directly, with
realistic timestamps (queued → started → finished), ledger entries and heartbeats."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select

from toolkit import Toolkit
from toolkit.store.models import AuditEntry, CreditAccount, CreditEntry, Run

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Seed:
    backend: str = "legacy"
    status: str = "COMPLETED"
    created: datetime = T0
    queue: float | None = 1.0  # seconds to start; None: never started
    duration: float | None = 5.0  # seconds to finish; None for runs in flight
    attempts: int = 1
    error: str | None = None
    fallback_from: str | None = None
    heartbeat: bool = True
    account: str | None = None
    debit: int = 0  # credits debited at dispatch
    refund: bool = False
    id: uuid.UUID | None = None
    arm: str | None = None  # the flag's assignment; default: fallback_from, else backend


def arm(
    backend: str,
    n: int,
    *,
    start: datetime = T0,
    every: timedelta = timedelta(seconds=10),
    failed: int = 0,
    cancelled: int = 0,
    running: int = 0,
    queued: int = 0,
    queue: float = 1.0,
    duration: float = 5.0,
    **extra: Any,
) -> list[Seed]:
    """n runs of one backend; the first ``failed``, ``cancelled``... get that status."""
    statuses = (
        ["FAILED"] * failed
        + ["CANCELLED"] * cancelled
        + ["RUNNING"] * running
        + ["QUEUED"] * queued
    )
    statuses += ["COMPLETED"] * (n - len(statuses))
    out = []
    for i, status in enumerate(statuses):
        seed = Seed(backend, status, start + i * every, queue, duration, **extra)
        if status == "QUEUED":
            seed = replace(seed, queue=None, duration=None, heartbeat=False)
        elif status == "RUNNING":
            seed = replace(seed, duration=None)
        out.append(seed)
    return out


def insert_runs(tk: Toolkit, job: str, seeds: Iterable[Seed]) -> list[uuid.UUID]:
    rows: list[dict[str, Any]] = []
    ledger: list[dict[str, Any]] = []
    for seed in seeds:
        rid = seed.id or uuid.uuid4()
        started = seed.created + timedelta(seconds=seed.queue) if seed.queue is not None else None
        finished = (
            started + timedelta(seconds=seed.duration)
            if started is not None and seed.duration is not None
            else None
        )
        rows.append(
            {
                "id": rid,
                "job": job,
                "idempotency_key": None,
                "targeting_key": f"user-{len(rows)}",
                "backend": seed.backend,
                "arm": seed.arm or seed.fallback_from or seed.backend,
                "status": seed.status,
                "payload": {},
                "error": seed.error,
                "attempts": seed.attempts if started is not None else 0,
                "account": seed.account,
                "cost": seed.debit,
                "fallback_from": seed.fallback_from,
                "recoveries": 0,
                "created_at": seed.created,
                "started_at": started,
                "finished_at": finished,
                "heartbeat_at": (finished or started) if seed.heartbeat else None,
            }
        )
        if seed.debit:
            account = seed.account or "acct"
            ledger.append(_entry(account, rid, "DEBIT", seed.debit, seed.created))
            if seed.refund:
                ledger.append(_entry(account, rid, "REFUND", seed.debit, finished or seed.created))
    with tk.db.transaction() as s:
        if rows:
            s.execute(insert(Run), rows)
        if ledger:
            s.execute(insert(CreditEntry), ledger)
    return [r["id"] for r in rows]


def _entry(
    account: str, run_id: uuid.UUID | None, kind: str, amount: int, at: datetime
) -> dict[str, Any]:
    return {
        "account": account,
        "run_id": run_id,
        "kind": kind,
        "amount": amount,
        "reason": "seed",
        "created_at": at,
    }


def grant(tk: Toolkit, account: str, amount: int, balance: int | None = None) -> None:
    """A GRANT ledger entry and the account row (balance defaults to the grant)."""
    with tk.db.transaction() as s:
        s.execute(insert(CreditEntry), [_entry(account, None, "GRANT", amount, T0)])
        s.execute(
            insert(CreditAccount),
            [{"account": account, "balance": amount if balance is None else balance}],
        )


def last_audit(tk: Toolkit) -> AuditEntry:
    with tk.db.transaction() as s:
        entry = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1)).one()
        s.expunge(entry)
        return entry
