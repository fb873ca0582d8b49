"""``toolkit recover`` / ``cleanup orphans`` / ``refund`` and the scripts, on SQLite and
PostgreSQL: tables and --json, dry run by default, exit codes, and bad input that exits 2 with
one line and changes nothing."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from rich.console import Console

from tests.conftest import make_toolkit
from tests.maintenance_fixture import (
    JOB,
    check_ledger,
    dispatch,
    owe,
    refunds,
    setup_jobs,
    snapshot,
    start,
)
from tests.maintenance_fixture import age as make_stuck
from toolkit import Toolkit
from toolkit.cli import cli, main
from toolkit.cli.scripts import compare_success

APP = "tests.maintenance_app:build"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def seeded(cli_env: str) -> Iterator[Toolkit]:
    """Four owed runs, two stuck ones recovery gave up on, two it may still recover."""
    tk = make_toolkit(cli_env)
    setup_jobs(tk)
    run_ids = dispatch(tk, 8)
    owe(tk, run_ids[:4])
    start(tk, run_ids[5:6])
    make_stuck(tk, run_ids[4:6], recoveries=3)
    make_stuck(tk, run_ids[6:8], recoveries=0)
    yield tk
    tk.close()


def toolkit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def as_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    code, out, err = toolkit(capsys, *args, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def test_dry_runs_print_what_would_change_and_change_nothing(
    seeded: Toolkit, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(seeded)
    code, out, _ = toolkit(capsys, "refund")
    assert code == 0 and "would change" in out and "dry run" in out and "--apply" in out
    assert JOB in out and "parked" in out and "totals per job and backend" in out
    code, out, _ = toolkit(capsys, "cleanup", "orphans", "--older-than", "15m")
    assert code == 0 and "QUEUED → FAILED" in out and "RUNNING → FAILED" in out
    code, out, _ = toolkit(capsys, "--app", APP, "recover")
    assert code == 0 and "→ parked" in out
    data = as_json(capsys, "refund")
    assert data["applied"] is False and data["changed"] == 4 and data["credits"] == 20
    assert data["totals"] == [
        {
            "job": JOB,
            "backend": "parked",
            "status": "FAILED",
            "to_status": "FAILED",
            "to_backend": "parked",
            "runs": 4,
            "credits": 20,
        }
    ]
    assert snapshot(seeded) == before


def test_apply_recover_cleanup_refund_and_again_changes_nothing(
    seeded: Toolkit, capsys: pytest.CaptureFixture[str]
) -> None:
    recovered = as_json(capsys, "--app", APP, "recover", "--apply", "--batch-size", "1")
    assert recovered["changed"] == 2 and recovered["batches"] == 2
    assert recovered["outcomes"] == {"submitted to parked": 2}
    cleaned = as_json(capsys, "cleanup", "orphans", "--apply", "--reason", "incident 7")
    assert cleaned["changed"] == 2 and cleaned["credits"] == 10
    refunded = as_json(capsys, "refund", "--apply")
    assert refunded["changed"] == 4 and refunded["credits"] == 20
    check_ledger(seeded, all_refunded=True)
    assert len(refunds(seeded)) == 6

    once = snapshot(seeded)
    for args in (["--app", APP, "recover"], ["cleanup", "orphans"], ["refund"]):
        again = as_json(capsys, *args, "--apply")
        assert again["changed"] == 0 and again["batches"] == 0
    assert snapshot(seeded) == once

    code, out, _ = toolkit(capsys, "audit", "--json")
    actions = [e["action"] for e in json.loads(out)]
    assert actions.count("maintenance.recover") == 2
    assert actions.count("maintenance.cleanup") == actions.count("maintenance.refund") == 1
    code, out, _ = toolkit(capsys, "refund", "--apply")  # the table after applying
    assert code == 0 and "0 runs changed" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["refund", "--limit", "-1"], "--limit"),
        (["refund", "--limit", "0"], "--limit"),
        (["refund", "--batch-size", "0"], "--batch-size"),
        (["refund", "--batch-size", "5001"], "--batch-size"),
        (["refund", "--job", "nope"], "unknown job 'nope'"),
        (["refund", "--backend", "nope"], "unknown backend 'nope'"),
        (["refund", "--since", "yesterday"], "invalid --since"),
        (["cleanup", "orphans", "--older-than", "abc"], "invalid --older-than 'abc'"),
        (["cleanup", "orphans", "--older-than", "0s"], "must be positive"),
        (["cleanup", "orphans", "--max-recoveries", "-1"], "--max-recoveries"),
        (["cleanup", "orphans", "--job", "nope"], "unknown job 'nope'"),
        (["--app", APP, "recover", "--older-than", "abc"], "invalid --older-than"),
        (["--app", APP, "recover", "--backend", "nope"], "unknown backend 'nope'"),
        (["recover"], "pass --app"),
        (["cleanup", "dead-letters"], "No such command"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_changes_nothing(
    seeded: Toolkit, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    before = snapshot(seeded)
    code, out, err = toolkit(capsys, *args, "--apply")
    assert code == 2, (out, err)
    assert message in err and err.count("\n") == 1 and "Traceback" not in out + err, err
    assert snapshot(seeded) == before


def test_progress_bar_on_a_terminal(
    seeded: Toolkit, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(
        "toolkit.cli.maintenance.err_console",
        lambda: Console(file=screen, force_terminal=True, color_system=None, width=120),
    )
    code, out, _ = toolkit(capsys, "refund", "--apply", "--batch-size", "1")
    assert code == 0 and "4 runs changed" in out
    assert "refund applying" in screen.getvalue() and "4/4" in screen.getvalue()


# --- the scripts: real processes, as cron runs them -------------------------------------------


def script(name: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_scripts_take_the_same_options_and_exit_codes(seeded: Toolkit, cli_env: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TOOLKIT_DATABASE_URL")
    before = snapshot(seeded)
    dry = script("refund_credits.py", "--json", "--database-url", cli_env, env=env)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["changed"] == 4 and snapshot(seeded) == before
    bad = script("cleanup_orphans.py", f"--database-url={cli_env}", "--older-than", "x", env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: invalid --older-than")
    assert bad.stderr.count("\n") == 1 and snapshot(seeded) == before


def test_compare_success_runs_the_report_command_when_there_is_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    @click.command("report")
    @click.option("--since")
    def fake_report(since: str) -> None:
        click.echo(f"report since {since}")

    monkeypatch.setitem(cli.commands, "report", fake_report)
    assert compare_success(["--since", "24h"]) == 0
    assert capsys.readouterr().out == "report since 24h\n"
