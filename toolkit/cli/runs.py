"""``toolkit runs``: the run ledger, whichever backend ran each run."""

from __future__ import annotations

import click
from rich.panel import Panel

from toolkit.cli.context import CliContext, parse_since, pass_ctx
from toolkit.cli.render import Col, console, emit_json, fit, seconds, status, when


@click.group("runs")
def group() -> None:
    """Inspect runs."""


@group.command("list")
@click.option("--job", help="Only runs of this job.")
@click.option(
    "--status",
    "status_",
    help="Only runs in this status: QUEUED, RUNNING, COMPLETED, FAILED or CANCELLED.",
)
@click.option("--backend", help="Only runs routed to this backend (legacy, celery, inngest).")
@click.option("--since", help="Only runs created since: 24h, 15m, 7d, or an ISO timestamp.")
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=50,
    show_default=True,
    help="At most this many runs, newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="A JSON array on stdout.")
@pass_ctx
def list_(
    obj: CliContext,
    job: str | None,
    status_: str | None,
    backend: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Most recent runs first."""
    runs = obj.toolkit.runs.list(
        job=job, status=status_, backend=backend, since=parse_since(since), limit=limit
    )
    if as_json:
        emit_json([r.as_dict() for r in runs])
        return
    short = obj.toolkit.runs.short_ids(r.id for r in runs)
    console().print(
        fit(
            f"Runs ({len(runs)})",
            [
                Col("run id"),
                Col("job"),
                Col("status"),
                Col("backend"),
                Col("att", drop=5, justify="right"),
                Col("created", drop=3),
                Col("queue", drop=6, justify="right"),
                Col("duration", drop=4, justify="right"),
                Col("error", fold=True, width=16, drop=2),
            ],
            [
                (
                    short[r.id],
                    r.job,
                    status(r.status),
                    r.backend
                    + (f" [yellow](from {r.fallback_from})[/]" if r.fallback_from else ""),
                    r.attempts,
                    when(r.created_at),
                    seconds(r.queue_seconds),
                    seconds(r.duration_seconds),
                    (r.error or "")[:60],
                )
                for r in runs
            ],
        )
    )


@group.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@pass_ctx
def show(obj: CliContext, run_id: str, as_json: bool) -> None:
    """One run: its route, steps, timings and credit ledger entries.

    RUN_ID is the full id or a unique prefix of at least 4 hex digits (the short ids that
    `runs list` shows)."""
    detail = obj.toolkit.runs.detail(run_id)
    if as_json:
        emit_json(detail.as_dict())
        return
    r = detail.run
    lines = [
        f"job        {r.job}",
        f"status     {status(r.status)}   attempts {r.attempts}   recoveries {r.recoveries}",
        f"backend    {r.backend}"
        + (f"  [yellow]fallback from {r.fallback_from}[/]" if r.fallback_from else ""),
        f"route      {r.route_reason or '-'}   key {r.targeting_key}",
        f"idempotency {r.idempotency_key or '-'}   account {r.account or '-'}   cost {r.cost}",
        f"created    {when(r.created_at)}   queue {seconds(r.queue_seconds)}   "
        f"duration {seconds(r.duration_seconds)}",
    ]
    if r.error:
        lines.append(f"[red]error      {r.error}[/]")
    if detail.dead_letter:
        lines.append("[red]dead letter written[/]")
    out = console()
    out.print(Panel("\n".join(lines), title=str(r.id), title_align="left"))
    out.print(
        fit(
            "Steps",
            [
                Col("step"),
                Col("status"),
                Col("attempt", drop=2, justify="right"),
                Col("started", drop=1),
                Col("took", justify="right"),
                Col("error", fold=True, width=16),
            ],
            [
                (
                    s.name,
                    status(s.status),
                    s.attempt,
                    when(s.started_at),
                    seconds(
                        (s.finished_at - s.started_at).total_seconds() if s.finished_at else None
                    ),
                    (s.error or "")[:60],
                )
                for s in detail.steps
            ],
        )
    )
    out.print(
        fit(
            "Credits",
            [
                Col("kind"),
                Col("account", fold=True, width=16),
                Col("amount", justify="right"),
                Col("at", drop=1),
                Col("reason", fold=True, width=16),
            ],
            [
                (e.kind, e.account, e.amount, when(e.created_at), e.reason or "")
                for e in detail.ledger
            ],
        )
    )
