"""The step memo in the steps table: a finished step never runs again for the same run.

Used by the executors that run job code in our own processes (legacy, Celery); Inngest keeps
its own memo. The writes are the store's (:class:`toolkit.store.steps.StepStore`): every read
and write first fences the attempt, so an attempt that lost the run (cancelled, failed by
cleanup, taken over) stops at its next step and cannot publish output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from toolkit.errors import JobTimeout
from toolkit.jobs import JobContext
from toolkit.runtime.claims import Claim
from toolkit.runtime.serialization import describe, to_json
from toolkit.store.steps import StepStore


class StepMemo:
    """The memo as a :class:`Claim` sees it."""

    def __init__(self, store: StepStore) -> None:
        self.store = store

    def memoized(self, claim: Claim, step_id: str) -> tuple[bool, Any]:
        """Fence the attempt, beat the heart, and return a finished step's stored output."""
        return self.store.memoized(claim.run_id, claim.attempt, step_id)

    def finish(
        self, claim: Claim, step_id: str, *, output: Any = None, error: str | None = None
    ) -> None:
        """Record the step's output, or its error; a lost attempt's output is refused."""
        self.store.finish(claim.run_id, claim.attempt, step_id, output=output, error=error)


class DatabaseJobContext(JobContext):
    """Step memo in the steps table: used by the legacy and Celery backends."""

    def __init__(self, steps: StepMemo, claim: Claim, *, deadline: float) -> None:
        super().__init__(claim.run_id, claim.attempt, claim.job, claim.payload)
        self._steps = steps
        self._claim = claim
        self._deadline = deadline

    def _run_step(
        self, step_id: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        done, output = self._steps.memoized(self._claim, step_id)
        if done:
            return output
        if time.monotonic() > self._deadline:
            raise JobTimeout(
                f"run exceeded the {self.job.timeout:g}s timeout of job "
                f"{self.job.name!r} before step {step_id!r}"
            )
        try:
            output = to_json(fn(*args, **kwargs), what=f"the output of step {step_id!r}")
        except Exception as exc:
            self._steps.finish(self._claim, step_id, error=describe(exc))
            raise
        self._steps.finish(self._claim, step_id, output=output)
        return output
