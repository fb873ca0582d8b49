"""The base class of every backend: a transport that owns only how a run gets somewhere."""

from __future__ import annotations

import uuid

from toolkit.errors import BackendUnavailable, ToolkitError
from toolkit.jobs import SubmittedRun
from toolkit.runtime.lifecycle import AttemptResult, Runtime


class BaseBackend:
    """Subclasses implement ``_send`` (the transport); the lifecycle is the runtime's.

    A backend receives the :class:`Runtime` it hands runs to (and, where it needs them, the
    job registry), never the application object. Any error while sending becomes
    :class:`BackendUnavailable`, which the dispatcher turns into the job's fallback policy:
    a run is never left queued on a backend that refused it.
    """

    name = "base"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def submit(self, run: SubmittedRun) -> AttemptResult | None:
        """Hand ``run`` over; return what happened to it, if it happened in this thread.

        None: another process or thread has it now (it is QUEUED as far as the caller knows).
        An :class:`AttemptResult`: the run was executed in the caller's thread and ended so
        (the blocking legacy executor), so the caller need not read the run back.
        """
        try:
            return self._send(run)
        except ToolkitError as exc:
            if isinstance(exc, BackendUnavailable):
                raise
            raise BackendUnavailable(f"{self.name} refused run {run.run_id}: {exc}") from exc
        except Exception as exc:
            raise BackendUnavailable(
                f"{self.name} could not take run {run.run_id}: {type(exc).__name__}: {exc}"
            ) from exc

    def execute(self, run_id: uuid.UUID) -> AttemptResult:
        """Run to a final state in this process: the shared lifecycle, for any transport."""
        return self.runtime.execute(run_id)

    def problem(self) -> str | None:
        """A missing setting that makes every hand-over fail (and fall back), named for people;
        None when the backend can take work. ``rollout explain`` reports it."""
        return None

    def close(self, *, wait: bool = True) -> None:
        """Release resources; with ``wait`` in-flight work drains first."""

    def _send(self, run: SubmittedRun) -> AttemptResult | None:
        """The transport: hand the run over (see :meth:`submit` for what to return)."""
        raise NotImplementedError


__all__ = ["BaseBackend", "SubmittedRun"]
