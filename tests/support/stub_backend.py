"""A backend that is enabled but takes no work: rollouts toward it may be set (the target is
enabled), and a dispatch that reaches it falls back as a refused hand-over would."""

from __future__ import annotations

from toolkit import Toolkit
from toolkit.backends.base import BaseBackend
from toolkit.errors import BackendUnavailable
from toolkit.jobs import SubmittedRun
from toolkit.runtime.lifecycle import AttemptResult


class Unsent(BaseBackend):
    """Stands in for a durable backend in tests that only change rollouts."""

    def __init__(self, tk: Toolkit, name: str) -> None:
        super().__init__(tk.runtime)
        self.name = name

    def _send(self, run: SubmittedRun) -> AttemptResult | None:
        raise BackendUnavailable(f"{self.name} is a test stub: run {run.run_id} not sent")


def enable(tk: Toolkit, *names: str) -> Toolkit:
    """Enable each of ``names`` as an :class:`Unsent` stub."""
    for name in names:
        tk.use_backend(name, Unsent(tk, name))
    return tk
