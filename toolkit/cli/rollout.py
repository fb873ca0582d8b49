"""``toolkit rollout``: status, set, rollback, allow/deny, kill/unkill, explain; and the plan's
gates, advance, pause, resume, watch (:mod:`toolkit.cli.rollout_plan`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import click

from toolkit.app import Toolkit
from toolkit.cli import rollout_plan
from toolkit.cli.context import CliContext, pass_ctx
from toolkit.cli.render import Col, console, emit_json, fit, percentage
from toolkit.config import LEGACY
from toolkit.flags.bucketing import bucket
from toolkit.flags.provider import RolloutProvider
from toolkit.store.rollouts import RolloutView

_REASON = click.option("--reason", required=True, help="Why: recorded in the audit log.")
_ACTOR = click.option("--actor", default=None, help="Who (default $TOOLKIT_ACTOR or the OS user).")


class _Version(click.ParamType[int]):
    """A rollout version as a person types it: plain digits (``1_0`` or ``-1`` is a typo)."""

    name = "version"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        text = str(value)
        if not text.isascii() or not text.isdigit() or len(text) > 10 or int(text) >= 2**31:
            self.fail(f"{text!r} is not a rollout version (a number from 0)", param, ctx)
        return int(text)


VERSION = _Version()


@click.group("rollout")
def group() -> None:
    """Percentage rollouts of jobs to their new backend."""


def _views(tk: Toolkit, job: str | None) -> list[tuple[str, str, RolloutView]]:
    """(job, target, rollout) for one job, every registered job, or every stored rollout."""
    if job is not None:
        spec = tk.jobs.get(job)
        return [(spec.name, spec.target, tk.rollout(spec.name))]
    stored = {v.flag_key: v for v in tk.rollouts.all()}
    rows = [(s.name, s.target, tk.rollout(s.name)) for s in tk.jobs]
    rows += [(k, v.on_variant, v) for k, v in sorted(stored.items()) if k not in tk.jobs]
    return rows


@group.command("status")
@click.argument("job", required=False)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def status(obj: CliContext, job: str | None, as_json: bool) -> None:
    """Where each job's rollout stands and what is in flight on each backend."""
    tk = obj.toolkit
    views = _views(tk, job)
    flight = tk.runs.in_flight(job)
    if as_json:
        emit_json(
            [
                {
                    **v.as_dict(),
                    "job": name,
                    "target": target,
                    "in_flight": {b: c for (j, b), c in flight.items() if j == name},
                }
                for name, target, v in views
            ]
        )
        return
    if not views:
        console().print("[dim]no jobs: load your app with --app module:attr or set TOOLKIT_APP[/]")
        return

    def drain(name: str) -> str:
        parts = [
            f"{b}: {c['QUEUED']}q/{c['RUNNING']}r" for (j, b), c in flight.items() if j == name
        ]
        return ", ".join(parts) or "[dim]none[/]"

    columns = [
        Col("job"),
        Col("target"),
        Col("rollout", justify="right"),
        Col("state"),
        Col("in flight", fold=True, width=16),
        Col("ver", justify="right", drop=2),
        Col("allow", justify="right", drop=3),
        Col("deny", justify="right", drop=3),
        Col("updated", fold=True, width=16, drop=1),
    ]
    rows = [
        (
            name,
            target,
            percentage(v.percentage),
            ("[bold red]killed[/]" if v.killed else "active")
            + (" [yellow]paused[/]" if v.paused else ""),
            drain(name),
            v.version,
            len(v.allow),
            len(v.deny),
            f"{v.updated_by or '-'} {v.updated_at:%Y-%m-%d %H:%M}"
            if v.updated_at
            else "[dim]never[/]",
        )
        for name, target, v in views
    ]
    console().print(fit("Rollouts", columns, rows))


_JSON = click.option("--json", "as_json", is_flag=True, help="The resulting rollout as JSON.")


def written(job: str, v: RolloutView) -> dict[str, Any]:
    """A write command's ``--json``: the resulting rollout, raw values, and whether it changed."""
    return {"job": job, **v.as_dict(), "changed": v.changed}


def _show(job: str, v: RolloutView, verb: str, as_json: bool) -> None:
    if as_json:
        emit_json(written(job, v))
        return
    head = f"[green]{verb}[/]" if v.changed else "[dim]unchanged[/] (already so)"
    console().print(
        f"{head} {v.flag_key}: {percentage(v.percentage)} "
        f"({'killed' if v.killed else 'active'}, version {v.version})"
    )


@group.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("job")
@click.argument("percent", metavar="PERCENT")
@_REASON
@_ACTOR
@click.option(
    "--expect-version",
    type=VERSION,
    default=None,
    help="Fail unless the rollout is at this version (optimistic lock).",
)
@_JSON
@pass_ctx
def set_(
    obj: CliContext,
    job: str,
    percent: str,
    reason: str,
    actor: str | None,
    expect_version: int | None,
    as_json: bool,
) -> None:
    """Route PERCENT (0-100, two decimals) of JOB's keys to its new backend."""
    view = obj.toolkit.set_rollout(
        job, percent, reason=reason, actor=actor, expected_version=expect_version
    )
    _show(job, view, "set", as_json)


@group.command("rollback")
@click.argument("job")
@_REASON
@_ACTOR
@click.option(
    "--ramp", is_flag=True, help="One step of the plan down (50% → 10% → 0%) instead of 0% at once."
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def rollback(
    obj: CliContext, job: str, reason: str, actor: str | None, ramp: bool, as_json: bool
) -> None:
    """Send all new work of JOB to legacy at once; in-flight runs drain where they are.

    Prints what is still in flight on the new backend and the follow-up commands
    (recover, cleanup orphans, refund).
    """
    rollout_plan.rollback_command(obj, job, reason, actor, ramp, as_json)


def _listed(which: str, present: bool):  # type: ignore[no-untyped-def]
    verb = which if present else f"un{which}"

    @click.argument("job")
    @click.argument("key")
    @_REASON
    @_ACTOR
    @_JSON
    @pass_ctx
    def command(
        obj: CliContext, job: str, key: str, reason: str, actor: str | None, as_json: bool
    ) -> None:
        view = obj.toolkit.set_listed(
            job, key, which=which, present=present, reason=reason, actor=actor
        )
        _show(job, view, f"{verb} {key!r} on", as_json)

    effect = "always the new backend" if which == "allow" else "always legacy"
    command.__doc__ = (
        f"Put KEY on JOB's {which} list ({effect})."
        if present
        else f"Take KEY off JOB's {which} list."
    )
    return group.command(verb)(command)


for _which in ("allow", "deny"):
    for _present in (True, False):
        _listed(_which, _present)


@group.command("kill")
@click.argument("job")
@_REASON
@_ACTOR
@_JSON
@pass_ctx
def kill(obj: CliContext, job: str, reason: str, actor: str | None, as_json: bool) -> None:
    """Everything to legacy, allow list included, until unkilled."""
    _show(job, obj.toolkit.set_killed(job, True, reason=reason, actor=actor), "killed", as_json)


@group.command("unkill")
@click.argument("job")
@_REASON
@_ACTOR
@_JSON
@pass_ctx
def unkill(obj: CliContext, job: str, reason: str, actor: str | None, as_json: bool) -> None:
    """Lift a kill; the percentage and lists apply again."""
    _show(job, obj.toolkit.set_killed(job, False, reason=reason, actor=actor), "unkilled", as_json)


@group.command("explain")
@click.argument("job")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def explain(obj: CliContext, job: str, key: str, as_json: bool) -> None:
    """Which backend KEY gets for JOB, and why."""
    tk = obj.toolkit
    route = tk.route(job, key)
    data: dict[str, Any] = route.as_dict()
    if isinstance(tk.provider, RolloutProvider):
        view = tk.rollout(job)
        data.update(
            percentage=float(view.percentage),
            state=view.state,
            bucket=bucket(view.flag_key, key),
            threshold=view.basis_points,
            allowed=key in view.allow,
            denied=key in view.deny,
        )
    backend = tk.backends.get(route.backend)
    problem = backend.problem() if backend is not None else None
    if problem is not None:  # enabled but misconfigured: every hand-over fails
        falls_back = tk.jobs.get(job).fallback == LEGACY
        lands = LEGACY if falls_back else route.backend
        then = "falls back to legacy" if falls_back else "fails (fallback='fail')"
        why = f"backend {route.backend!r} is misconfigured, every run {then}: {problem}"
        data.update(backend=lands, reason=why, error=problem)
        route = replace(route, backend=lands, reason=why, error=problem)
    if as_json:
        emit_json(data)
        return
    out = console()
    colour = "dim" if route.backend == LEGACY else "green"
    out.print(f"{job} / {key!r} → [{colour}]{route.backend}[/] ({route.reason})")
    if "bucket" in data:
        side = "<" if data["bucket"] < data["threshold"] else "≥"
        out.print(
            f"  bucket {data['bucket']} {side} {data['threshold']} of 10000 "
            f"(rollout {data['percentage']:g}%, {data['state']})"
        )
    if route.error:
        out.print(f"  [red]flag error:[/] {route.error}")


rollout_plan.register(group)
