"""The maintenance commands as real processes on PostgreSQL (``python -m toolkit ...``):

* two invocations at once split the work (FOR UPDATE SKIP LOCKED) and change each run exactly
  once: one refund per run, one recovery per run, one audit entry naming each run;
* a process SIGKILLed inside a batch loses that batch only (its transaction rolls back), and
  the next invocation completes the work with no double refund;
* the ledger invariant holds after each of them.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select as sql_select
from sqlalchemy import text

from tests.conftest import make_toolkit
from tests.maintenance_fixture import age as make_stuck
from tests.maintenance_fixture import (
    check_ledger,
    dispatch,
    json_doc,
    mark_running,
    owe,
    refunds,
    setup_jobs,
)
from toolkit import Toolkit
from toolkit.store.models import AuditEntry, Run

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.maintenance_app:build"
RUNS = 600  # with --batch-size 10: enough batches that two processes overlap

COMMANDS = {
    "refund": ["refund"],
    "cleanup": ["cleanup", "orphans", "--older-than", "15m"],
    "recover": ["--app", APP, "recover", "--older-than", "15m"],
}


@pytest.fixture
def tk(pg_url: str) -> Iterator[Toolkit]:
    toolkit = make_toolkit(pg_url)
    setup_jobs(toolkit)
    yield toolkit
    toolkit.close()


@pytest.fixture
def spawn(pg_url: str) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``python -m <module> <args>`` against the test database; killed at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(
        *args: str, actor: str = "tester", module: str = "toolkit", **env: str
    ) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "TOOLKIT_DATABASE_URL": pg_url,
                "TOOLKIT_ACTOR": actor,
                **env,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def seed(tk: Toolkit, action: str, n: int) -> list[uuid.UUID]:
    """``n`` runs that ``action`` must change."""
    run_ids = dispatch(tk, n)
    if action == "refund":
        owe(tk, run_ids)
    else:
        mark_running(tk, run_ids[: n // 2])
        make_stuck(tk, run_ids, recoveries=3 if action == "cleanup" else 0)
    return run_ids


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def audited(tk: Toolkit, action: str) -> list[AuditEntry]:
    with tk.db.transaction() as s:
        return list(
            s.scalars(sql_select(AuditEntry).where(AuditEntry.action == f"maintenance.{action}"))
        )


def check_done_once(tk: Toolkit, action: str, run_ids: list[uuid.UUID]) -> None:
    if action == "recover":
        with tk.db.transaction() as s:
            recoveries = dict(
                s.execute(sql_select(Run.id, Run.recoveries).where(Run.id.in_(run_ids))).all()
            )
        assert recoveries == {rid: 1 for rid in run_ids}
        check_ledger(tk)
    else:
        ours = set(run_ids)
        assert {rid: n for rid, n in refunds(tk).items() if rid in ours} == dict.fromkeys(ours, 1)
        check_ledger(tk, all_refunded=True)


def wait_for_stderr_line(proc: subprocess.Popen[str], expected: str, timeout: float = 60) -> None:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.1)
        if ready:
            line = proc.stderr.readline()
            if line.strip() == expected:
                return
            if not line and proc.poll() is not None:
                break
    raise AssertionError(f"no {expected!r} from the process (exit {proc.poll()})")


def test_two_concurrent_processes_per_command_change_each_run_exactly_once(
    tk: Toolkit, spawn: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    """Two processes of each command, all six at once, on three disjoint sets of runs.

    They start sweeping together (``tests.maintenance_paced``: a go signal once all are loaded,
    and each batch holds its locks 20 ms), so each pair overlaps for certain.
    """
    sizes = {"refund": RUNS, "cleanup": RUNS, "recover": RUNS // 2}  # a recovery costs more
    seeded = {action: seed(tk, action, n) for action, n in sizes.items()}
    go = tmp_path / "go"
    procs = {
        action: [
            spawn(
                *COMMANDS[action],
                "--apply",
                "--json",
                "--batch-size",
                "10",
                actor=actor,
                module="tests.maintenance_paced",
                MAINT_GO=str(go),
            )
            for actor in ("worker-1", "worker-2")
        ]
        for action in sizes
    }
    for pair in procs.values():
        for proc in pair:
            wait_for_stderr_line(proc, "READY")
    go.touch()
    reports = {action: [finish(p) for p in pair] for action, pair in procs.items()}
    for action in sizes:
        assert sum(int(r["changed"]) for r in reports[action]) == sizes[action]
        entries = audited(tk, action)
        seen = Counter(rid for e in entries for rid in json_doc(e.after)["run_ids"])
        assert seen == Counter({str(rid): 1 for rid in seeded[action]})  # one batch each
        by_actor = Counter(e.actor for e in entries)
        assert set(by_actor) == {"worker-1", "worker-2"}, (action, by_actor)  # split the work
        check_done_once(tk, action, seeded[action])


def wait_for_line(proc: subprocess.Popen[str], expected: str, timeout: float = 60) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            if line.strip() == expected:
                return
            if not line and proc.poll() is not None:
                break
    raise AssertionError(f"no {expected!r} from the process (exit {proc.poll()})")


def wait_for_rollback(tk: Toolkit, timeout: float = 30) -> None:
    """Until the killed client's server session has gone (and rolled back its transaction)."""
    deadline = time.monotonic() + timeout
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND state LIKE 'idle in transaction%'"
    )
    while time.monotonic() < deadline:
        with tk.db.transaction() as s:
            if s.scalar(query) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("the killed session never went away")


@pytest.mark.parametrize("action", ["refund", "cleanup"])
def test_sigkill_inside_a_batch_then_a_rerun_completes_without_double_refunds(
    tk: Toolkit, spawn: Callable[..., subprocess.Popen[str]], action: str
) -> None:
    run_ids = seed(tk, action, 60)
    args = [*COMMANDS[action], "--apply", "--batch-size", "10"]
    victim = spawn(*args, module="tests.maintenance_kill", MAINT_STOP_AT_BATCH="3")
    wait_for_line(victim, "IN-BATCH")  # batch 3 is written and not committed
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    wait_for_rollback(tk)

    assert len(refunds(tk)) == 20  # two whole batches, nothing of the third
    assert len(audited(tk, action)) == 2
    check_ledger(tk)

    rerun = finish(spawn(*args, "--json"))
    assert rerun["changed"] == 40
    check_done_once(tk, action, run_ids)
    assert len(audited(tk, action)) == 2 + int(rerun["batches"])
