"""What a maintenance sweep is asked and what it answers: the filters, one run's change, and the
report of an invocation (totals per job, backend and change, and a small sample, never every
run, so a sweep over millions of runs reports in constant memory)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row
from sqlalchemy.sql.elements import ColumnElement

from toolkit.errors import InvalidInput
from toolkit.store.models import Run

DEFAULT_BATCH = 1000  # recover: each run is routed and handed over on its own
BULK_BATCH = 5000  # refund and cleanup: fewer transactions, audit entries and account updates
MAX_BATCH = 5000
SAMPLE = 20  # rows kept for the "what would change" table; totals cover every run


@dataclass(frozen=True)
class Filters:
    """Which runs a sweep may touch, and how many per invocation and per batch."""

    job: str | None = None
    backend: str | None = None
    since: datetime | None = None
    limit: int | None = None
    batch_size: int | None = None  # None: the sweep's own default

    def __post_init__(self) -> None:
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            raise InvalidInput(f"limit must be at least 1, not {self.limit!r}")
        size = self.batch_size
        if size is not None and (isinstance(size, bool) or not 1 <= size <= MAX_BATCH):
            raise InvalidInput(f"batch size must be from 1 to {MAX_BATCH}, not {self.batch_size!r}")

    def criteria(self) -> list[ColumnElement[bool]]:
        """The SQL conditions of the set filters (limit and batch size are the sweeper's)."""
        out: list[ColumnElement[bool]] = []
        if self.job is not None:
            out.append(Run.job == self.job)
        if self.backend is not None:
            out.append(Run.backend == self.backend)
        if self.since is not None:
            out.append(Run.created_at >= self.since)
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the report and the audit entries."""
        return {
            "job": self.job,
            "backend": self.backend,
            "since": self.since.isoformat() if self.since else None,
            "limit": self.limit,
            "batch_size": self.batch_size,
        }


@dataclass(slots=True)
class Change:
    """What a sweep did, or would do, to one run; ``skipped`` says why it did nothing.

    ``change`` is the text people read ("→ inngest", "QUEUED → FAILED"); ``to_status`` and
    ``to_backend`` are the raw values scripts read (None: unknown, the run was skipped)."""

    run_id: uuid.UUID
    job: str
    backend: str
    status: str
    created_at: datetime
    change: str
    credits: int = 0
    skipped: str | None = None
    to_status: str | None = None
    to_backend: str | None = None

    @classmethod
    def of(
        cls,
        row: Row[Any],
        change: str,
        credits: int = 0,
        skipped: str | None = None,
        *,
        to_status: str | None = None,
        to_backend: str | None = None,
    ) -> Change:
        """From a page row, which must carry id, job, backend, status and created_at; the
        run's status and backend afterwards default to what they are now."""
        return cls(
            row.id,
            row.job,
            row.backend,
            row.status,
            row.created_at,
            change,
            credits,
            skipped,
            to_status or row.status,
            to_backend or row.backend,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready raw values, with ``created_at`` in UTC; the display text is left out."""
        return {
            "run_id": str(self.run_id),
            "job": self.job,
            "backend": self.backend,
            "status": self.status,
            "created_at": self.created_at.astimezone(UTC).isoformat(),
            "to_status": None if self.skipped else self.to_status,
            "to_backend": None if self.skipped else self.to_backend,
            "credits": self.credits,
            "skipped": self.skipped,
        }


@dataclass
class Totals:
    runs: int = 0
    credits: int = 0
    status: str = ""  # what the runs' status was, and is (or would be) afterwards
    to_status: str | None = None
    to_backend: str | None = None


@dataclass
class Report:
    """The outcome of one invocation: totals per (job, backend, change), never every run."""

    action: str
    applied: bool
    filters: Filters
    parameters: dict[str, Any] = field(default_factory=dict)
    changed: int = 0
    credits: int = 0
    batches: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    # Runs handed over, per (backend, fallback_from, status) right after the hand-over: a run
    # the legacy executor ran inline is COMPLETED or FAILED there already.
    handovers: Counter[tuple[str, str | None, str]] = field(default_factory=Counter)
    totals: dict[tuple[str, str, str], Totals] = field(default_factory=dict)
    sample: list[Change] = field(default_factory=list)
    elapsed: float = 0.0

    def add(self, changes: Sequence[Change]) -> None:
        """Count the changes into the totals (skipped ones by reason only) and keep the first few
        as the sample."""
        for c in changes:
            if len(self.sample) < SAMPLE:
                self.sample.append(c)
            if c.skipped is not None:
                self.skipped[c.skipped] += 1
                continue
            self.changed += 1
            self.credits += c.credits
            totals = self.totals.setdefault(
                (c.job, c.backend, c.change), Totals(0, 0, c.status, c.to_status, c.to_backend)
            )
            totals.runs += 1
            totals.credits += c.credits

    def ran_inline(self) -> dict[str, int]:
        """Of the runs handed over, how many ran to the end inside this process (legacy)."""
        done = Counter(status for (_, _, status) in self.handovers.elements())
        return {"completed": done["COMPLETED"], "failed": done["FAILED"]}

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready raw values: totals sorted by (job, backend, change), and the sample,
        never every run. ``outcomes`` keeps the sentences the table prints; ``handovers`` and
        ``ran_inline`` carry the same facts as values."""
        return {
            "action": self.action,
            "applied": self.applied,
            "filters": self.filters.as_dict(),
            "parameters": self.parameters,
            "changed": self.changed,
            "credits": self.credits,
            "batches": self.batches,
            "skipped": dict(self.skipped),
            "outcomes": dict(self.outcomes),
            "handovers": [
                {"backend": b, "fallback_from": f, "status": st, "runs": n}
                for (b, f, st), n in sorted(self.handovers.items(), key=lambda kv: str(kv[0]))
            ],
            "ran_inline": self.ran_inline(),
            "totals": [
                {
                    "job": j,
                    "backend": b,
                    "status": t.status,
                    "to_status": t.to_status,
                    "to_backend": t.to_backend,
                    "runs": t.runs,
                    "credits": t.credits,
                }
                for (j, b, _), t in sorted(self.totals.items())
            ],
            "sample": [c.as_dict() for c in self.sample],
            "elapsed_s": round(self.elapsed, 3),
        }
