"""One harness per backend behind one interface, so the lifecycle contract is written once.

A harness holds a Toolkit whose flag sends the contract's jobs to its backend, and says how to
wait for a run, read the steps it called, hold handed-over runs queued, and make the backend
refuse hand-overs. What a backend cannot do is declared here (``queues``, ``take_over``), and
the contract tests it the way that backend does it instead of skipping it.

- ``legacy-blocking`` / ``legacy-thread``: the flag at 0 %, so every run is the legacy
  executor's. The refusing backend for the fallback test is a ``toolkit.testing.StubBackend``
  the jobs target: legacy is what a refused run falls back *to*, in each mode.
- ``celery``: real ``toolkit worker`` subprocesses on Redis (shared by a module, see
  conftest.py), the test's Toolkit publishing to them; refusal is a broker nobody listens on.
- ``inngest``: the app's real serve route over HTTP, driven by the executor stand-in
  (tests/support/inngest_harness.py); refusal is the fake event API dropping connections.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.contract.jobs import JOB, JOBS, STRICT, read_step_log, register_contract_jobs
from tests.support.celery_harness import CeleryTestEnv, CeleryWorkers
from tests.support.inngest_harness import InngestHarness as InngestFakes
from tests.support.inngest_harness import inngest_harness
from toolkit import RunHandle, Toolkit
from toolkit.maintenance import operations as maintenance
from toolkit.store.runs import RunView
from toolkit.testing import StubBackend

DOWN_BROKER = "redis://127.0.0.1:1/0"


class Harness:
    """The backend-independent part: dispatch, wait, the step log, take-over by recovery."""

    name = "?"
    queues = True  # a handed-over run can wait QUEUED (blocking legacy runs it inline instead)
    # How a run whose worker died is taken over: "recover" (maintenance recover hands it over
    # again and the backend runs it, memoized steps skipped) or "engine" (the engine retries
    # the request that died; the run never looks stale to maintenance).
    take_over = "recover"
    stale_after = 0.3  # maintenance's --older-than for a dead worker's run

    def __init__(self, tk: Toolkit, step_log: Path) -> None:
        self.tk = tk
        self.step_log = step_log

    # --- driving runs ---------------------------------------------------------------------

    def dispatch(self, job: str, payload: Any, **options: Any) -> RunHandle:
        return self.tk.dispatch(job, payload, **options)

    def wait(self, run_id: uuid.UUID, *, timeout: float = 20.0) -> RunView:
        """The run once terminal and its backend done with it."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.tk.runs.get(run_id)
            if view.terminal and self.done(run_id):
                return view
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: run {run_id} is {view.status} after {timeout}s\n"
                    + self.diagnostics()
                )
            time.sleep(0.02)

    def done(self, run_id: uuid.UUID) -> bool:
        """Whether the backend has stopped working on the run (not only the row terminal)."""
        return True

    def settle(self, seconds: float) -> None:
        """Let an attempt of a cancelled run reach its next step (where it must stop)."""
        time.sleep(seconds)

    def delivered(self, run_id: uuid.UUID) -> None:
        """Once the backend has been handed ``run_id`` after a :meth:`held` block, wait until
        it has dealt with it (run it, or found it not startable and dropped it)."""
        time.sleep(0.5)  # legacy's pool: the freed threads take the queue at once

    def recover_until_terminal(self, run_id: uuid.UUID, *, timeout: float = 20.0) -> RunView:
        """Run maintenance recover (as ``toolkit recover --apply``) until the run is terminal."""
        deadline = time.monotonic() + timeout
        while not self.tk.runs.get(run_id).terminal:
            maintenance.recover(self.tk.maintenance, apply=True, older_than=self.stale_after)
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: run {run_id} not taken over\n{self.diagnostics()}"
                )
            time.sleep(0.1)
        return self.wait(run_id, timeout=timeout)

    # --- observing ------------------------------------------------------------------------

    def steps(self, run_id: object) -> list[str]:
        return read_step_log(self.step_log, run_id)

    def run_of_step(self, step: str, *, timeout: float = 15.0) -> uuid.UUID:
        """The run that called ``step`` (a name unique to the test), once it has."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.step_log.exists():
                for line in self.step_log.read_text().splitlines():
                    run_id, name, *_ = line.split()
                    if name == step:
                        return uuid.UUID(run_id)
            time.sleep(0.02)
        raise AssertionError(
            f"{self.name}: no run called {step} in {timeout}s\n{self.diagnostics()}"
        )

    def diagnostics(self) -> str:
        return ""

    # --- faults ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Runs handed over inside the block stay QUEUED until it ends."""
        raise NotImplementedError
        yield

    @contextlib.contextmanager
    def refusing(self) -> Iterator[None]:
        """Inside the block the contract jobs' backend refuses every hand-over."""
        raise NotImplementedError
        yield

    def close(self) -> None:
        self.tk.close()


class LegacyHarness(Harness):
    take_over = "recover"

    def __init__(self, tk: Toolkit, step_log: Path, mode: str, *, pool_size: int) -> None:
        super().__init__(tk, step_log)
        self.pool_size = pool_size  # the Toolkit's legacy_workers
        self.name = f"legacy-{mode}"
        self.queues = mode == "thread"
        self.stub = StubBackend(tk, name="stub")
        tk.use_backend("stub", self.stub)
        register_contract_jobs(tk, target="stub")  # flag at 0 %: every run is legacy's
        self._gate = threading.Event()

        @tk.job("contract-gate", target="stub")
        def gate(ctx: Any, payload: Any) -> None:
            self._gate.wait(15)

    def settle(self, seconds: float) -> None:
        if self.queues:  # a blocking dispatch returned: its attempt is over already
            super().settle(seconds)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Every pool thread busy with a gate run: handed-over runs wait in the pool's queue."""
        assert self.queues, "blocking legacy runs inline: nothing can wait queued"
        self._gate.clear()
        gates = [self.dispatch("contract-gate", None).run_id for _ in range(self.pool_size)]
        deadline = time.monotonic() + 5
        while any(self.tk.runs.get(g).status != "RUNNING" for g in gates):
            assert time.monotonic() < deadline, "gate runs did not start"
            time.sleep(0.01)
        try:
            yield
        finally:
            self._gate.set()
            for gate in gates:
                self.wait(gate)

    @contextlib.contextmanager
    def refusing(self) -> Iterator[None]:
        for job in (JOB, STRICT):
            self.tk.set_rollout(job, 100, reason="contract: route to the refusing stub")
        self.stub.refuse = "broker down"
        try:
            yield
        finally:
            self.stub.refuse = None
            for job in (JOB, STRICT):
                self.tk.set_rollout(job, 0, reason="contract: back to legacy")


class CeleryHarness(Harness):
    name = "celery"
    stale_after = 1.5  # the workers' stale_after: a live holder beats every 0.5 s

    def __init__(self, tk: Toolkit, workers: CeleryWorkers, env: CeleryTestEnv) -> None:
        super().__init__(tk, workers.step_log)
        self.workers = workers
        self.env = env
        register_contract_jobs(tk, target="celery")
        tk.use_backend("celery", **env.options, broker_url=env.broker_url)
        for job in JOBS:
            tk.set_rollout(job, 100, reason="contract: every run on celery")

    def diagnostics(self) -> str:
        return self.workers.logs()

    def delivered(self, run_id: uuid.UUID) -> None:
        """The task id is the run id: Celery logs when the worker's task returned."""
        marker = f"[{run_id}] succeeded"
        deadline = time.monotonic() + 20
        while marker not in self.workers.logs(tail=10**7):
            if time.monotonic() > deadline:
                raise AssertionError(f"no worker handled {run_id}\n{self.diagnostics()}")
            time.sleep(0.05)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """No worker running: messages wait in Redis until a fresh worker starts."""
        self.workers.stop_all()
        try:
            yield
        finally:
            self.workers.start(1)

    @contextlib.contextmanager
    def refusing(self) -> Iterator[None]:
        original = self.tk.backends["celery"]
        down = self.tk.use_backend("celery", **{**self.env.options, "broker_url": DOWN_BROKER})
        try:
            yield
        finally:
            down.close(wait=False)
            self.tk.use_backend("celery", original)


class InngestContractHarness(Harness):
    name = "inngest"
    take_over = "engine"

    def __init__(self, tk: Toolkit, step_log: Path) -> None:
        super().__init__(tk, step_log)
        register_contract_jobs(tk, target="inngest")
        self._stack = contextlib.ExitStack()
        self.fakes: InngestFakes = self._stack.enter_context(inngest_harness(tk))
        self.fakes.executor.retry_crashes = True  # a request whose process died is retried
        self.prepare()

    def prepare(self) -> None:
        """Every contract job at 100 % on Inngest (again, after the tables were emptied)."""
        for job in JOBS:
            self.tk.set_rollout(job, 100, reason="contract: every run on inngest")

    def wait(self, run_id: uuid.UUID, *, timeout: float = 20.0) -> RunView:
        return self.fakes.wait(run_id, timeout=timeout)

    def done(self, run_id: uuid.UUID) -> bool:
        executor = self.fakes.executor
        return not executor.received(str(run_id)) or executor.finished(str(run_id))

    def settle(self, seconds: float) -> None:
        self.fakes.executor.wait_idle(seconds + 10)

    def delivered(self, run_id: uuid.UUID) -> None:
        self.fakes.executor.wait_idle(10)
        assert self.fakes.executor.finished(str(run_id))

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self.fakes.executor.paused():
            yield

    @contextlib.contextmanager
    def refusing(self) -> Iterator[None]:
        with self.fakes.event_api_down():
            yield

    def close(self) -> None:
        self._stack.close()
        super().close()
