"""``toolkit report``: is the new backend at least as good as the old path? Tables or --json."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import click
from rich.table import Table

from toolkit.cli.context import CliContext, parse_since, pass_ctx
from toolkit.cli.render import console, emit_json, seconds, table
from toolkit.config import LEGACY
from toolkit.errors import InvalidInput
from toolkit.rollout.gates import Gate, Verdict
from toolkit.rollout.report import Report, build
from toolkit.rollout.stats import Interval, RankTest

VERDICT_STYLE = {
    Verdict.PASS: "bold green",
    Verdict.FAIL: "bold red",
    Verdict.INCONCLUSIVE: "bold yellow",
}
SIGNIFICANT = 0.05


def verdict(value: Verdict) -> str:
    """The verdict in its Rich colour: green PASS, red FAIL, yellow INCONCLUSIVE."""
    return f"[{VERDICT_STYLE[value]}]{value.value}[/]"


def gates_table(title: str, gates: Iterable[Gate], first: str = "gate") -> Table:
    """One row per gate (name, verdict, number): the report's scorecard and ``rollout gates``
    share it."""
    return table(
        title, [first, "verdict", "number"], [(g.name, verdict(g.verdict), g.number) for g in gates]
    )


def parse_time(value: str | None, option: str) -> datetime | None:
    """parse_since, naming the option the user actually gave."""
    try:
        return parse_since(value)
    except InvalidInput as exc:
        raise InvalidInput(str(exc).replace("--since", option)) from exc


def _count(value: int, bad: bool = False) -> str:
    return f"[red]{value}[/]" if bad and value else str(value)


def _rate(ci: Interval | None) -> str:
    if ci is None:
        return "[dim]-[/]"
    return f"{ci.estimate * 100:.1f}% [dim]({ci.low * 100:.1f}-{ci.high * 100:.1f})[/]"


def _difference(ci: Interval | None) -> str:
    if ci is None:
        return "[dim]-[/]"
    style = "red" if ci.high < 0 else "green" if ci.low > 0 else "white"
    return (
        f"[{style}]{ci.estimate * 100:+.2f} pp[/] "
        f"[dim]({ci.low * 100:+.2f}, {ci.high * 100:+.2f})[/]"
    )


def _p(value: float | None) -> str:
    if value is None:
        return "[dim]-[/]"
    text = "<0.0001" if value < 1e-4 else f"{value:.4f}"
    return f"[bold]{text}[/]" if value < SIGNIFICANT else text


def _rank(test: RankTest | None) -> str:
    if test is None:
        return "[dim]-[/]"
    slower = test.superiority
    significant = test.p_value < SIGNIFICANT
    style = ("red" if slower > 0.5 else "green") if significant else "white"
    return f"[{style}]P(new slower) {slower:.2f}[/], p {_p(test.p_value)}"


def render(report: Report) -> None:
    """Print the report's tables to the console (``--json`` prints ``Report.as_dict``)."""
    out = console()
    w = report.window
    span = f"{w.since:%Y-%m-%d %H:%M} → {w.until:%Y-%m-%d %H:%M} UTC"
    if not report.jobs:
        out.print(f"[dim]no runs between {span}[/]")
    arms = [(j, a) for j in report.jobs for a in j.arms]
    out.print(
        table(
            f"Runs per job and backend, {span}",
            [
                "job",
                "backend",
                "runs",
                "completed",
                "failed",
                "cancelled",
                "in flight",
                "success (95% CI)",
                "retries",
                "timeouts",
                "fallbacks",
                "credit errors",
            ],
            [
                (
                    j.job,
                    a.backend if a.backend == LEGACY else f"[bold]{a.backend}[/]",
                    a.runs,
                    a.completed,
                    _count(a.failed, True),
                    a.cancelled,
                    a.in_flight,
                    _rate(a.success),
                    a.retries,
                    _count(a.timeouts, True),
                    a.fallbacks,
                    _count(a.credit_errors, True),
                )
                for j, a in arms
            ],
        )
    )
    out.print(
        table(
            "Latency: queue-to-start and duration",
            ["job", "backend", "queue p50", "p95", "p99", "duration p50", "p95", "p99"],
            [
                (
                    j.job,
                    a.backend,
                    *(seconds(v) for v in a.latencies.queue),
                    *(seconds(v) for v in a.latencies.duration),
                )
                for j, a in arms
            ],
        )
    )
    comparisons = [(j, c) for j in report.jobs for c in j.comparisons]
    if comparisons:
        out.print(
            table(
                "New - legacy (95% Newcombe interval; z-test; Mann-Whitney U)",
                ["job", "backend", "success difference", "p", "queue-to-start", "duration"],
                [
                    (
                        j.job,
                        c.backend + (" [dim](sampled)[/]" if c.sampled else ""),
                        _difference(c.difference),
                        _p(c.z_test.p_value if c.z_test else None),
                        _rank(c.queue_test),
                        _rank(c.duration_test),
                    )
                    for j, c in comparisons
                ],
            )
        )
    for j in report.jobs:
        title = f"Scorecard: {j.job} on {j.new_backend or 'no new backend'}"
        out.print(gates_table(title, j.scorecard, first="metric"))
    if report.negative_balances:
        names = ", ".join(report.negative_balances[:10])
        out.print(f"[bold red]negative balances:[/] {len(report.negative_balances)} ({names})")
    else:
        out.print("[green]negative balances: none[/]")


@click.command("report")
@click.option("--job", default=None, help="Only this job.")
@click.option("--since", default="24h", show_default=True, help="24h, 15m, 7d or an ISO time.")
@click.option("--until", default=None, help="End of the window (default now): as --since.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable, the same content.")
@pass_ctx
def group(obj: CliContext, job: str | None, since: str, until: str | None, as_json: bool) -> None:
    """Compare each new backend with legacy: rates, intervals, latencies, scorecard."""
    start = parse_time(since, "--since")
    end = parse_time(until, "--until")
    tk = obj.toolkit
    report = build(tk.db, tk.jobs, job=job, since=start, until=end)
    if as_json:
        emit_json(report.as_dict())
        return
    render(report)
