"""What an attempt holds and what it came to: the values the runtime and its executors share."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from toolkit.jobs import JobSpec
from toolkit.store.models import RunStatus


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    RETRY = "retry"
    SKIPPED = "skipped"  # not ours to run: already claimed, finished, or cancelled


@dataclass(frozen=True)
class AttemptResult:
    outcome: Outcome
    attempt: int = 0
    delay: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class Claim:
    """One attempt's hold on a run: the attempt number fences it out once it lost the run."""

    run_id: uuid.UUID
    attempt: int
    job: JobSpec
    payload: Any


@dataclass(frozen=True)
class RunState:
    """Where a run is, for a transport deciding what to do with a message it could not claim."""

    status: RunStatus
    attempts: int
    heartbeat_at: datetime | None
