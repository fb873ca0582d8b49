"""Test helpers for applications built on toolkit: a stub backend and a ready test Toolkit.

``StubBackend`` takes the place of a durable backend (Inngest, Celery) in a unit test: it keeps
the runs handed to it, and the test decides when they execute (``run``/``run_all``, in the
test's thread, through the same lifecycle every backend uses: claim, memoized steps, retries,
failure with dead letter and refund) or makes it refuse hand-overs (``refuse``) to test the
fallback policy. ``toolkit_for_tests`` gives a migrated SQLite Toolkit whose legacy executor
runs inline, so a dispatch returns once the run has finished.

pytest is not a dependency of toolkit: the ``toolkit_app`` fixture exists only when pytest is
installed. Use it from a ``conftest.py`` with ``pytest_plugins = ["toolkit.testing"]``.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.app import Toolkit
from toolkit.backends.base import BaseBackend
from toolkit.jobs import SubmittedRun
from toolkit.runtime.lifecycle import Outcome

__all__ = ["Outcome", "StubBackend", "toolkit_for_tests"]


class StubBackend(BaseBackend):
    """A backend that only records hand-overs, so a test drives execution itself.

    Register it under the name your jobs target (``tk.use_backend("inngest",
    StubBackend(tk, name="inngest"))``) and set the rollout to 100 %. ``submitted`` lists
    every hand-over in order (a recovered run appears again); ``pending`` the runs not yet
    run by this stub. Set ``refuse`` to a reason and every hand-over fails as an unreachable
    transport would, so the job's fallback policy applies.
    """

    name = "stub"

    def __init__(self, toolkit: Toolkit, *, name: str | None = None) -> None:
        # The only coupling to the backend base class: its constructor and ``execute``.
        super().__init__(toolkit.runtime)
        if name is not None:
            self.name = name
        self.submitted: list[uuid.UUID] = []
        self.pending: list[uuid.UUID] = []
        self.refuse: str | None = None

    def _send(self, run: SubmittedRun) -> None:
        if self.refuse:
            raise ConnectionError(self.refuse)
        self.submitted.append(run.run_id)
        self.pending.append(run.run_id)

    def run(self, run_id: uuid.UUID) -> Outcome:
        """Execute one handed-over run to a final state here, sleeping out retry backoff.

        ``SKIPPED`` means the run was not this stub's to execute any more (cancelled,
        finished, or claimed by someone else), as a real worker would find it.
        """
        if run_id in self.pending:
            self.pending.remove(run_id)
        return self.execute(run_id).outcome

    def run_all(self) -> dict[uuid.UUID, Outcome]:
        """Execute every pending run, in hand-over order, including runs handed over meanwhile."""
        outcomes: dict[uuid.UUID, Outcome] = {}
        while self.pending:
            run_id = self.pending[0]
            outcomes[run_id] = self.run(run_id)
        return outcomes


def toolkit_for_tests(directory: str | os.PathLike[str], **options: Any) -> Toolkit:
    """A migrated SQLite Toolkit in ``directory``, built for fast, deterministic tests.

    The legacy executor runs inline (``legacy_mode="blocking"``) and retries wait
    milliseconds, so ``tk.dispatch`` returns a finished run. ``options`` override any
    Toolkit argument. Close it (or use it in a ``with`` block) when the test ends.
    """
    settings: dict[str, Any] = {
        "legacy_mode": "blocking",
        "retry_base_delay": 0.001,
        "retry_max_delay": 0.004,
        **options,
    }
    path = Path(directory) / "toolkit.db"
    tk = Toolkit(f"sqlite:///{path}", **settings)
    tk.migrate()
    return tk


if TYPE_CHECKING or importlib.util.find_spec("pytest") is not None:
    import pytest

    @pytest.fixture
    def toolkit_app(tmp_path: Path) -> Iterator[Toolkit]:
        """A fresh :func:`toolkit_for_tests` Toolkit per test, closed afterwards."""
        tk = toolkit_for_tests(tmp_path)
        try:
            yield tk
        finally:
            tk.close()

    __all__ += ["toolkit_app"]
