"""The CLI against SQLite and PostgreSQL: outputs, --json, exit codes, bad input changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from tests.cli_app import build
from toolkit.cli import main
from toolkit.store.engine import Database

APP = "tests.cli_app:build_enabled"  # the targets enabled: rollouts above 0 % can be set
UNCONFIGURED = "tests.cli_app:build"  # inngest and celery not enabled
ROOT = Path(__file__).resolve().parents[2]


def toolkit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--app", APP, *args])
    out, err = capsys.readouterr()
    return code, out, err


def state(capsys: pytest.CaptureFixture[str]) -> tuple[object, object]:
    """Everything a bad command must leave untouched: the rollout and the audit log."""
    code, out, _ = toolkit(capsys, "rollout", "status", "prediction-session", "--json")
    assert code == 0
    _, audit, _ = toolkit(capsys, "audit", "--json")
    return json.loads(out), json.loads(audit)


def test_rollout_lifecycle(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = toolkit(
        capsys, "rollout", "set", "prediction-session", "10", "--reason", "canary"
    )
    assert code == 0 and "10%" in out
    code, out, _ = toolkit(capsys, "rollout", "status", "--json")
    rows = {r["job"]: r for r in json.loads(out)}
    assert rows["prediction-session"]["percentage"] == 10.0
    assert rows["prediction-session"]["updated_by"] == "tester"
    assert rows["daily-batch"]["version"] == 0  # never rolled out
    assert (
        toolkit(capsys, "rollout", "set", "prediction-session", "50.5", "--reason", "more")[0] == 0
    )
    code, out, _ = toolkit(
        capsys, "rollout", "rollback", "prediction-session", "--reason", "errors"
    )
    assert code == 0 and "rolled back" in out and "0%" in out
    code, out, _ = toolkit(capsys, "audit", "--json")
    entries = json.loads(out)
    assert [e["action"] for e in entries] == ["rollout.rollback", "rollout.set", "rollout.set"]
    assert entries[0]["before"]["percentage"] == 50.5 and entries[0]["reason"] == "errors"
    assert all(e["actor"] == "tester" for e in entries)
    code, out, _ = toolkit(capsys, "rollout", "status")
    assert code == 0 and "prediction-session" in out and "daily-batch" in out


def test_allow_deny_explain(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        toolkit(capsys, "rollout", "allow", "prediction-session", "beta", "--reason", "b")[0] == 0
    )
    code, out, _ = toolkit(capsys, "rollout", "explain", "prediction-session", "beta", "--json")
    data = json.loads(out)
    assert code == 0 and data["allowed"] and data["backend"] == "inngest"
    # in the app that never enabled the target (inngest): allowed, but routed to legacy, saying why
    code = main(
        ["--app", UNCONFIGURED, "rollout", "explain", "prediction-session", "beta", "--json"]
    )
    data = json.loads(capsys.readouterr()[0])
    assert code == 0 and data["allowed"] and data["backend"] == "legacy"
    assert "not configured" in data["reason"]
    assert toolkit(capsys, "rollout", "deny", "prediction-session", "beta", "--reason", "b")[0] == 0
    code, out, _ = toolkit(capsys, "rollout", "explain", "prediction-session", "beta", "--json")
    data = json.loads(out)
    assert data["denied"] and not data["allowed"] and data["reason"] == "TARGETING_MATCH (deny)"
    code, out, _ = toolkit(capsys, "rollout", "explain", "prediction-session", "someone")
    assert code == 0 and "bucket" in out


def test_runs_list_and_show(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    tk = build()
    try:
        tk.credits.grant("u1", 20)
        handle = tk.dispatch(
            "prediction-session", {"models": ["a"], "market_id": "m"}, key="u1", account="u1"
        )
    finally:
        tk.close()
    code, out, _ = toolkit(capsys, "runs", "list", "--job", "prediction-session", "--json")
    runs = json.loads(out)
    assert code == 0 and [r["id"] for r in runs] == [str(handle.run_id)]
    assert runs[0]["status"] == "COMPLETED" and runs[0]["backend"] == "legacy"
    code, out, _ = toolkit(capsys, "runs", "list", "--status", "failed", "--since", "1h", "--json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = toolkit(capsys, "runs", "show", str(handle.run_id), "--json")
    detail = json.loads(out)
    assert [s["name"] for s in detail["steps"]] == ["predict-a"]
    assert [e["kind"] for e in detail["ledger"]] == ["DEBIT"]
    code, out, _ = toolkit(capsys, "runs", "show", str(handle.run_id))
    assert code == 0 and "predict-a" in out and "DEBIT" in out
    code, out, _ = toolkit(capsys, "credits", "balance", "u1", "--json")
    assert json.loads(out) == {
        "account": "u1",
        "balance": 15,
        "grants": 20,
        "debits": 5,
        "refunds": 0,
        "consistent": True,
    }


@pytest.mark.parametrize("bad", ["-1", "100.01", "abc", "nan", "inf", "12.345", ""])
def test_bad_percentages_exit_2_and_change_nothing(
    cli_env: str, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    assert toolkit(capsys, "rollout", "set", "prediction-session", "20", "--reason", "x")[0] == 0
    before = state(capsys)
    code, out, err = toolkit(capsys, "rollout", "set", "prediction-session", bad, "--reason", "x")
    assert code == 2
    assert err.startswith("error: invalid percentage") and err.count("\n") == 1, err
    assert "Traceback" not in err + out
    assert state(capsys) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["rollout", "set", "nope", "10", "--reason", "x"], "unknown job 'nope'"),
        (["rollout", "rollback", "nope", "--reason", "x"], "unknown job 'nope'"),
        (["rollout", "explain", "nope", "k"], "unknown job 'nope'"),
        (["runs", "show", "not-a-uuid"], "unknown run id"),
        (["runs", "show", "7f2c8a52-8d0e-4d5e-9d7c-0a4b7f6f2c11"], "unknown run id"),
        (["runs", "list", "--status", "DONE"], "unknown status"),
        (["runs", "list", "--since", "yesterday"], "invalid --since"),
        (["rollout", "set", "prediction-session", "10"], "Missing option '--reason'"),
        (["rollout", "set", "prediction-session", "10", "--reason", " "], "a reason is required"),
        (
            [
                "rollout",
                "set",
                "prediction-session",
                "10",
                "--reason",
                "x",
                "--expect-version",
                "7",
            ],
            "not 7",
        ),
        (["credits", "grant", "u1", "-5"], "credit amount must be an integer from 1"),
        (["no-such-command"], "No such command"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    cli_env: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    before = state(capsys)
    code, out, err = toolkit(capsys, *args)
    expected = 1 if "--expect-version" in args else 2  # a lost optimistic lock is a failure
    assert code == expected, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err + out
    assert state(capsys) == before


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_colon", "malformed --app"),
        ("tests.missing_module:tk", "cannot import"),
        ("tests.cli_app:nothing_here", "has no attribute"),
        ("tests.cli_app:not_a_toolkit", "not a toolkit.Toolkit"),
        ("tests.cli_app:build;rm", "malformed --app"),
    ],
)
def test_malformed_app_exits_2(
    cli_env: str, capsys: pytest.CaptureFixture[str], spec: str, message: str
) -> None:
    code = main(["--app", spec, "rollout", "status"])
    _, err = capsys.readouterr()
    assert code == 2 and message in err and err.count("\n") == 1


def test_console_script_and_env_app(cli_env: str) -> None:
    """The installed entry point, TOOLKIT_APP, and exit codes as a shell script sees them."""
    env = {**os.environ, "TOOLKIT_APP": APP, "PYTHONPATH": str(ROOT)}
    exe = [sys.executable, "-m", "toolkit"]
    ok = subprocess.run(
        [*exe, "rollout", "set", "daily-batch", "10", "--reason", "cron canary"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [*exe, "rollout", "set", "daily-batch", "nan", "--reason", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: invalid percentage")
    assert "Traceback" not in bad.stderr
    status = subprocess.run(
        [*exe, "rollout", "status", "daily-batch", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(status.stdout)[0]["percentage"] == 10.0


def test_db_upgrade_on_empty_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert main(["--database-url", url, "runs", "list"]) == 2  # no file: refused, not created
    assert "run `toolkit db upgrade`" in capsys.readouterr().err
    assert not (tmp_path / "new.db").exists()
    (tmp_path / "new.db").touch()  # a file without the toolkit's tables
    assert main(["--database-url", url, "runs", "list"]) == 1
    assert "run 'toolkit db upgrade'" in capsys.readouterr().err
    assert main(["--database-url", url, "db", "upgrade"]) == 0
    assert main(["--database-url", url, "db", "current", "--json"]) == 0
    revision = json.loads(capsys.readouterr().out.split("\n", 1)[1])["revision"]
    db = Database(url)
    try:  # the newest migration, whichever it is
        assert revision == ScriptDirectory.from_config(db.alembic_config()).get_current_head()
    finally:
        db.dispose()
