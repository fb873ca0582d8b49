"""``toolkit rollout`` commands of the rollout plan: gates, advance, pause, resume, watch, and the
aftermath of a rollback. Registered on the ``rollout`` group by :mod:`toolkit.cli.rollout`."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from decimal import Decimal

import click

from toolkit.app import Toolkit
from toolkit.cli.context import CliContext, pass_ctx
from toolkit.cli.render import (
    Col,
    console,
    emit_json,
    err_console,
    fit,
    percentage,
    status,
    when,
)
from toolkit.cli.report import gates_table, verdict
from toolkit.config import parse_duration
from toolkit.rollout.controller import (
    GatesFailed,
    GatesInconclusive,
    RollbackResult,
    RolledBack,
    RolloutController,
    StepEvaluation,
    Tick,
)
from toolkit.rollout.gates import Action, Verdict, step_text
from toolkit.store.models import utcnow


def controller(
    tk: Toolkit,
    *,
    clock: Callable[[], datetime] = utcnow,
    sleep: Callable[[float], None] | None = None,
) -> RolloutController:
    """The controller wired from the Toolkit's parts: only the CLI and the app know the Toolkit,
    the controller receives what it reads and writes."""
    return RolloutController(
        db=tk.db,
        jobs=tk.jobs,
        flags=tk.flags,
        runs=tk.runs,
        audit=tk.audit,
        clock=clock,
        sleep=sleep,
    )


_REASON = click.option("--reason", required=True, help="Why: recorded in the audit log.")
_ACTOR = click.option("--actor", default=None, help="Who (default $TOOLKIT_ACTOR or the OS user).")
_JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def render_evaluation(ev: StepEvaluation) -> None:
    """Print the gates of the current step, with where it goes next and whether paused or killed."""
    st = ev.state
    began = f"since {when(st.step_began)}" if st.step_began else "no rollout change yet"
    nxt = f"{step_text(st.next_step)}" if st.next_step is not None else "none (last step)"
    flags = " [yellow](paused)[/]" if st.view.paused else ""
    flags += " [bold red](killed)[/]" if st.view.killed else ""
    console().print(
        gates_table(
            f"Gates for {st.job} at {step_text(st.current)} → {nxt} on {st.backend}, {began}: "
            f"{ev.verdict.value}{flags}",
            ev.result.gates,
        )
    )


def render_rollback(
    result: RollbackResult, verb: str, short: Callable[[Iterable[uuid.UUID]], dict[uuid.UUID, str]]
) -> None:
    """Print the move, what is left draining on the new backend, and the clean-up commands."""
    out = console()
    if result.view.changed:
        out.print(
            f"[green]{verb}[/] {result.job}: {step_text(result.before)} → "
            f"{percentage(result.view.percentage)} (version {result.view.version})"
        )
    else:
        out.print(
            f"[dim]unchanged[/] {result.job}: already at {percentage(result.view.percentage)} "
            f"(version {result.view.version})"
        )
    if not result.in_flight:
        out.print("nothing in flight on the new backend.")
    for backend, counts in sorted(result.in_flight.items()):
        out.print(
            f"[yellow]draining on {backend}:[/] {counts['QUEUED']} queued, "
            f"{counts['RUNNING']} running"
        )
    if result.runs:
        ids = short(r.id for r in result.runs)  # short ids: `runs show` takes them
        out.print(
            fit(
                "In flight on the new backend (they finish where they are)",
                [Col("run"), Col("backend"), Col("status"), Col("created", drop=1)],
                [(ids[r.id], r.backend, status(r.status), when(r.created_at)) for r in result.runs],
            )
        )
    out.print("next (each is a dry run until --apply):")
    for command in result.follow_ups:
        out.print(f"  [bold]{command}[/]")


def rollback_command(
    obj: CliContext, job: str, reason: str, actor: str | None, ramp: bool, as_json: bool
) -> None:
    """Body of ``rollout rollback`` (``ramp``: to the previous step instead of 0 %)."""
    result = controller(obj.toolkit).rollback(job, reason=reason, actor=actor, ramp=ramp)
    if as_json:
        emit_json(result.as_dict())
    else:
        render_rollback(
            result, "ramped down" if ramp else "rolled back", obj.toolkit.runs.short_ids
        )


@click.command("gates")
@click.argument("job")
@_JSON
@pass_ctx
def gates(obj: CliContext, job: str, as_json: bool) -> None:
    """Evaluate JOB's gates on the current step's runs, changing nothing."""
    ev = controller(obj.toolkit).evaluate(job)
    if as_json:
        emit_json(ev.as_dict())
    else:
        render_evaluation(ev)
    if ev.verdict is Verdict.FAIL:  # scripts and CI read the exit code (1), as documented
        failing = "; ".join(f"{g.name}: {g.number}" for g in ev.result.failing())
        raise GatesFailed(f"gates failing for {job}: {failing}", ev)


@click.command("advance")
@click.argument("job")
@click.option("--force", is_flag=True, help="Advance even if the gates do not pass (audited).")
@click.option("--reason", default=None, help="Why; required with --force.")
@_ACTOR
@_JSON
@pass_ctx
def advance(
    obj: CliContext, job: str, force: bool, reason: str | None, actor: str | None, as_json: bool
) -> None:
    """Move JOB one step along its plan when the gates pass; otherwise refuse (exit 1)."""
    try:
        moved = controller(obj.toolkit).advance(job, force=force, reason=reason, actor=actor)
    except (GatesFailed, GatesInconclusive) as exc:
        if as_json:
            emit_json(exc.evaluation.as_dict())
        else:
            render_evaluation(exc.evaluation)
        raise
    if as_json:
        emit_json(moved.as_dict())
        return
    if moved.evaluation is not None:
        render_evaluation(moved.evaluation)
    how = "[bold yellow]forced[/] " if moved.forced else ""
    started = " (rollout started: no gates at 0%)" if moved.evaluation is None else ""
    console().print(
        f"[green]advanced[/] {how}{job}: {step_text(moved.before.current)} → "
        f"{percentage(moved.view.percentage)} (version {moved.view.version}){started}"
    )


def _hold(paused: bool):  # type: ignore[no-untyped-def]
    verb = "pause" if paused else "resume"

    @click.argument("job")
    @_REASON
    @_ACTOR
    @_JSON
    @pass_ctx
    def command(obj: CliContext, job: str, reason: str, actor: str | None, as_json: bool) -> None:
        view = controller(obj.toolkit).set_paused(job, paused, reason=reason, actor=actor)
        if as_json:
            emit_json({"job": job, **view.as_dict(), "changed": view.changed})
            return
        head = f"[green]{verb}d[/]" if view.changed else "[dim]unchanged[/] (already so)"
        console().print(
            f"{head} {job}: {percentage(view.percentage)} "
            f"({'paused' if view.paused else 'not paused'}, version {view.version})"
        )

    command.__doc__ = (
        "Hold JOB's rollout where it is: advance and watch will not move it forward."
        if paused
        else "Let advance and watch move JOB's rollout forward again."
    )
    return click.command(verb)(command)


def _tick_line(tick: Tick) -> str:
    ev = tick.evaluation
    at = datetime.now().astimezone().strftime("%H:%M:%S")
    head = f"{at} #{tick.number} {step_text(ev.state.current)} {verdict(ev.verdict)}"
    if tick.advanced_to is not None:
        return f"{head} → [green]advanced to {step_text(tick.advanced_to)}[/]"
    if tick.action is Action.ROLLBACK:
        return f"{head} → [bold red]rolling back[/]"
    worst = ev.result.failing() or ev.result.inconclusive()
    detail = "; ".join(f"{g.name}: {g.number}" for g in worst) or "all gates pass"
    streak = f" [red](failing {tick.streak} in a row)[/]" if tick.streak else ""
    return f"{head}{streak} [dim]{detail}[/]"


class _Terminated(Exception):
    """SIGTERM (systemd, Kubernetes) during watch: stop as cleanly as Ctrl-C does."""


@contextlib.contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """Turn SIGTERM into :class:`_Terminated` while watching (main thread only: signal handlers
    can only be set there), then restore the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(_signum: int, _frame: object) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def emit_json_line(data: object) -> None:
    """One compact JSON object per line (``watch --json``), flushed for a reader's pipe."""
    click.echo(json.dumps(data, default=_plain, separators=(",", ":")))
    sys.stdout.flush()


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


@click.command("watch")
@click.argument("job")
@click.option("--interval", default="30s", show_default=True, help="Time between evaluations.")
@click.option("--auto-advance", is_flag=True, help="Advance one step whenever the gates pass.")
@click.option(
    "--failures",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Consecutive failing evaluations that trigger the rollback.",
)
@click.option(
    "--max-evaluations",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after N (default: run until Ctrl-C).",
)
@_ACTOR
@_JSON
@pass_ctx
def watch(
    obj: CliContext,
    job: str,
    interval: str,
    auto_advance: bool,
    failures: int,
    max_evaluations: int | None,
    actor: str | None,
    as_json: bool,
) -> None:
    """Evaluate JOB's gates on a timer; roll back (and exit 1) after --failures failing ones."""
    seconds = parse_duration(interval, what="--interval")
    ctl = controller(obj.toolkit)
    out = console()
    seen = {"evaluations": 0}

    def on_tick(tick: Tick) -> None:
        seen["evaluations"] = tick.number
        if as_json:
            emit_json_line(
                {
                    "evaluation": tick.number,
                    "action": tick.action.value,
                    "streak": tick.streak,
                    "advanced_to": tick.advanced_to,  # a Decimal: a number in the JSON
                    **tick.evaluation.as_dict(),
                }
            )
        else:
            out.print(_tick_line(tick))

    try:
        with _stopped_by_sigterm():
            result = ctl.watch(
                job,
                interval=seconds,
                auto_advance=auto_advance,
                failures=failures,
                max_evaluations=max_evaluations,
                actor=actor,
                on_tick=on_tick,
            )
    except (KeyboardInterrupt, _Terminated) as exc:
        how = "SIGTERM" if isinstance(exc, _Terminated) else "Ctrl-C"
        # stderr under --json, so stdout stays one JSON object per line
        (err_console() if as_json else out).print(
            f"watch stopped ({how}) after {seen['evaluations']} evaluations; "
            f"{job} stays where it is."
        )
        return
    if result.rollback is not None:
        if as_json:
            emit_json_line(result.rollback.as_dict())
        else:
            if result.last is not None:
                render_evaluation(result.last)
            render_rollback(result.rollback, "rolled back", obj.toolkit.runs.short_ids)
        raise RolledBack(
            f"watch rolled {job} back from {step_text(result.rollback.before)} after {failures} "
            f"consecutive failing evaluations"
        )
    if not as_json:
        out.print(f"watch done: {result.evaluations} evaluations, {job} not rolled back.")


def register(group: click.Group) -> None:
    """Add the plan commands (gates, advance, pause, resume, watch) to the ``rollout`` group."""
    for command in (gates, advance, _hold(True), _hold(False), watch):
        group.add_command(command)
