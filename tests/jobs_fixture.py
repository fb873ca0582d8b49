"""Job definitions the tests share: a seed-like prediction session with a call log."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from toolkit import JobContext, NonRetriableError, Toolkit
from toolkit.backends.base import BaseBackend
from toolkit.jobs import SubmittedRun


@dataclass
class Calls:
    """What the job's steps did: the proof that a finished step never runs twice."""

    log: list[str] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, name: str) -> None:
        with self.lock:
            self.log.append(name)

    def count(self, name: str) -> int:
        return self.log.count(name)

    def fail_next(self, step: str, times: int) -> None:
        self.failures[step] = times

    def maybe_fail(self, step: str) -> None:
        with self.lock:
            left = self.failures.get(step, 0)
            if left:
                self.failures[step] = left - 1
                raise RuntimeError(f"{step} flaked ({left} left)")


def register_session_job(
    tk: Toolkit,
    calls: Calls,
    *,
    name: str = "prediction-session",
    cost: int = 5,
    retries: int = 3,
    target: str = "inngest",
    fallback: str = "legacy",
    timeout: str | float = "15m",
) -> None:
    def call_model(model: str, market: str) -> dict[str, Any]:
        calls.maybe_fail(f"predict-{model}")
        calls.record(f"predict-{model}")
        return {"model": model, "market": market, "p": 0.5}

    @tk.job(
        name,
        event="prediction.session.requested",
        retries=retries,
        timeout=timeout,
        target=target,
        cost=cost,
        fallback=fallback,
    )
    def session(ctx: JobContext, payload: dict[str, Any]) -> list[Any]:
        if payload.get("fatal"):
            raise NonRetriableError("market closed")
        return [
            ctx.step(f"predict-{m}", call_model, m, payload["market_id"]) for m in payload["models"]
        ]


SESSION = {"models": ["gpt", "claude", "llama"], "market_id": "m-1"}


class ParkedBackend(BaseBackend):
    """A queue that only records hand-overs, so a test drives execution itself.

    ``refuse`` simulates an outage of the transport (event API or broker down).
    """

    name = "parked"

    def __init__(self, tk: Toolkit) -> None:
        super().__init__(tk.runtime)
        self.submitted: list[uuid.UUID] = []
        self.refuse: str | None = None

    def _send(self, run: SubmittedRun) -> None:
        if self.refuse:
            raise ConnectionError(self.refuse)
        self.submitted.append(run.run_id)
