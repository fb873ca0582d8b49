"""What ``toolkit recover``, ``toolkit cleanup orphans`` and ``toolkit refund`` share: options,
the run with its progress bar, and the report (rich tables, or ``--json``).

Each command lives in a module of its own (``recover``, ``cleanup``, ``refund``) so the root
group registers it like any other; the logic is in :mod:`toolkit.maintenance.operations`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import click

from toolkit.cli.context import CliContext, parse_since
from toolkit.cli.render import Col, console, emit_json, err_console, fit, status, when
from toolkit.maintenance.operations import DEFAULT_MAX_RECOVERIES, DEFAULT_OLDER_THAN, sweeper
from toolkit.maintenance.sweep import BULK_BATCH, DEFAULT_BATCH, MAX_BATCH, Filters, Report

F = TypeVar("F", bound=Callable[..., Any])


def sweep_options(fn: F) -> F:
    """Filters, batching, dry run / --apply, --json: the same on every maintenance command."""
    options = [
        click.option("--job", help="Only runs of this job."),
        click.option("--backend", help="Only runs recorded on this backend."),
        click.option("--since", help="Only runs created since: 24h, 15m, 7d, or an ISO time."),
        click.option(
            "--limit",
            type=click.IntRange(min=1),
            help="Change at most this many runs (oldest first).",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(1, MAX_BATCH),
            help=f"Runs per transaction (and per audit entry); default {BULK_BATCH} for "
            f"refund and cleanup, {DEFAULT_BATCH} for recover.",
        ),
        click.option(
            "--apply", is_flag=True, help="Act. Without it: a dry run that changes nothing."
        ),
        click.option("--reason", help="Why: recorded in the audit log."),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable report."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def stale_options(fn: F) -> F:
    """What "stuck" means for recover and cleanup."""
    fn = click.option(
        "--max-recoveries",
        type=click.IntRange(0, 1000),
        default=DEFAULT_MAX_RECOVERIES,
        show_default=True,
        help="Re-dispatches per run before recovery gives up (and cleanup takes over).",
    )(fn)
    return click.option(
        "--older-than",
        default=DEFAULT_OLDER_THAN,
        show_default=True,
        help="Stuck means no start (QUEUED) or no heartbeat (RUNNING) for this long.",
    )(fn)


def execute(
    obj: CliContext,
    action: str,
    *,
    job: str | None,
    backend: str | None,
    since: str | None,
    limit: int | None,
    batch_size: int | None,
    apply: bool,
    reason: str | None,
    as_json: bool,
    **parameters: Any,
) -> None:
    """Check the input (bad input raises before anything changes), run, report."""
    tk = obj.toolkit
    filters = Filters(job, backend, parse_since(since), limit, batch_size)
    sweep = sweeper(tk.maintenance, action, filters, reason=reason, **parameters)
    stderr = err_console()
    if as_json or not stderr.is_terminal:
        report = sweep.run(apply=apply)
    else:  # only on a terminal: --json and cron jobs do not import the progress bar
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        verb = "applying" if apply else "dry run"
        with Progress(
            TextColumn(f"[bold]{action}[/] {verb}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=stderr,
            transient=True,
        ) as bar:
            task = bar.add_task(action, total=sweep.count())
            report = sweep.run(apply=apply, progress=lambda n: bar.advance(task, n))
    if as_json:
        emit_json(report.as_dict())
    else:
        render(report, tk.runs.short_ids(c.run_id for c in report.sample))


def render(report: Report, short: dict[uuid.UUID, str] | None = None) -> None:
    """A sweep's summary at 80 columns: what changed, what was skipped and why, a sample
    (``short``: the sample's short ids, which ``toolkit runs show`` accepts)."""
    out = console()
    short = short or {}
    title = report.action.capitalize()
    if report.sample:
        shown = len(report.sample)
        more = report.changed + sum(report.skipped.values()) - shown
        rows = [
            (
                short.get(c.run_id, str(c.run_id)),
                c.job,
                c.backend,
                status(c.status),
                when(c.created_at),
                f"[dim]skipped: {c.skipped}[/]" if c.skipped else c.change,
                c.credits or "",
            )
            for c in report.sample
        ]
        caption = f"… and {more} more (totals below)" if more > 0 else None
        runs = fit(
            f"{title}: {'changed' if report.applied else 'would change'}",
            [
                Col("run id"),
                Col("job"),
                Col("backend"),
                Col("status"),
                Col("created", drop=2),
                Col("change", fold=True, width=16),
                Col("credits", drop=1, justify="right"),
            ],
            rows,
            width=out.width,
        )
        runs.caption = caption
        out.print(runs)
    totals = fit(
        f"{title}: totals per job and backend",
        [
            Col("job"),
            Col("backend"),
            Col("change", fold=True, width=16),
            Col("runs", justify="right"),
            Col("credits", justify="right"),
        ],
        [
            (job, backend, change, t.runs, t.credits)
            for (job, backend, change), t in sorted(report.totals.items())
        ]
        + [("[bold]total[/]", "", "", f"[bold]{report.changed}[/]", f"[bold]{report.credits}[/]")],
        width=out.width,
    )
    out.print(totals)
    for why, count in sorted(report.skipped.items()):
        out.print(f"[yellow]skipped {count}[/]: {why}")
    for outcome, count in sorted(report.outcomes.items()):
        style = "red" if outcome.startswith("not submitted") else "green"
        out.print(f"[{style}]{count}[/] {outcome}")
    inline = report.ran_inline()
    if report.applied and (inline["completed"] or inline["failed"]):
        failed = f"[red]{inline['failed']} failed[/]" if inline["failed"] else "0 failed"
        out.print(f"ran inline: [green]{inline['completed']} completed[/], {failed}")
    if report.applied:
        out.print(
            f"[green]{report.action}: {report.changed} runs changed[/], {report.credits} credits, "
            f"{report.batches} batch{'' if report.batches == 1 else 'es'} "
            f"(one audit entry each) in {report.elapsed:.2f} s"
        )
    else:
        out.print(
            f"[bold]dry run[/]: nothing changed; {report.changed} runs would change "
            f"({report.credits} credits). Re-run with [bold]--apply[/] to act."
        )
