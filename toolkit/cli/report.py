"""``toolkit report``: is the new backend at least as good as the old path? Tables or --json."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from toolkit.cli.context import CliContext, parse_since, pass_ctx
from toolkit.cli.render import console, emit_json, seconds
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
    share it. Names and numbers wrap at spaces, the verdict never."""
    t = Table(title=title, title_justify="left", header_style="bold")
    t.add_column(first, ratio=2)
    t.add_column("verdict", no_wrap=True)
    t.add_column("number", ratio=3)
    for g in gates:
        t.add_row(g.name, verdict(g.verdict), g.number)
    return t


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
    """P(a new run is slower than a legacy one), and the test's p-value."""
    if test is None:
        return "[dim]-[/]"
    slower = test.superiority
    significant = test.p_value < SIGNIFICANT
    style = ("red" if slower > 0.5 else "green") if significant else "white"
    return f"[{style}]{slower:.2f}[/] p {_p(test.p_value)}"


@dataclass(frozen=True)
class Column:
    """A report column: ``keep`` ranks it (0: always shown; higher: dropped first when the
    terminal is narrow); ``wrap`` lets prose wrap at spaces, numbers and names never do."""

    header: str
    keep: int
    wrap: bool = False


def _width(cell: str) -> int:
    return max((Text.from_markup(line).cell_len for line in cell.split("\n")), default=0)


def fitted(
    title: str, columns: Sequence[Column], rows: Sequence[Sequence[Any]], width: int
) -> tuple[Table, list[str]]:
    """A table of the columns that fit ``width`` side by side at their natural width, most
    wanted first (a number or a backend name is never broken across lines); returns it with
    the headers left out."""
    cells = [[str(c) if c is not None else "[dim]-[/]" for c in row] for row in rows]
    natural = [
        max([len(col.header)] + [_width(r[i]) for r in cells]) for i, col in enumerate(columns)
    ]
    chosen: set[int] = set()
    used = 1  # the table's left border
    for i in sorted(range(len(columns)), key=lambda i: (columns[i].keep, i)):
        need = (min(natural[i], 24) if columns[i].wrap else natural[i]) + 3  # padding + border
        if columns[i].keep == 0 or used + need <= width:
            chosen.add(i)
            used += need
    shown = sorted(chosen)
    t = Table(title=title, title_justify="left", header_style="bold")
    for i in shown:
        col = columns[i]
        t.add_column(col.header, no_wrap=not col.wrap, overflow="fold" if col.wrap else "crop")
    for r in cells:
        t.add_row(*(r[i] for i in shown))
    return t, [columns[i].header for i in range(len(columns)) if i not in chosen]


def _legacy_mode(mode: str | None) -> str:
    if mode == "blocking":
        return "legacy mode of the app: blocking (inline, as the old code ran)"
    if mode == "thread":
        return "legacy mode of the app: thread (a pool: legacy runs queue under load)"
    return "legacy mode: not known (load the app with --app to state it)"


def render(report: Report) -> None:
    """Print the report's tables to the console (``--json`` prints ``Report.as_dict``), each
    fitted to the console's width: at 80 columns the least wanted columns are left out (and
    named), never folded into fragments."""
    out = console()
    width = out.width
    w = report.window
    span = f"{w.since:%Y-%m-%d %H:%M} → {w.until:%Y-%m-%d %H:%M} UTC"
    out.print(f"[bold]{span}[/]")
    out.print(f"[dim]{_legacy_mode(report.legacy_mode)}[/]")
    if not report.jobs:
        out.print(f"[dim]no runs between {span}[/]")
    one_job = len(report.jobs) == 1
    job_col = [] if one_job else [Column("job", 0)]
    about = f" of {report.jobs[0].job}" if one_job else ""
    arms = [(j, a) for j in report.jobs for a in j.arms]

    def job(name: str) -> list[str]:
        return [] if one_job else [name]

    left_out: list[str] = []

    def show(title: str, columns: Sequence[Column], rows: Sequence[Sequence[Any]]) -> None:
        t, dropped = fitted(title, columns, rows, width)
        out.print(t)
        left_out.extend(dropped)

    show(
        f"Runs per arm{about} (the backend the flag assigned)",
        [
            *job_col,
            Column("arm", 0),
            Column("runs", 1),
            Column("done", 9),
            Column("fail", 6),
            Column("canc", 10),
            Column("live", 8),
            Column("success (95% CI)", 2),
            Column("retry", 11),
            Column("t/o", 7),
            Column("fallbk", 3),
            Column("recov", 4),
            Column("credit", 5),
        ],
        [
            (
                *job(j.job),
                a.backend if a.backend == LEGACY else f"[bold]{a.backend}[/]",
                a.runs,
                a.completed,
                _count(a.failed, True),
                a.cancelled,
                a.in_flight,
                _rate(a.success),
                a.retries,
                _count(a.timeouts, True),
                _count(a.fallbacks, True),
                _count(a.recovered, True),
                _count(a.credit_errors, True),
            )
            for j, a in arms
        ],
    )
    show(
        f"Latency per arm{about}: queue-to-start and duration",
        [
            *job_col,
            Column("arm", 0),
            Column("queue p50", 3),
            Column("p95", 1),
            Column("p99", 5),
            Column("run p50", 4),
            Column("p95", 2),
            Column("p99", 6),
        ],
        [
            (
                *job(j.job),
                a.backend,
                *(seconds(v) for v in a.latencies.queue),
                *(seconds(v) for v in a.latencies.duration),
            )
            for j, a in arms
        ],
    )
    comparisons = [(j, c) for j in report.jobs for c in j.comparisons]
    if comparisons:
        show(
            f"New - legacy{about} (Newcombe 95%, z, Mann-Whitney)",
            [
                *job_col,
                Column("arm", 0),
                Column("success diff", 1),
                Column("p", 2),
                Column("P(slower) queue", 3),
                Column("P(slower) run", 4),
            ],
            [
                (
                    *job(j.job),
                    c.backend + (" [dim](sampled)[/]" if c.sampled else ""),
                    _difference(c.difference),
                    _p(c.z_test.p_value if c.z_test else None),
                    _rank(c.queue_test),
                    _rank(c.duration_test),
                )
                for j, c in comparisons
            ],
        )
    for j in report.jobs:
        title = f"Scorecard: {j.job} on {j.new_backend or 'no new backend'}"
        out.print(gates_table(title, j.scorecard, first="metric"))
    if left_out:
        names = ", ".join(dict.fromkeys(left_out))
        out.print(f"[dim]left out at {width} columns: {names} (wider terminal or --json)[/]")
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
    """Compare each new backend with legacy by the arm the flag assigned: rates, intervals,
    latencies, scorecard. Times are shown in UTC (an offset given in --since is converted)."""
    start = parse_time(since, "--since")
    end = parse_time(until, "--until")
    tk = obj.toolkit
    # Only the app's own Toolkit knows its legacy mode; a bare --database-url one does not.
    mode = tk.legacy.mode if obj.app_spec else None
    report = build(tk.db, tk.jobs, job=job, since=start, until=end, legacy_mode=mode)
    if as_json:
        emit_json(report.as_dict())
        return
    render(report)
