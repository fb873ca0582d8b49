"""Real Celery workers for tests: subprocesses running ``toolkit worker``, always cleaned up.

Usage (any test, any app that configures a celery backend)::

    env = CeleryTestEnv.isolated(broker_url)          # unique queue and Redis key prefix
    with celery_workers(database_url, env, count=2) as workers:
        ...                                            # dispatch, then poll the database
        workers[0].kill()                              # SIGKILL the worker and its pool
        workers.start()                                # a fresh worker on the same queue

Each worker runs in a process group of its own, so a kill takes the prefork children with it
(as a machine crash would) and the context manager's exit kills every group it started, also
when the test failed. Worker logs are kept in files; ``workers.logs()`` goes in assertion
messages.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tests.support.celery_app import CELERY_OPTIONS_ENV, STEP_LOG_ENV, WORKER_ENV

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("TOOLKIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
RABBITMQ_URL = os.environ.get("TOOLKIT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
DEFAULT_APP = "tests.support.celery_app:build"


def unreachable(url: str, timeout: float = 1.0) -> str | None:
    """Why the broker at ``url`` cannot be used, or None when a TCP connection opens."""
    parts = urlsplit(url)
    default_port = 5672 if parts.scheme.startswith("amqp") else 6379
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{parts.scheme} broker not reachable at {host}:{port}: {exc}"


T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T | None], timeout: float, *, interval: float = 0.05, what: str = ""
) -> T:
    """Poll until ``predicate()`` is truthy; its value, or AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(interval)


@dataclass(frozen=True)
class CeleryTestEnv:
    """Broker plus the backend options both the test and its workers use."""

    broker_url: str
    options: dict[str, Any]

    @classmethod
    def isolated(cls, broker_url: str, **options: Any) -> CeleryTestEnv:
        """A queue and key prefix of its own, so concurrent test runs never share messages."""
        tag = f"tk-test-{uuid.uuid4().hex[:10]}"
        opts: dict[str, Any] = {"queue": tag, "key_prefix": f"{tag}:", **options}
        if urlsplit(broker_url).scheme.startswith("redis"):
            transport = dict(opts.get("transport_options") or {})
            transport.setdefault("global_keyprefix", f"{tag}:")
            transport.setdefault("unacked_restore_interval", 1)
            transport.setdefault("unacked_restore_throttle", 1)
            opts["transport_options"] = transport
        else:
            opts.setdefault("rate_limit_url", REDIS_URL)
        return cls(broker_url, opts)

    @property
    def queue(self) -> str:
        return str(self.options["queue"])

    def cleanup(self) -> None:
        """Delete what the run left in the brokers: Redis keys under the prefix, AMQP queue."""
        prefix = str(self.options["key_prefix"])
        redis_url = self.broker_url if self.broker_url.startswith("redis") else REDIS_URL
        if unreachable(redis_url) is None:
            import redis

            client = redis.Redis.from_url(redis_url)
            try:
                keys = list(client.scan_iter(match=f"{prefix}*", count=500))
                if keys:
                    client.delete(*keys)
            finally:
                client.close()
        if self.broker_url.startswith("amqp") and unreachable(self.broker_url) is None:
            from kombu.connection import Connection

            # kombu ships py.typed, but Connection.__init__ has no annotations
            with Connection(self.broker_url, connect_timeout=2) as conn:  # type: ignore[no-untyped-call]
                conn.default_channel.queue_delete(self.queue)


@dataclass
class WorkerProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in self.log():
            if not self.alive() or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"worker {self.name} did not start:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the worker's whole process group (parent and pool children)."""
        if self.proc.returncode is not None and sig != signal.SIGKILL:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait(timeout=10)

    def stop(self, grace: float = 3.0) -> None:
        """Warm shutdown, then SIGKILL for whatever is left of the group."""
        if self.alive():
            self.kill(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        self.kill(signal.SIGKILL)  # also reaps pool children that outlived their parent


@dataclass
class CeleryWorkers:
    """Starts, kills and restarts ``toolkit worker`` subprocesses against one database."""

    database_url: str
    env: CeleryTestEnv
    app: str = DEFAULT_APP
    concurrency: int = 2
    extra_env: dict[str, str] = field(default_factory=dict)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tk-celery-")))
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def step_log(self) -> Path:
        return self.workdir / "steps.log"

    def steps(self) -> list[tuple[str, str, int, int, float]]:
        """(run id, step, attempt, pid, time) for every step function call, in order."""
        if not self.step_log.exists():
            return []
        rows = []
        for line in self.step_log.read_text().splitlines():
            run_id, step, attempt, pid, at = line.split()
            rows.append((run_id, step, int(attempt), int(pid), float(at)))
        return rows

    def environ(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLKIT_")}
        env.update(
            {
                "TOOLKIT_DATABASE_URL": self.database_url,
                "TOOLKIT_BROKER_URL": self.env.broker_url,
                CELERY_OPTIONS_ENV: json.dumps(self.env.options),
                STEP_LOG_ENV: str(self.step_log),
                WORKER_ENV: name,
                "TOOLKIT_DEBUG": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, count: int = 1, *, wait: bool = True) -> list[WorkerProcess]:
        started = []
        for _ in range(count):
            name = f"w{len(self.workers) + 1}"
            log_path = self.workdir / f"{name}.log"
            with log_path.open("wb") as log_file:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "toolkit",
                        "--app",
                        self.app,
                        "worker",
                        "--concurrency",
                        str(self.concurrency),
                        "--loglevel",
                        "INFO",
                        "--hostname",
                        f"{name}-{self.env.queue}@%h",
                    ],
                    cwd=REPO,
                    env=self.environ(name),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: kill() takes the pool too
                )
            worker = WorkerProcess(name, proc, log_path)
            self.workers.append(worker)
            started.append(worker)
        if wait:
            for worker in started:
                worker.wait_ready()
        return started

    def __getitem__(self, index: int) -> WorkerProcess:
        return self.workers[index]

    def stop_all(self, grace: float = 3.0) -> None:
        """Warm shutdown of every worker at once, then SIGKILL for whatever is left."""
        for worker in self.workers:
            if worker.alive():
                worker.kill(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for worker in self.workers:
            with suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
            worker.kill(signal.SIGKILL)

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(f"--- {w.name} ---\n{w.log()[-tail:]}" for w in self.workers)


@contextmanager
def celery_workers(
    database_url: str,
    env: CeleryTestEnv,
    *,
    count: int = 1,
    concurrency: int = 2,
    app: str = DEFAULT_APP,
    extra_env: dict[str, str] | None = None,
    workdir: Path | None = None,
) -> Iterator[CeleryWorkers]:
    """``count`` real workers (prefork, ``concurrency`` children each), killed on exit.

    Logs and the step log go to ``workdir`` (pass pytest's ``tmp_path``); without one, a
    temporary directory that is removed on exit.
    """
    own = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="tk-celery-")) if own else workdir
    assert folder is not None
    workers = CeleryWorkers(
        database_url,
        env,
        app=app,
        concurrency=concurrency,
        extra_env=dict(extra_env or {}),
        workdir=folder,
    )
    try:
        workers.start(count)
        yield workers
    finally:
        workers.stop_all()
        if own:
            shutil.rmtree(folder, ignore_errors=True)
