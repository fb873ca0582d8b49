"""The Backend protocol and the base class that owns what every backend shares."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from toolkit.errors import BackendUnavailable, ToolkitError
from toolkit.runtime.lifecycle import Outcome

if TYPE_CHECKING:
    from toolkit.app import Toolkit
    from toolkit.jobs import JobSpec


@dataclass(frozen=True)
class SubmittedRun:
    """What a backend needs to hand a run over: never the ORM row, so no session leaks."""

    run_id: uuid.UUID
    job: JobSpec
    payload: Any
    targeting_key: str


@runtime_checkable
class Backend(Protocol):
    name: str

    def submit(self, run: SubmittedRun) -> None: ...

    def submit_many(self, runs: Sequence[SubmittedRun]) -> None: ...

    def close(self, *, wait: bool = True) -> None: ...


class BaseBackend:
    """Subclasses implement ``_send`` (the transport); the lifecycle is the runtime's.

    Any error while sending becomes :class:`BackendUnavailable`, which the dispatcher turns
    into the job's fallback policy: a run is never left queued on a backend that refused it.
    """

    name = "base"

    def __init__(self, toolkit: Toolkit) -> None:
        self.toolkit = toolkit
        self.runtime = toolkit.runtime

    def submit(self, run: SubmittedRun) -> None:
        try:
            self._send(run)
        except ToolkitError as exc:
            if isinstance(exc, BackendUnavailable):
                raise
            raise BackendUnavailable(f"{self.name} refused run {run.run_id}: {exc}") from exc
        except Exception as exc:
            raise BackendUnavailable(
                f"{self.name} could not take run {run.run_id}: {type(exc).__name__}: {exc}"
            ) from exc

    def submit_many(self, runs: Sequence[SubmittedRun]) -> None:
        for run in runs:
            self.submit(run)

    def execute(self, run_id: uuid.UUID) -> Outcome:
        """Run to a final state in this process: the shared lifecycle, for any transport."""
        return self.runtime.execute(run_id)

    def close(self, *, wait: bool = True) -> None:
        """Release resources; with ``wait`` in-flight work drains first."""

    def _send(self, run: SubmittedRun) -> None:
        raise NotImplementedError
