"""Dispatch's writes: a run recorded (with its debit, if the job costs credits), once per key.

The cost-free path is one ``INSERT`` (``ON CONFLICT DO NOTHING RETURNING`` with an
idempotency key) committed by itself; a run with a debit is the INSERT and the debit in one
Core transaction; a batch is one transaction for every run and every debit. Statements are
built once. Each run recorded here is announced as :class:`~toolkit.events.RunQueued` after
its commit.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, insert, select
from sqlalchemy.exc import IntegrityError

from toolkit.errors import InvalidInput
from toolkit.events import RunQueued
from toolkit.store.credits import Credits
from toolkit.store.engine import Database
from toolkit.store.models import Run

#: What dispatch hands back for a run that exists already (an idempotency key seen before).
EXISTING_COLUMNS = (
    Run.id,
    Run.job,
    Run.backend,
    Run.status,
    Run.route_reason,
    Run.fallback_from,
    Run.error,
    Run.idempotency_key,
)


class RunRecords:
    """Inserts of new runs; ``row`` dicts carry every column of :class:`Run` dispatch sets."""

    def __init__(self, db: Database, credits: Credits) -> None:
        self.db = db
        self.credits = credits
        self.events = db.events
        # Built once: statement construction costs more CPU than a dispatch's own work.
        self._insert_run = insert(Run)
        self._insert_run_once = (
            db.insert(Run)
            .on_conflict_do_nothing(index_elements=["job", "idempotency_key"])
            .returning(Run.id)
        )

    def record(self, row: dict[str, Any]) -> Row[Any] | None:
        """Insert the run: one statement, committed by itself. With an idempotency key the
        insert does nothing on a duplicate and the existing run is returned (a concurrent
        dispatch with the same key cannot win in between); None when this call recorded it."""
        with self.db.autocommit() as conn:
            if row["idempotency_key"] is None:
                conn.execute(self._insert_run, row)
            elif conn.execute(self._insert_run_once, row).first() is None:
                existing = self.existing(conn, row["job"], [row["idempotency_key"]])
                return existing[row["idempotency_key"]]
        if self.events.listeners:
            self.events.emit(_queued(row))
        return None

    def record_with_debit(self, row: dict[str, Any], cost: int) -> Row[Any] | None:
        """Insert the run and debit ``row["account"]`` ``cost`` in one transaction: both or
        neither. Returns the existing run for an idempotency key seen before, else None."""
        ikey = row["idempotency_key"]
        try:
            with self.db.connect() as conn:
                if ikey is not None:
                    existing = self.existing(conn, row["job"], [ikey])
                    if existing:
                        return existing[ikey]
                conn.execute(self._insert_run, row)
                self.credits.debit_in(conn, row["account"], row["id"], cost)
        except IntegrityError:
            # A concurrent dispatch with the same idempotency key won the insert.
            with self.db.connect() as conn:
                existing = self.existing(conn, row["job"], [ikey or ""])
            if not existing:
                raise
            return existing[ikey or ""]
        if self.events.listeners:
            self.events.emit(_queued(row))
        return None

    def record_many(
        self, job: str, rows: Sequence[dict[str, Any]], keys: list[str], cost: int
    ) -> tuple[dict[str, Row[Any]], list[dict[str, Any]]]:
        """A batch in one transaction: the runs whose idempotency key exists already are
        returned by key, every other row is inserted (in idempotency-key order: two batches
        sharing keys take the unique index's locks in the same order, so they wait on each
        other, never deadlock) and debited ``cost`` each. Returns (existing, inserted rows).
        Raises IntegrityError when a concurrent batch won a key: calling again then finds it.
        """
        with self.db.connect() as conn:
            existing = self.existing(conn, job, keys) if keys else {}
            fresh, seen = [], set()
            for r in rows:
                ikey = r["idempotency_key"]
                if ikey is not None and ikey in existing:
                    continue
                if ikey is not None and ikey in seen:
                    raise InvalidInput(f"idempotency key {ikey!r} appears twice in one batch")
                seen.add(ikey)
                fresh.append(r)
            if fresh:
                ordered = sorted(
                    fresh, key=lambda r: (r["idempotency_key"] is None, r["idempotency_key"] or "")
                )
                conn.execute(self._insert_run, ordered)
                if cost:
                    per_account: dict[str, list[uuid.UUID]] = defaultdict(list)
                    for r in fresh:
                        per_account[r["account"]].append(r["id"])
                    self.credits.debit_many_in(conn, per_account, cost)
        if fresh and self.events.listeners:
            self.events.emit_all(_queued(r) for r in fresh)
        return existing, fresh

    @staticmethod
    def existing(conn: Connection, job: str, keys: list[str]) -> dict[str, Row[Any]]:
        """The runs of ``job`` with these idempotency keys, by key."""
        rows: Sequence[Any] = conn.execute(
            select(*EXISTING_COLUMNS).where(Run.job == job, Run.idempotency_key.in_(keys))
        ).all()
        return {r.idempotency_key: r for r in rows}


def _queued(row: dict[str, Any]) -> RunQueued:
    return RunQueued(
        run_id=row["id"],
        job=row["job"],
        backend=row["backend"],
        attempt=0,
        at=row["created_at"],
        route_reason=row["route_reason"],
    )
