"""Rollout commands do exactly what they say (issue 11 B): an unenabled target is refused, a
no-op changes nothing, percentages are what a person types, a rollback always wins, and the
gates/watch exit codes and JSON are what the docs promise."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_toolkit
from tests.integration.test_rollout_controller import APP, JOB, cli_seed, run, snapshot
from toolkit import Toolkit
from toolkit.cli import main
from toolkit.cli.rollout_plan import controller
from toolkit.errors import BackendNotEnabled, InvalidPercentage, VersionConflict
from toolkit.store.rollouts import RolloutStore, parse_percentage

ROOT = Path(__file__).resolve().parents[2]
UNENABLED = "tests.integration.test_rollout_safety:build_unenabled"
NO_EVENT_KEY = "tests.integration.test_rollout_safety:build_without_event_key"


def _job(tk: Toolkit) -> Toolkit:
    @tk.job(JOB, target="inngest")
    def session(ctx: object, payload: object) -> None:
        return None

    return tk


def build_unenabled() -> Toolkit:
    """The job targets inngest, which this app never enables."""
    return _job(Toolkit(os.environ["TOOLKIT_DATABASE_URL"], legacy_mode="blocking"))


def build_without_event_key() -> Toolkit:
    """Inngest enabled in production mode without an event key: every send would fail."""
    tk = build_unenabled()
    tk.use_backend("inngest", is_production=True, signing_key="signkey-prod-00")
    return tk


def audit_count(tk: Toolkit) -> int:
    return len(list(tk.audit.newest(tk.jobs.get(JOB).flag_key, action_prefix="rollout.")))


# --- a target backend the app never enabled -------------------------------------------------


def test_percentage_toward_an_unenabled_backend_is_refused(tk: Toolkit) -> None:
    _job(tk)
    with pytest.raises(BackendNotEnabled, match=r"'inngest'.*use_backend\('inngest'\)"):
        tk.set_rollout(JOB, 10, reason="canary")
    with pytest.raises(BackendNotEnabled):
        controller(tk).advance(JOB)
    assert tk.rollout(JOB).version == 0 and audit_count(tk) == 0
    assert not tk.set_rollout(JOB, 0, reason="allowed, already in effect").changed
    assert tk.set_listed(JOB, "beta", which="allow", reason="a list is no percentage").changed


def test_cli_set_toward_an_unenabled_backend_exits_2(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for args in (["set", JOB, "100"], ["advance", JOB]):
        code = main(["--app", UNENABLED, "rollout", *args, "--reason", "go"])
        out, err = capsys.readouterr()
        assert code == 2 and err.startswith("error: job 'prediction-session' targets backend")
        assert "use_backend('inngest')" in err and err.count("\n") == 1 and not out
    code = main(["--app", UNENABLED, "rollout", "status", JOB, "--json"])
    status = json.loads(capsys.readouterr()[0])[0]
    assert code == 0 and status["percentage"] == 0 and status["version"] == 0


def test_explain_and_send_name_the_missing_event_key(
    cli_env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("INNGEST_EVENT_KEY", "INNGEST_DEV"):
        monkeypatch.delenv(var, raising=False)
    tk = build_without_event_key()
    try:
        tk.set_rollout(JOB, 100, reason="all in")
        handle = tk.dispatch(JOB, {}, key="k")
    finally:
        tk.close()
    assert handle.backend == "legacy" and handle.fallback_from == "inngest"
    assert handle.route_reason is not None and "INNGEST_EVENT_KEY" in handle.route_reason
    code = main(["--app", NO_EVENT_KEY, "rollout", "explain", JOB, "k", "--json"])
    data = json.loads(capsys.readouterr()[0])
    assert code == 0 and data["backend"] == "legacy"
    assert "misconfigured" in data["reason"] and "INNGEST_EVENT_KEY" in data["reason"]


# --- no-op changes change nothing -------------------------------------------------------------


def test_no_op_changes_write_nothing(tk: Toolkit) -> None:
    _job(tk)
    tk.use_backend("inngest", is_production=False)
    ctl = controller(tk)
    assert not ctl.rollback(JOB, reason="at 0 already").view.changed
    assert tk.rollout(JOB).version == 0 and audit_count(tk) == 0
    assert tk.set_rollout(JOB, 10, reason="canary").changed
    noops: list[Callable[[], Any]] = [
        lambda: tk.set_rollout(JOB, "10.00", reason="same"),
        lambda: tk.set_listed(JOB, "absent", which="allow", present=False, reason="x"),
        lambda: tk.set_killed(JOB, False, reason="not killed"),
        lambda: ctl.set_paused(JOB, False, reason="not paused"),
    ]
    for change in noops:
        assert not change().changed
    tk.set_killed(JOB, True, reason="incident")
    ctl.set_paused(JOB, True, reason="freeze")
    assert not tk.set_killed(JOB, True, reason="again").changed
    assert not ctl.set_paused(JOB, True, reason="again").changed
    assert tk.rollout(JOB).version == 3 and audit_count(tk) == 3


def test_cli_no_op_says_unchanged(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "rollout", "set", JOB, "10", "--reason", "canary")[0] == 0
    before = snapshot(capsys)
    for args in (
        ["set", JOB, "10"],
        ["pause", JOB],
        ["resume", JOB],
        ["unallow", JOB, "nobody"],
        ["unkill", JOB],
    ):
        if args[0] == "pause":
            continue  # pausing is a change; checked below
        code, out, err = run(capsys, "rollout", *args, "--reason", "again")
        assert code == 0 and "unchanged" in out, (args, out, err)
    assert snapshot(capsys) == before
    assert run(capsys, "rollout", "pause", JOB, "--reason", "freeze")[0] == 0
    code, out, _ = run(capsys, "rollout", "pause", JOB, "--reason", "freeze", "--json")
    data = json.loads(out)
    assert code == 0 and data["changed"] is False and data["paused"] is True
    assert run(capsys, "rollout", "rollback", JOB, "--reason", "down")[0] == 0
    code, out, _ = run(capsys, "rollout", "rollback", JOB, "--reason", "again")
    assert code == 0 and "unchanged" in out


# --- percentages as a person types them -----------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["1_0", "1e1", "1E1", "+5", "-0", "0x10", "NaN", "Infinity", "-inf", "5 %", "1.2.3", "٣"],
)
def test_unusual_numbers_are_not_percentages(bad: str) -> None:
    with pytest.raises(InvalidPercentage):
        parse_percentage(bad)


@pytest.mark.parametrize(
    "good, value",
    [("10", "10"), ("12.5", "12.5"), (" 50% ", "50"), (".5", "0.5"), ("100.00", "100"), (7, "7")],
)
def test_plain_numbers_are_percentages(good: object, value: str) -> None:
    assert parse_percentage(good) == Decimal(value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e-5, Decimal("NaN"), True, None])
def test_non_finite_or_odd_values_are_refused(bad: object) -> None:
    with pytest.raises(InvalidPercentage):
        parse_percentage(bad)


def test_cli_underscored_percentage_exits_2(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(capsys)
    code, out, err = run(capsys, "rollout", "set", JOB, "1_0", "--reason", "typo")
    assert code == 2 and err.startswith("error: invalid percentage '1_0'") and not out
    assert snapshot(capsys) == before


# --- a rollback always wins -----------------------------------------------------------------


def _concurrent_write_during_first_attempt(
    monkeypatch: pytest.MonkeyPatch, other: Callable[[], object]
) -> list[BaseException]:
    """The first write of this thread waits until ``other`` (another thread, its own
    connection) has committed a change: this thread's read is then stale."""
    original = RolloutStore._write
    me = threading.get_ident()
    fired: list[BaseException] = []

    def write(s: Any, before: Any, after: Any) -> None:
        if threading.get_ident() == me and not fired:
            fired.append(RuntimeError("fired"))
            worker = threading.Thread(target=other)
            worker.start()
            worker.join(10)
        original(s, before, after)

    monkeypatch.setattr(RolloutStore, "_write", staticmethod(write))
    return fired


@pytest.mark.postgres
def test_rollback_wins_over_a_concurrent_change(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tk = _job(make_toolkit(pg_url))
    other = _job(make_toolkit(pg_url))
    try:
        tk.use_backend("inngest", is_production=False)
        other.use_backend("inngest", is_production=False)
        tk.set_rollout(JOB, 10, reason="canary")
        fired = _concurrent_write_during_first_attempt(
            monkeypatch, lambda: other.set_rollout(JOB, 50, reason="concurrent")
        )
        result = controller(tk).rollback(JOB, reason="emergency")
        assert fired and result.view.percentage == 0 and result.view.changed
        assert tk.rollout(JOB).percentage == 0 and tk.rollout(JOB).version == 3
        actions = [
            e.action for e in tk.audit.newest(tk.jobs.get(JOB).flag_key, action_prefix="rollout.")
        ]
        assert actions[:2] == ["rollout.rollback", "rollout.set"]
    finally:
        other.close()
        tk.close()


@pytest.mark.postgres
def test_expect_version_stays_optimistic(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    tk = _job(make_toolkit(pg_url))
    other = _job(make_toolkit(pg_url))
    try:
        tk.use_backend("inngest", is_production=False)
        other.use_backend("inngest", is_production=False)
        v = tk.set_rollout(JOB, 10, reason="canary").version
        _concurrent_write_during_first_attempt(
            monkeypatch, lambda: other.set_rollout(JOB, 20, reason="concurrent")
        )
        with pytest.raises(VersionConflict):
            tk.set_rollout(JOB, 50, reason="mine", expected_version=v)
        assert tk.rollout(JOB).percentage == 20
    finally:
        other.close()
        tk.close()


@pytest.mark.postgres
def test_rollbacks_and_advances_in_threads_end_at_zero(pg_url: str) -> None:
    """Real threads, no hooks: whichever commits first, every rollback returns 0 % and never a
    conflict; the optimistic sets may lose, and the last word is a rollback's."""
    tk = _job(make_toolkit(pg_url))
    tk.use_backend("inngest", is_production=False)
    try:
        errors: list[BaseException] = []
        for _ in range(5):
            v = tk.set_rollout(JOB, 10, reason="canary").version
            start = threading.Barrier(4)

            def rollback(start: threading.Barrier = start) -> None:
                start.wait()
                try:
                    assert controller(tk).rollback(JOB, reason="r").view.percentage == 0
                except BaseException as exc:  # noqa: BLE001 - collected for the main thread
                    errors.append(exc)

            def optimistic(version: int = v, start: threading.Barrier = start) -> None:
                start.wait()
                with contextlib.suppress(VersionConflict):
                    tk.set_rollout(JOB, 50, reason="o", expected_version=version)

            threads = [threading.Thread(target=f) for f in (rollback, rollback, rollback)]
            threads.append(threading.Thread(target=optimistic))
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert not errors, errors
            assert tk.rollout(JOB).percentage in (0, 50)
            if tk.rollout(JOB).percentage == 50:  # the set committed last: it read first
                assert tk.rollout(JOB).version == v + 1 + 1
    finally:
        tk.close()


# --- gates, watch and JSON ---------------------------------------------------------------------


def test_write_commands_print_the_rollout_as_json(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, field, value in (
        (["set", JOB, "12.5"], "percentage", 12.5),
        (["allow", JOB, "beta"], "allow", ["beta"]),
        (["deny", JOB, "gamma"], "deny", ["gamma"]),
        (["undeny", JOB, "gamma"], "deny", []),
        (["kill", JOB], "state", "killed"),
        (["unkill", JOB], "state", "active"),
        (["pause", JOB], "paused", True),
        (["resume", JOB], "paused", False),
    ):
        code, out, err = run(capsys, "rollout", *args, "--reason", "r", "--json")
        data = json.loads(out)
        assert code == 0 and data[field] == value and data["changed"] is True, (args, err)
        assert data["job"] == JOB and isinstance(data["version"], int)
    code, out, _ = run(capsys, "rollout", "rollback", JOB, "--reason", "r", "--json")
    data = json.loads(out)
    assert code == 0 and data["from"] == 12.5 and data["to"] == 0 and data["changed"] is True
    assert data["rollout"]["percentage"] == 0


def test_watch_json_is_one_raw_object_per_line(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "rollout", "advance", JOB)[0] == 0
    cli_seed(new_failed=0, legacy_failed=10)
    code, out, err = run(
        capsys, "rollout", "watch", JOB, "--interval", "1ms", "--max-evaluations", "2", "--json"
    )
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2, (out, err)
    for n, line in enumerate(lines, 1):
        tick = json.loads(line)
        assert tick["evaluation"] == n and tick["percentage"] == 10
        for gate in tick["gates"]:
            assert "number" not in gate and isinstance(gate["verdict"], str)
        runs = next(g for g in tick["gates"] if g["rule"] == "runs")
        assert isinstance(runs["new"], int) and isinstance(runs["legacy"], int)


def test_watch_stops_cleanly_on_sigterm(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "rollout", "advance", JOB)[0] == 0
    env = {**os.environ, "TOOLKIT_APP": APP, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit", "rollout", "watch", JOB, "--interval", "1m", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the first evaluation: watch is sleeping now
        assert json.loads(first)["evaluation"] == 1
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "watch stopped (SIGTERM) after 1 evaluations" in err and not out
