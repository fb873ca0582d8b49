"""The rollout controller on SQLite and PostgreSQL: advance through the plan on the gates,
refuse with the failing numbers, force (audited), pause/resume, rollback at once or down the
steps, and the watch loop (rollback after consecutive failures, never on INCONCLUSIVE)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

import toolkit.rollout.controller
from tests.report_fixture import Seed, arm, insert_runs, last_audit
from tests.support.stub_backend import enable
from toolkit import Toolkit
from toolkit.cli import main
from toolkit.cli.rollout_plan import controller as wired
from toolkit.errors import ConfigError, InvalidInput, VersionConflict
from toolkit.rollout.controller import (
    GatesFailed,
    GatesInconclusive,
    RolloutController,
    RolloutKilled,
    RolloutPaused,
    StepComplete,
    Tick,
)
from toolkit.rollout.gates import Verdict
from toolkit.rollout.plan import RolloutPlan
from toolkit.rollout.report import build
from toolkit.store.models import CreditEntry, Run, utcnow

JOB = "prediction-session"
PLAN = RolloutPlan(min_runs=20, min_soak="10m")
ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.test_rollout_controller:build_app"


def register(tk: Toolkit, plan: RolloutPlan = PLAN) -> None:
    @tk.job(JOB, target="inngest", rollout=plan)
    def session(ctx: object, payload: object) -> None:
        return None

    enable(tk, "inngest")  # a rollout above 0 % needs its target enabled


def build_app() -> Toolkit:
    """The app the CLI tests load: no soak, so the real clock suffices."""
    tk = Toolkit(os.environ["TOOLKIT_DATABASE_URL"], legacy_mode="blocking")
    register(tk, RolloutPlan(min_runs=20, min_soak=0))
    return tk


def in_an_hour() -> datetime:
    return utcnow() + timedelta(hours=1)


def controller(tk: Toolkit, clock: Callable[[], datetime] = in_an_hour) -> RolloutController:
    return wired(tk, clock=clock, sleep=lambda _s: None)


def seed_step(
    tk: Toolkit,
    *,
    new_failed: int = 0,
    legacy_failed: int = 10,
    new: int = 40,
    legacy: int = 200,
    queue: float = 1.0,
    every: timedelta = timedelta(microseconds=1),
) -> None:
    """Runs created just after the current step began (the last audited percentage change).

    The audit entry carries the real time, so the runs are created within microseconds of it:
    a step begun later (the next advance) does not see them. The controllers under test run
    an hour ahead, so the soak time has passed.
    """
    began = wired(tk).state(JOB).step_began
    assert began is not None
    start = began + timedelta(microseconds=1)
    insert_runs(
        tk,
        JOB,
        arm("inngest", new, start=start, every=every, failed=new_failed, queue=queue)
        + arm("legacy", legacy, start=start, every=every, failed=legacy_failed),
    )


def percentage(tk: Toolkit) -> Decimal:
    return tk.rollout(JOB).percentage


# --- the plan -------------------------------------------------------------------------------------


def test_plan_steps_and_validation(tk: Toolkit) -> None:
    plan = RolloutPlan(steps=(1, 5, 25, 50, 100))
    assert plan.next_step(Decimal(0)) == 1 and plan.next_step(Decimal(5)) == 25
    assert plan.next_step(Decimal(20)) == 25 and plan.next_step(Decimal(100)) is None
    assert plan.previous_step(Decimal(25)) == 5 and plan.previous_step(Decimal(1)) == 0
    for bad in (
        {"steps": (10, 5)},
        {"steps": (0, 10)},
        {"steps": (10, 101)},
        {"steps": ()},
        {"min_runs": 0},
        {"margin": 0.7},
        {"min_soak": "soon"},
        {"pass_confidence": 1.0},
    ):
        with pytest.raises(ConfigError):
            RolloutPlan(**bad)

    @tk.job("dict-plan", rollout={"steps": [20, 100], "min_runs": 50})
    def a(ctx: object, payload: object) -> None:
        return None

    @tk.job("bad-plan", rollout="fast")
    def b(ctx: object, payload: object) -> None:
        return None

    ctl = controller(tk)
    assert ctl.plan("dict-plan").step_values == (Decimal(20), Decimal(100))
    assert ctl.plan("dict-plan").min_runs == 50
    with pytest.raises(ConfigError, match="must be a RolloutPlan"):
        ctl.plan("bad-plan")


def test_step_began_follows_percentage_and_state_changes_only(tk: Toolkit) -> None:
    register(tk)
    ctl = controller(tk)
    assert ctl.state(JOB).step_began is None
    tk.set_rollout(JOB, 10, reason="canary")
    began = ctl.state(JOB).step_began
    assert began is not None
    tk.set_listed(JOB, "beta", which="allow", reason="tester")
    ctl.set_paused(JOB, True, reason="lunch")
    tk.set_rollout(JOB, 10, reason="same value again")
    assert ctl.state(JOB).step_began == began
    tk.set_killed(JOB, True, reason="incident")
    assert ctl.state(JOB).step_began != began


def test_step_began_reads_the_audit_log_a_page_at_a_time(tk: Toolkit) -> None:
    """More list edits than a page of the audit reader: the move behind them is still found,
    and the reader returns only this flag's rollout entries, newest first."""
    register(tk)
    tk.set_rollout(JOB, 10, reason="canary")
    began = wired(tk).state(JOB).step_began
    for i in range(7):
        tk.set_listed(JOB, f"tester-{i}", which="allow", reason="beta")
    tk.set_rollout(JOB, 10, reason="same value")  # a no-op: not a move, and not audited
    flag = tk.jobs.get(JOB).flag_key
    entries = list(tk.audit.newest(flag, action_prefix="rollout.", page=3))
    assert len(entries) == 8 and [e.id for e in entries] == sorted(
        (e.id for e in entries), reverse=True
    )
    assert {e.target for e in entries} == {flag}
    assert list(tk.audit.newest(flag, action_prefix="nothing.", page=3)) == []
    assert wired(tk).state(JOB).step_began == began == entries[-1].at


# --- advance --------------------------------------------------------------------------------------


def test_advance_walks_the_plan_on_passing_gates(tk: Toolkit) -> None:
    register(tk)
    ctl = controller(tk)
    moved = ctl.advance(JOB)
    assert moved.evaluation is None and percentage(tk) == 10  # starting needs no gates
    assert last_audit(tk).action == "rollout.advance"
    with pytest.raises(GatesInconclusive, match="not enough evidence yet: soak time") as exc:
        controller(tk, clock=utcnow).advance(JOB)  # fresh step: no soak, no runs
    assert exc.value.evaluation.verdict is Verdict.INCONCLUSIVE and percentage(tk) == 10

    seed_step(tk)  # new 40/40, legacy 190/200
    moved = ctl.advance(JOB, reason="dashboards look fine")
    assert moved.view.percentage == 50 and moved.evaluation is not None
    assert moved.evaluation.verdict is Verdict.PASS
    entry = last_audit(tk)
    assert entry.action == "rollout.advance" and entry.after is not None
    assert entry.after["percentage"] == 50
    assert entry.reason is not None and entry.reason.startswith(
        "gates passed at 10%; dashboards look fine: soak time pass"
    )
    with pytest.raises(GatesInconclusive, match="runs per arm: new 0, legacy 0"):
        ctl.advance(JOB)  # the 50% step has its own runs: none yet
    seed_step(tk, new=100, legacy=100, legacy_failed=5)
    assert ctl.advance(JOB).view.percentage == 100
    with pytest.raises(StepComplete, match="last step"):
        ctl.advance(JOB)


def test_failing_gates_refuse_with_their_numbers(tk: Toolkit) -> None:
    register(tk)
    ctl = controller(tk)
    ctl.advance(JOB)
    seed_step(tk, new_failed=20, legacy_failed=4, queue=30.0)
    version = tk.rollout(JOB).version
    with pytest.raises(GatesFailed) as exc:
        ctl.advance(JOB)
    message = str(exc.value)
    assert message.startswith("advance refused, gates failing: success rate: new 50.0% vs")
    assert "queue-to-start p95: 30.00 s" in message
    failing = [g.name for g in exc.value.evaluation.result.failing()]
    assert failing == ["success rate", "queue-to-start p95"]
    assert tk.rollout(JOB).version == version and percentage(tk) == 10


def test_a_credit_error_fails_even_on_little_data(tk: Toolkit) -> None:
    register(tk)
    ctl = controller(tk)
    ctl.advance(JOB)
    began = ctl.state(JOB).step_began
    assert began is not None
    insert_runs(
        tk,
        JOB,
        [Seed("inngest", "FAILED", began + timedelta(seconds=1), account="a", debit=5)],
    )
    ev = ctl.evaluate(JOB)
    assert ev.verdict is Verdict.FAIL
    assert [g.name for g in ev.result.failing()] == ["credit errors"]


def test_force_needs_a_reason_and_is_audited(tk: Toolkit) -> None:
    register(tk)
    ctl = controller(tk)
    ctl.advance(JOB)
    seed_step(tk, new_failed=20)
    with pytest.raises(InvalidInput, match="--force needs --reason"):
        ctl.advance(JOB, force=True)
    moved = ctl.advance(JOB, force=True, reason="known flaky upstream, fixed in 1.2")
    assert moved.forced and moved.view.percentage == 50
    entry = last_audit(tk)
    assert entry.action == "rollout.force_advance"
    assert entry.reason is not None
    assert entry.reason.startswith("forced past FAIL gates at 10%; known flaky upstream")


def test_pause_and_kill_hold_the_rollout(tk: Toolkit) -> None:
    register(tk)
    ctl = controller(tk)
    ctl.advance(JOB)
    seed_step(tk)
    view = ctl.set_paused(JOB, True, reason="holiday freeze")
    assert view.paused and last_audit(tk).action == "rollout.pause"
    with pytest.raises(RolloutPaused, match="paused"):
        ctl.advance(JOB)
    result = ctl.watch(JOB, auto_advance=True, max_evaluations=2)
    assert result.advanced == [] and result.last is not None
    assert result.last.verdict is Verdict.PASS and percentage(tk) == 10
    ctl.set_paused(JOB, False, reason="freeze over")
    assert last_audit(tk).action == "rollout.resume"
    tk.set_killed(JOB, True, reason="incident")
    with pytest.raises(RolloutKilled):
        ctl.advance(JOB)


def test_a_pause_during_the_evaluation_wins_over_the_advance(tk: Toolkit) -> None:
    """Pause bumps the rollout's version, so an advance evaluated before it cannot land."""
    register(tk)
    controller(tk).advance(JOB)
    seed_step(tk)
    calls = {"n": 0}

    def pausing_clock() -> datetime:
        calls["n"] += 1
        if calls["n"] == 1:
            wired(tk).set_paused(JOB, True, reason="operator, concurrently")
        return in_an_hour()

    with pytest.raises(VersionConflict):
        controller(tk, clock=pausing_clock).advance(JOB)
    assert percentage(tk) == 10 and tk.rollout(JOB).paused


# --- rollback -------------------------------------------------------------------------------------


def test_rollback_at_once_or_down_the_steps(tk: Toolkit) -> None:
    register(tk)
    ctl = controller(tk)
    tk.set_rollout(JOB, 50, reason="half")
    began = ctl.state(JOB).step_began
    assert began is not None
    insert_runs(tk, JOB, arm("inngest", 3, start=began, running=2, queued=1))
    result = ctl.rollback(JOB, reason="p95 creeping", ramp=True)
    assert (result.before, result.view.percentage) == (Decimal(50), Decimal(10))
    assert last_audit(tk).action == "rollout.ramp_down"
    assert result.in_flight == {"inngest": {"QUEUED": 1, "RUNNING": 2}}
    assert sorted(r.status for r in result.runs) == ["QUEUED", "RUNNING", "RUNNING"]
    assert result.follow_ups == [
        f"toolkit recover --job {JOB} --backend inngest",
        f"toolkit cleanup orphans --job {JOB} --backend inngest",
        f"toolkit refund --job {JOB}",
    ]
    assert ctl.rollback(JOB, reason="more", ramp=True).view.percentage == 0
    tk.set_rollout(JOB, 50, reason="again")
    result = ctl.rollback(JOB, reason="errors")
    assert result.view.percentage == 0 and last_audit(tk).action == "rollout.rollback"


# --- watch ----------------------------------------------------------------------------------------


def test_watch_rolls_back_after_consecutive_failures(
    tk: Toolkit, caplog: pytest.LogCaptureFixture
) -> None:
    register(tk)
    ctl = controller(tk)
    ctl.advance(JOB)
    seed_step(tk, new_failed=25, legacy_failed=2)
    ticks: list[Tick] = []
    with caplog.at_level(logging.ERROR, logger="toolkit.rollout"):
        result = ctl.watch(JOB, failures=2, max_evaluations=10, on_tick=ticks.append)
    assert result.rollback is not None and result.evaluations == 2
    assert [t.streak for t in ticks] == [1, 2] and percentage(tk) == 0
    entry = last_audit(tk)
    assert entry.action == "rollout.rollback" and entry.actor.startswith("watch:")
    assert entry.reason is not None
    assert entry.reason.startswith("watch: 2 consecutive failing evaluations: success rate")
    assert any("rolling back" in r.getMessage() for r in caplog.records)


def test_watch_never_rolls_back_on_inconclusive(tk: Toolkit) -> None:
    register(tk)
    ctl = controller(tk)
    ctl.advance(JOB)
    seed_step(tk, new=5, new_failed=5, legacy=5, legacy_failed=0)  # awful, but 5 runs
    result = ctl.watch(JOB, failures=1, max_evaluations=4)
    assert result.rollback is None and result.evaluations == 4
    assert result.last is not None and result.last.verdict is Verdict.INCONCLUSIVE
    assert percentage(tk) == 10


def test_watch_auto_advances_one_step_per_pass(tk: Toolkit) -> None:
    register(tk)
    ctl = controller(tk)
    ctl.advance(JOB)
    seed_step(tk)
    ticks: list[Tick] = []
    result = ctl.watch(JOB, auto_advance=True, max_evaluations=3, on_tick=ticks.append)
    assert result.advanced == [Decimal(50)] and percentage(tk) == 50
    assert [t.advanced_to for t in ticks] == [Decimal(50), None, None]
    assert [t.evaluation.verdict for t in ticks[1:]] == [Verdict.INCONCLUSIVE] * 2


def test_watch_checks_its_arguments(tk: Toolkit) -> None:
    register(tk)
    ctl = controller(tk)
    for kwargs in ({"interval": 0}, {"failures": 0}, {"max_evaluations": 0}):
        with pytest.raises(InvalidInput):
            # each dict sets one int option; mypy checks the dict against every keyword
            ctl.watch(JOB, **kwargs)  # type: ignore[arg-type]


# --- CLI ------------------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--app", APP, *args])
    out, err = capsys.readouterr()
    return code, out, err


def cli_seed(**kwargs: object) -> None:
    tk = build_app()
    try:
        # forwarded as given (the CLI tests pass counts); seed_step's own types apply at runtime
        seed_step(tk, **kwargs)  # type: ignore[arg-type]
    finally:
        tk.close()


def snapshot(capsys: pytest.CaptureFixture[str]) -> tuple[object, object]:
    code, out, _ = run(capsys, "rollout", "status", JOB, "--json")
    assert code == 0
    _, audit, _ = run(capsys, "audit", "--json")
    return json.loads(out), json.loads(audit)


def test_cli_advance_refuses_then_advances(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "rollout", "advance", JOB)
    assert code == 0 and "0% → 10%" in out and "rollout started" in out, err
    code, out, err = run(capsys, "rollout", "advance", JOB)
    assert code == 1 and "INCONCLUSIVE" in out
    assert err.startswith("error: advance refused, not enough evidence yet: runs per arm")
    assert err.count("\n") == 1
    cli_seed(new_failed=20, legacy_failed=2)
    code, out, err = run(capsys, "rollout", "advance", JOB, "--json")
    assert code == 1 and json.loads(out)["verdict"] == "FAIL"
    assert err.startswith("error: advance refused, gates failing: success rate: new 50.0%")
    code, out, err = run(capsys, "rollout", "gates", JOB)  # FAIL exits 1, as documented
    assert code == 1 and "success rate" in out and "FAIL" in out
    assert err.startswith("error: gates failing for") and err.count("\n") == 1
    code, out, err = run(capsys, "rollout", "advance", JOB, "--force", "--reason", "drill")
    assert code == 0 and "forced" in out and "10% → 50%" in out, err
    code, out, _ = run(capsys, "audit", "--json")
    assert json.loads(out)[0]["action"] == "rollout.force_advance"


def test_cli_pause_resume_and_ramped_rollback(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "rollout", "set", JOB, "50", "--reason", "half")[0] == 0
    code, out, _ = run(capsys, "rollout", "pause", JOB, "--reason", "freeze")
    assert code == 0 and "paused" in out
    code, out, err = run(capsys, "rollout", "advance", JOB)
    assert code == 1 and "paused: resume it" in err
    code, out, _ = run(capsys, "rollout", "status")
    assert "paused" in out
    assert run(capsys, "rollout", "resume", JOB, "--reason", "thaw")[0] == 0
    code, out, err = run(capsys, "rollout", "rollback", JOB, "--ramp", "--reason", "slow")
    assert code == 0 and "ramped down" in out and "50% → " in out and "10%" in out, err
    for follow_up in ("toolkit recover --job", "toolkit cleanup orphans", "toolkit refund --job"):
        assert follow_up in out
    code, out, _ = run(capsys, "rollout", "rollback", JOB, "--reason", "stop", "--json")
    data = json.loads(out)
    assert code == 0 and (data["from"], data["to"]) == (10.0, 0.0)


def test_cli_watch_rolls_back_and_exits_1(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "rollout", "advance", JOB)[0] == 0
    cli_seed(new_failed=25, legacy_failed=2)
    code, out, err = run(
        capsys,
        "rollout",
        "watch",
        JOB,
        "--interval",
        "1ms",
        "--failures",
        "2",
        "--max-evaluations",
        "5",
    )
    assert code == 1
    assert err.startswith("error: watch rolled prediction-session back from 10% after 2")
    assert "#1 10% FAIL" in out and "rolling back" in out and "rolled back" in out
    assert "toolkit refund --job prediction-session" in out
    code, out, _ = run(capsys, "rollout", "status", JOB, "--json")
    assert json.loads(out)[0]["percentage"] == 0.0


def test_cli_watch_stops_cleanly_on_ctrl_c(
    cli_env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(capsys, "rollout", "advance", JOB)[0] == 0
    before = snapshot(capsys)

    class CtrlCDuringSleep:
        """``time`` as the controller sees it: Ctrl-C arrives during its sleep. Only the
        controller's module is patched; other threads of the process keep the real sleep."""

        def __getattr__(self, name: str) -> object:
            return getattr(time, name)

        @staticmethod
        def sleep(_seconds: float) -> None:
            raise KeyboardInterrupt

    monkeypatch.setattr(toolkit.rollout.controller, "time", CtrlCDuringSleep())
    code, out, err = run(capsys, "rollout", "watch", JOB, "--auto-advance")
    assert code == 0, err
    assert "#1 10% INCONCLUSIVE" in out and "watch stopped (Ctrl-C) after 1 evaluations" in out
    assert snapshot(capsys) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["rollout", "watch", JOB, "--interval", "abc"], "invalid --interval 'abc'"),
        (["rollout", "watch", JOB, "--failures", "0"], "Invalid value for '--failures'"),
        (["rollout", "watch", "nope"], "unknown job 'nope'"),
        (["rollout", "advance", "nope"], "unknown job 'nope'"),
        (["rollout", "advance", JOB, "--force"], "--force needs --reason"),
        (["rollout", "pause", JOB], "Missing option '--reason'"),
        (["rollout", "resume", JOB, "--reason", " "], "a reason is required"),
        (["rollout", "rollback", JOB, "--ramp"], "Missing option '--reason'"),
        (["rollout", "gates", "nope"], "unknown job 'nope'"),
    ],
)
def test_cli_bad_input_exits_2_and_changes_nothing(
    cli_env: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert run(capsys, "rollout", "set", JOB, "10", "--reason", "canary")[0] == 0
    before = snapshot(capsys)
    code, out, err = run(capsys, *args)
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in out + err
    assert snapshot(capsys) == before


# --- the report and advance decide alike ----------------------------------------------------------

# The report's scorecard presents these rollout gates under the seed's metric names.
SHARED = {
    "completion rate same or better": "success rate",
    "queue-to-processing p95 < 10 s": "queue-to-start p95",
    "no increase in credit-handling errors": "credit errors",
}


@pytest.mark.parametrize(
    ("new_errors", "legacy_errors", "credit"),
    [
        (0, 0, Verdict.PASS),
        (1, 10, Verdict.FAIL),  # 2.5 % on the new arm, 5 % on legacy: "same or better" once
        (4, 2, Verdict.FAIL),  # 10 % against 1 %: a higher rate
    ],
)
def test_report_scorecard_and_advance_agree_on_the_same_runs(
    tk: Toolkit, new_errors: int, legacy_errors: int, credit: Verdict
) -> None:
    """Failed debited runs without a refund are credit errors; the scorecard's verdicts are the
    advance gates' verdicts on the same runs, and advance refuses whenever the report fails."""
    register(tk)
    ctl = controller(tk)
    ctl.advance(JOB)
    began = ctl.state(JOB).step_began
    assert began is not None
    start = began + timedelta(microseconds=1)
    every = timedelta(microseconds=1)
    money: dict[str, Any] = {"account": "a", "debit": 5}
    insert_runs(
        tk,
        JOB,
        arm("inngest", 40, start=start, every=every, failed=new_errors, **money)
        + arm("legacy", 200, start=start, every=every, failed=max(legacy_errors, 10), **money),
    )
    if legacy_errors < 10:  # the other failed legacy runs were refunded
        with tk.db.transaction() as s:
            failed = s.scalars(
                select(Run.id).where(Run.backend == "legacy", Run.status == "FAILED")
            ).all()
            for rid in failed[legacy_errors:]:
                s.execute(
                    insert(CreditEntry).values(
                        account="a", run_id=rid, kind="REFUND", amount=5, reason="seed"
                    )
                )
    now = in_an_hour()
    ev = controller(tk, clock=lambda: now).evaluate(JOB)
    [job] = build(tk.db, tk.jobs, job=JOB, since=began, until=now + timedelta(microseconds=1)).jobs
    report = {SHARED[g.name]: g.verdict for g in job.scorecard if g.name in SHARED}
    advance = {g.name: g.verdict for g in ev.result.gates if g.name in SHARED.values()}
    assert report == advance and len(report) == 3
    keys = {g.key: g.verdict for g in job.scorecard}  # the same rules, whatever the names
    assert all(keys[g.key] is g.verdict for g in ev.result.gates if g.key in keys)
    assert report["credit errors"] is credit
    assert job.arm("inngest").credit_errors == new_errors
    assert job.arm("legacy").credit_errors == legacy_errors
    if credit is Verdict.FAIL:
        with pytest.raises(GatesFailed, match="credit errors"):
            controller(tk, clock=lambda: now).advance(JOB)


def test_rollback_lists_the_runs_in_flight_by_short_id_within_80_columns(
    tk: Toolkit, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is left draining after a rollback is listed by the short ids ``runs show`` takes,
    in a table that fits a pipe's 80 columns."""
    from tests.jobs_fixture import SESSION, Calls, ParkedBackend, register_session_job
    from toolkit.cli.rollout_plan import controller, render_rollback

    tk.use_backend("parked", ParkedBackend(tk))
    register_session_job(tk, Calls(), name="parked-job", cost=0, target="parked")
    tk.set_rollout("parked-job", 100, reason="test")
    run_ids = [tk.dispatch("parked-job", SESSION).run_id for _ in range(3)]
    monkeypatch.setenv("COLUMNS", "80")
    result = controller(tk).rollback("parked-job", reason="stop")
    render_rollback(result, "rolled back", tk.runs.short_ids)
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    shorts = tk.runs.short_ids(run_ids)
    assert all(shorts[r] in out and str(r) not in out for r in run_ids), out
    assert all(tk.runs.resolve(s) == r for r, s in shorts.items())
