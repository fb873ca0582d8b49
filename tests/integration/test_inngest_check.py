"""``toolkit inngest check``: registration vs declarations vs the committed snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.backends.inngest.check import Difference, compare
from toolkit.cli import main

APP = "tests.support.inngest_app:build"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def snapshot(tmp_path: Path, sqlite_template: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The check reads no runs: one SQLite database is enough for it."""
    db = tmp_path / "toolkit.db"
    db.write_bytes(sqlite_template.read_bytes())
    monkeypatch.setenv("TOOLKIT_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(ROOT)
    return tmp_path / "inngest-functions.json"


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--app", APP, "inngest", "check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_snapshot_round_trip_and_drift(
    snapshot: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = check(capsys, "--snapshot", str(snapshot))
    assert code == 2 and "--write-snapshot" in err and len(err.strip().splitlines()) == 1

    code, out, _ = check(capsys, "--snapshot", str(snapshot), "--write-snapshot")
    assert code == 0 and "snapshot written" in out
    saved = json.loads(snapshot.read_text())
    assert saved["app_id"] == "check-app"
    predict = saved["functions"]["check-app-predict"]
    assert predict == {
        "name": "predict",
        "triggers": [{"event": "toolkit/predict.requested"}],
        "retries": 4,
        "idempotency": "event.data.run_id",
        "concurrency": [{"limit": 5}],
        "timeouts.finish": 600,
        "throttle.limit": 20,
        "throttle.period": 60,
        "throttle.burst": 1,
    }
    assert set(saved["functions"]) == {
        f"check-app-{job}{suffix}"
        for job in ("predict", "daily-batch", "summarize")
        for suffix in ("", "-failure", "-cancelled")
    }  # local-only targets celery: no Inngest function

    code, out, _ = check(capsys, "--snapshot", str(snapshot))
    assert code == 0 and "no drift" in out
    assert "'openrouter' is shared by predict, summarize" in out.replace("\n", " ")

    # Someone changes the code: the batch's timeout moves; the snapshot no longer agrees.
    monkeypatch.setenv("TEST_BATCH_TIMEOUT", "2h")
    code, out, err = check(capsys, "--snapshot", str(snapshot), "--json")
    assert code == 1 and "difference" in err
    report = json.loads(out)
    assert report["ok"] is False
    assert report["drift"] == [
        {
            "function": "check-app-daily-batch",
            "field": "timeouts.finish",
            "kind": "snapshot",
            "declared": 7200.0,
            "registered": 7200,
            "snapshot": 3600,
        }
    ]
    code, out, _ = check(capsys, "--snapshot", str(snapshot))
    assert code == 1 and "timeouts.finish" in out and "snapshot" in out

    # A function that disappeared from the snapshot is new; one only in the snapshot, removed.
    saved["functions"]["check-app-gone"] = saved["functions"].pop("check-app-summarize")
    snapshot.write_text(json.dumps(saved))
    monkeypatch.delenv("TEST_BATCH_TIMEOUT")
    code, out, _ = check(capsys, "--snapshot", str(snapshot), "--json")
    kinds = {(d["function"], d["kind"]) for d in json.loads(out)["drift"]}
    assert code == 1 and kinds == {("check-app-summarize", "new"), ("check-app-gone", "removed")}


def test_bad_input_is_one_line_and_exit_2(
    snapshot: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snapshot.write_text("{not json")
    code, _, err = check(capsys, "--snapshot", str(snapshot))
    assert code == 2 and "cannot read the snapshot" in err and len(err.strip().splitlines()) == 1
    code = main(["inngest", "check"])  # no app
    _, err = capsys.readouterr()
    assert code == 2 and "--app" in err
    code = main(["--app", "tests.cli_app:build", "inngest", "check"])
    _, err = capsys.readouterr()
    assert code == 2 and "use_backend('inngest')" in err


def test_code_drift_is_reported() -> None:
    declared = {"f": {"retries": 3, "timeouts.finish": 900.0}}
    registered = {"f": {"retries": 4, "timeouts.finish": 900}}
    assert compare(declared, registered, registered) == [
        Difference("f", "retries", "code", declared=3, registered=4)
    ]


def test_serve_bad_input_is_exit_2(snapshot: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve"]) == 2 and "--app" in capsys.readouterr().err
    assert main(["--app", APP, "serve", "--port", "0"]) == 2
    assert "--port" in capsys.readouterr().err


def test_check_tables_fit_80_columns_without_breaking_a_function_id(
    snapshot: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert check(capsys, "--snapshot", str(snapshot), "--write-snapshot")[0] == 0
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("TEST_BATCH_TIMEOUT", "2h")  # drift: the second table too
    code, out, _ = check(capsys, "--snapshot", str(snapshot))
    assert code == 1 and "Drift" in out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    for function in ("check-app-predict", "check-app-daily-batch-cancelled"):
        assert function in out, out  # whole on one line, never folded
