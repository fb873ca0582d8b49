"""What the benchmark scripts in bench/ share: options, scratch databases, metadata, statistics
and output.

The scripts run as ``python bench/X.py``, which puts bench/ first on ``sys.path``; the Celery
worker that ``celery_bench.py`` starts gets bench/ on ``PYTHONPATH``. Either way this module
imports as ``_common``. Nothing here is timed: helpers that run inside a measurement
(``timed``, ``interleaved``) add only the call around the measured function.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from toolkit.backends.base import BaseBackend, SubmittedRun

if TYPE_CHECKING:
    import psycopg

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"


class NoopBackend(BaseBackend):
    """Takes every run and sends it nowhere: dispatch then costs routing plus recording only."""

    name = "noop"

    def _send(self, run: SubmittedRun) -> None:
        return None


# --- options ---------------------------------------------------------------------------------


def add_database_options(
    parser: argparse.ArgumentParser,
    db: str,
    db_help: str = "scratch database (recreated)",
    admin_help: str = "database to connect to for CREATE",
) -> None:
    """``--pg`` (server URL), ``--admin-db`` (only for CREATE/DROP) and the scratch ``--db``."""
    parser.add_argument("--pg", default=PG_SERVER, help="server URL without a database")
    parser.add_argument("--admin-db", default="test", help=admin_help)
    parser.add_argument("--db", default=db, help=db_help)


def check_scratch_database(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The scratch database is dropped: it must never be the admin database."""
    if args.db == args.admin_db:
        parser.error("--db must differ from --admin-db: it is dropped and recreated")


# --- scratch databases -----------------------------------------------------------------------


def admin_connection(pg: str, admin_db: str) -> psycopg.Connection[Any]:
    """An autocommit connection to the admin database (CREATE/DROP DATABASE need one)."""
    import psycopg

    return psycopg.connect(f"{pg}/{admin_db}", autocommit=True)


def drop_databases(pg: str, admin_db: str, *names: str) -> None:
    with admin_connection(pg, admin_db) as admin:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def recreate_database(
    pg: str, admin_db: str, name: str, synchronous_commit: str | None = None
) -> str:
    """Drop and create ``name``; returns its SQLAlchemy URL (psycopg 3 driver).

    With ``synchronous_commit``, only this scratch database gets that setting: every session
    in it (toolkit and raw) runs with the same value.
    """
    with admin_connection(pg, admin_db) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
        if synchronous_commit is not None:
            admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit TO {synchronous_commit}')
    return sqlalchemy_url(pg, name)


def sqlalchemy_url(pg: str, name: str) -> str:
    return f"{pg.replace('postgresql://', 'postgresql+psycopg://')}/{name}"


# --- metadata --------------------------------------------------------------------------------


def header(benchmark: str) -> dict[str, Any]:
    """The first keys of every script's JSON."""
    return {
        "benchmark": benchmark,
        "date": date.today().isoformat(),
        "python": platform.python_version(),
    }


def machine(load_before: tuple[float, float, float] | None = None) -> dict[str, Any]:
    """CPUs and platform; with ``load_before``, the load averages before and now."""
    out: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform()}
    if load_before is not None:
        out["loadavg_before"] = load_before
        out["loadavg_after"] = os.getloadavg()
    return out


def load_text(machine: dict[str, Any]) -> str:
    """``1.23 before, 2.34 after, 2 CPUs``: the 1-minute load averages of a ``machine()``."""
    return (
        f"{machine['loadavg_before'][0]:.2f} before, "
        f"{machine['loadavg_after'][0]:.2f} after, {machine['cpus']} CPUs"
    )


# --- timing and statistics -------------------------------------------------------------------


def rotated(items: Sequence[Any], r: int) -> list[Any]:
    """Round ``r``'s order: A B C, B C A, C A B, ..."""
    k = r % len(items)
    return [*items[k:], *items[:k]]


def timed(fn: Callable[[int], Any], n: int) -> float:
    start = time.perf_counter()
    fn(n)
    return time.perf_counter() - start


def interleaved(
    names: Sequence[str], rounds: int, measure: Callable[[str, int], float]
) -> dict[str, list[float]]:
    """Seconds per block: each round calls ``measure(name, round)`` once per variant, in the
    round's rotated order, so machine noise lands on every variant alike."""
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in rotated(names, r):
            samples[name].append(measure(name, r))
    return samples


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of rate(a) / rate(b) from the seconds of same-round blocks."""
    return statistics.median(tb / ta for ta, tb in zip(a, b, strict=True))


def ratio_rows(
    pairs: Sequence[tuple[str, str]],
    rates: dict[str, float],
    samples: dict[str, list[float]],
    labels: tuple[str, str] = ("variant", "baseline"),
) -> list[dict[str, Any]]:
    """Per (variant, baseline): the ratio of median rates and the median paired ratio."""
    return [
        {
            labels[0]: a,
            labels[1]: b,
            "ratio": rates[a] / rates[b],
            "paired_ratio": paired_ratio(samples[a], samples[b]),
        }
        for a, b in pairs
    ]


def quantile(values: Sequence[float], q: float, n: int = 100) -> float:
    """The ``q`` quantile (a multiple of 1/n), inclusive method."""
    return statistics.quantiles(values, n=n, method="inclusive")[round(q * n) - 1]


def latency_percentiles(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max in ms, and the count."""
    q = statistics.quantiles(seconds, n=100, method="inclusive")
    return {
        "p50_ms": q[49] * 1e3,
        "p95_ms": q[94] * 1e3,
        "p99_ms": q[98] * 1e3,
        "max_ms": max(seconds) * 1e3,
        "count": len(seconds),
    }


# --- output ----------------------------------------------------------------------------------


def ratio_table(title: str, rows: Sequence[tuple[str, str, float, float]]) -> Table:
    """(variant, baseline, ratio of medians, median paired ratio) per row."""
    table = Table(title=title)
    table.add_column("variant")
    table.add_column("baseline")
    table.add_column("ratio of medians", justify="right")
    table.add_column("median paired ratio", justify="right")
    for variant, baseline, ratio, paired in rows:
        table.add_row(variant, baseline, f"{ratio:.3f}x", f"{paired:.3f}x")
    return table


def emit(
    result: dict[str, Any],
    as_json: bool,
    render: Callable[[dict[str, Any], Console], None],
    width: int = 140,
    console: Console | None = None,
) -> None:
    """Print the result as JSON, or render it; a console that is not a terminal (a pipe, a
    file) gets ``width`` columns rather than rich's 80."""
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=width)
    render(result, console)
