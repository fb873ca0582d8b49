"""The legacy inline executor: the old code path, now recorded like every other backend.

``blocking`` runs the job in the caller's thread, as the old cron route did; ``thread`` hands
it to a pool, as the old fire-and-forget session worker did.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

from toolkit.backends.base import BaseBackend
from toolkit.errors import BackendUnavailable, ConfigError
from toolkit.jobs import SubmittedRun
from toolkit.runtime.lifecycle import AttemptResult, Runtime

log = logging.getLogger("toolkit.backends.legacy")

LegacyMode = Literal["blocking", "thread"]


class LegacyBackend(BaseBackend):
    name = "legacy"

    def __init__(self, runtime: Runtime, *, mode: LegacyMode = "thread", max_workers: int = 4):
        super().__init__(runtime)
        if mode not in ("blocking", "thread"):
            raise ConfigError(f"legacy mode must be 'blocking' or 'thread', not {mode!r}")
        self.mode = mode
        self._max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _send(self, run: SubmittedRun) -> AttemptResult | None:
        """Blocking: run it now and return where it ended. Thread: hand it to the pool."""
        if self.mode == "blocking":
            return self.execute(run.run_id)
        pool = self._ensure_pool()
        future = pool.submit(self.execute, run.run_id)
        future.add_done_callback(_log_crash)
        return None

    def _ensure_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise BackendUnavailable("the legacy executor is shut down")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self._max_workers, thread_name_prefix="toolkit-legacy"
                )
            return self._pool

    def close(self, *, wait: bool = True) -> None:
        """Stop taking work; with ``wait`` the runs already handed over drain first."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait)


def _log_crash(future: Future[Any]) -> None:
    exc = future.exception()
    if exc is not None:  # the runtime records job errors itself; this is the database failing
        log.error("legacy executor could not record a run: %s", exc, exc_info=exc)
