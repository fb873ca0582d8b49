"""``toolkit report`` over 1,000,000 runs on PostgreSQL versus the raw aggregate SQL, in one run.

Run: ``python bench/report_bench.py`` (``--runs 100000`` for a quicker look, ``--json`` for
machine-readable output).

It drops and recreates its own scratch database (``toolkit_bench_report`` by default, created
through an autocommit connection to the ``test`` database, whose tables are never touched),
migrates it and seeds it with one ``INSERT ... SELECT FROM generate_series`` (secondary indexes
and constraints are dropped for the load and recreated from their own definitions afterwards,
then ``VACUUM ANALYZE``): two jobs, 30 % of runs on the new backend, 96 % completed, JobTimeout
failures, retries, fallbacks, in-flight runs, credits granted, debited and refunded (balances
agree with the ledger), and a few credit errors on purpose. Then, interleaved round by round in
a rotated order, over the same window:

* ``toolkit report``: ``rollout.report.build`` plus ``as_dict`` and ``json.dumps``: everything
  ``toolkit report --json`` computes (counts, Wilson/Newcombe intervals, z-tests, percentiles,
  Mann-Whitney on capped samples, credit errors, negative balances, scorecard).
* ``raw aggregate SQL``: the statement you would type in psql, through psycopg: one
  ``GROUP BY job, arm`` with the status counts and ``percentile_cont`` of queue-to-start and
  duration, at the server's default settings.
* ``raw aggregate SQL, work_mem 64MB``: the same statement after the one session setting the
  report changes in its own transactions (``SET LOCAL work_mem``, so percentile sorts stay in
  memory; :data:`toolkit.store.snapshot.WORK_MEM`), so a reader sees both.
* ``raw, every report figure``: that statement plus fallbacks, both credit-error counts and the
  negative balances, one after another on one connection.

Goals (issue 6): the report at most 1.5x the raw aggregate SQL (at the server's defaults),
and at most 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import _common as common
import psycopg
from rich.console import Console
from rich.table import Table

from toolkit import Toolkit
from toolkit.rollout.report import build
from toolkit.store.models import utcnow
from toolkit.store.snapshot import WORK_MEM

JOBS = ("daily-batch", "prediction-session")
GOAL_RATIO = 1.5
GOAL_SECONDS = 3.0
RAW_TUNED = f"raw aggregate SQL, work_mem {WORK_MEM}"

SEED_RUNS = """
INSERT INTO toolkit_runs (id, job, targeting_key, backend, arm, status, payload, error,
    attempts, account, cost, fallback_from, recoveries, created_at, started_at, finished_at,
    heartbeat_at)
SELECT gen_random_uuid(), v.job, 'user-' || (v.g %% 5000), v.backend,
    CASE WHEN v.backend = 'legacy' AND v.r < 0.002 THEN 'inngest' ELSE v.backend END,
    v.status, '{}'::json,
    CASE WHEN v.status = 'FAILED' THEN
        CASE WHEN v.r < 0.2 THEN 'JobTimeout: run exceeded the 900s timeout' ELSE
        'RuntimeError: model call failed' END END,
    CASE WHEN v.status = 'QUEUED' THEN 0 WHEN v.r < 0.05 THEN 2 ELSE 1 END,
    CASE WHEN v.job = 'prediction-session' THEN 'acct-' || (v.g %% 500) END,
    CASE WHEN v.job = 'prediction-session' THEN 5 ELSE 0 END,
    CASE WHEN v.backend = 'legacy' AND v.r < 0.002 THEN 'inngest' END,
    0, v.created,
    CASE WHEN v.status <> 'QUEUED' THEN v.created + v.q END,
    CASE WHEN v.status IN ('COMPLETED', 'FAILED', 'CANCELLED') THEN v.created + v.q + v.d END,
    CASE WHEN v.status <> 'QUEUED' AND NOT (v.backend = 'inngest' AND v.r > 0.999)
        THEN v.created + v.q + v.d END
FROM (
    SELECT g,
        CASE WHEN g %% 4 = 0 THEN 'daily-batch' ELSE 'prediction-session' END AS job,
        CASE WHEN random() < 0.3 THEN 'inngest' ELSE 'legacy' END AS backend,
        CASE WHEN s < 0.96 THEN 'COMPLETED' WHEN s < 0.985 THEN 'FAILED'
             WHEN s < 0.99 THEN 'CANCELLED' WHEN s < 0.995 THEN 'RUNNING' ELSE 'QUEUED' END
            AS status,
        %(end)s - random() * interval '23 hours' AS created,
        -ln(1 - random()) * interval '0.8 seconds' AS q,
        -ln(1 - random()) * interval '20 seconds' AS d,
        r
    FROM (SELECT g, random() AS s, random() AS r FROM generate_series(1, %(runs)s) AS g) AS x
) AS v
"""
SEED_LEDGER = (
    """INSERT INTO toolkit_credit_accounts (account, balance, updated_at)
    SELECT DISTINCT account, 1000000, now() FROM toolkit_runs WHERE account IS NOT NULL""",
    """INSERT INTO toolkit_credit_ledger (account, run_id, kind, amount, reason, created_at)
    SELECT account, NULL, 'GRANT', balance, 'seed', %(end)s - interval '2 days'
    FROM toolkit_credit_accounts""",
    """INSERT INTO toolkit_credit_ledger (account, run_id, kind, amount, reason, created_at)
    SELECT account, id, 'DEBIT', cost, 'dispatch', created_at FROM toolkit_runs WHERE cost > 0""",
    # a few credit errors on purpose: some failed inngest runs are never refunded
    """INSERT INTO toolkit_credit_ledger (account, run_id, kind, amount, reason, created_at)
    SELECT account, id, 'REFUND', cost, 'run failed', finished_at FROM toolkit_runs
    WHERE cost > 0 AND status IN ('FAILED', 'CANCELLED')
      AND NOT (backend = 'inngest' AND right(id::text, 2) = '00')""",
    # the running balance agrees with the ledger: no negative balance
    """UPDATE toolkit_credit_accounts a SET balance = l.total FROM (
        SELECT account, sum(CASE WHEN kind = 'DEBIT' THEN -amount ELSE amount END) AS total
        FROM toolkit_credit_ledger GROUP BY account) AS l
    WHERE l.account = a.account""",
)
TABLES = ("toolkit_runs", "toolkit_credit_ledger")

# --- the raw side: what one would type in psql ----------------------------------------------------

RAW_AGGREGATE = """
SELECT job, arm, count(*) AS runs,
    count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
    count(*) FILTER (WHERE status = 'FAILED') AS failed,
    count(*) FILTER (WHERE status = 'CANCELLED') AS cancelled,
    count(*) FILTER (WHERE status IN ('QUEUED', 'RUNNING')) AS in_flight,
    count(*) FILTER (WHERE attempts > 1) AS retries,
    count(*) FILTER (WHERE status = 'FAILED'
        AND (error LIKE '%%JobTimeout%%' OR lower(error) LIKE '%%time limit%%')) AS timeouts,
    count(*) FILTER (WHERE started_at IS NOT NULL AND heartbeat_at IS NULL) AS no_heartbeat,
    percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
        ORDER BY extract(epoch FROM started_at - created_at)) AS queue,
    percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
        ORDER BY extract(epoch FROM finished_at - started_at)) AS duration
FROM toolkit_runs
WHERE created_at >= %(since)s AND created_at < %(until)s
GROUP BY job, arm
ORDER BY job, arm
"""
RAW_EXTRAS = (
    """SELECT job, arm, count(*) FROM toolkit_runs
       WHERE created_at >= %(since)s AND created_at < %(until)s AND fallback_from IS NOT NULL
       GROUP BY job, arm""",
    """SELECT r.job, r.arm, count(*) FROM toolkit_runs r
       WHERE r.created_at >= %(since)s AND r.created_at < %(until)s
         AND r.status IN ('FAILED', 'CANCELLED')
         AND EXISTS (SELECT 1 FROM toolkit_credit_ledger d
                     WHERE d.run_id = r.id AND d.kind = 'DEBIT')
         AND NOT EXISTS (SELECT 1 FROM toolkit_credit_ledger f
                         WHERE f.run_id = r.id AND f.kind = 'REFUND')
       GROUP BY r.job, r.arm""",
    """SELECT r.job, r.arm, count(*) FROM toolkit_credit_ledger f
       JOIN toolkit_runs r ON r.id = f.run_id
       WHERE f.kind = 'REFUND' AND r.status NOT IN ('FAILED', 'CANCELLED')
         AND r.created_at >= %(since)s AND r.created_at < %(until)s
       GROUP BY r.job, r.arm""",
    """SELECT account FROM toolkit_credit_ledger GROUP BY account
       HAVING sum(CASE WHEN kind = 'DEBIT' THEN -amount ELSE amount END) < 0
       UNION SELECT account FROM toolkit_credit_accounts WHERE balance < 0""",
)


# --- setup ----------------------------------------------------------------------------------------


def _secondary(conn: psycopg.Connection[Any], table: str) -> tuple[list[str], list[str]]:
    """(statements that recreate, statements that drop) the table's non-PK indexes and its
    UNIQUE / FOREIGN KEY constraints, from the catalog: no schema copied into this script."""
    constraints = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = %s::regclass AND contype IN ('u', 'f')",
        (table,),
    ).fetchall()
    owned = {name for name, _ in constraints}
    indexes = conn.execute(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.tablename = %s AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname AND c.contype = 'p')",
        (table,),
    ).fetchall()
    plain = [(n, d) for n, d in indexes if n not in owned]
    create = [d for _, d in plain] + [
        f'ALTER TABLE {table} ADD CONSTRAINT "{n}" {d}' for n, d in constraints
    ]
    drop = [f'ALTER TABLE {table} DROP CONSTRAINT "{n}"' for n, _ in constraints] + [
        f'DROP INDEX "{n}"' for n, _ in plain
    ]
    return create, drop


def seed(url: str, runs: int, end: datetime) -> dict[str, float]:
    timings: dict[str, float] = {}
    with psycopg.connect(url) as conn:
        conn.execute("SET synchronous_commit = off")
        # FKs point from the ledger to the runs: drop the ledger's first, recreate them last.
        plans = {t: _secondary(conn, t) for t in reversed(TABLES)}
        for _create, drop in plans.values():
            for statement in drop:
                conn.execute(statement)
        start = time.perf_counter()
        conn.execute(SEED_RUNS, {"runs": runs, "end": end})
        timings["insert_runs_s"] = time.perf_counter() - start
        start = time.perf_counter()
        for statement in SEED_LEDGER:
            conn.execute(statement, {"end": end})
        timings["insert_ledger_s"] = time.perf_counter() - start
        start = time.perf_counter()
        for table in TABLES:
            for statement in plans[table][0]:
                conn.execute(statement)
        conn.commit()
        timings["indexes_s"] = time.perf_counter() - start
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        conn.execute("VACUUM ANALYZE toolkit_runs, toolkit_credit_ledger, toolkit_credit_accounts")
        timings["vacuum_analyze_s"] = time.perf_counter() - start
    return timings


def count_runs(url: str) -> tuple[int, bool]:
    """(runs, whether the ledger has the grants this version of the seed writes)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM toolkit_runs), "
            "EXISTS (SELECT 1 FROM toolkit_credit_ledger WHERE kind = 'GRANT')"
        ).fetchone()
        return (int(row[0]), bool(row[1])) if row else (0, False)


def app(url: str) -> Toolkit:
    tk = Toolkit(url.replace("postgresql://", "postgresql+psycopg://"), legacy_mode="blocking")
    for job in JOBS:
        tk.job(job, target="inngest")(lambda ctx, payload: None)
    return tk


# --- measured variants ----------------------------------------------------------------------------


def variants(
    tk: Toolkit, conn: psycopg.Connection[Any], since: datetime, until: datetime
) -> dict[str, Callable[[], Any]]:
    window = {"since": since, "until": until}

    def report() -> Any:
        result = build(tk.db, tk.jobs, since=since, until=until)
        return json.dumps(result.as_dict())

    def raw_aggregate(work_mem: str | None = None) -> Any:
        if work_mem:  # as the report does in its own transactions
            conn.execute(f"SET LOCAL work_mem = '{work_mem}'")
        rows = conn.execute(RAW_AGGREGATE, window).fetchall()
        conn.commit()
        return rows

    def raw_everything() -> Any:
        rows = [conn.execute(RAW_AGGREGATE, window).fetchall()]
        rows += [conn.execute(sql, window).fetchall() for sql in RAW_EXTRAS]
        conn.commit()
        return rows

    return {
        "toolkit report": report,
        "raw aggregate SQL": raw_aggregate,
        RAW_TUNED: lambda: raw_aggregate(WORK_MEM),
        "raw, every report figure": raw_everything,
    }


def sanity(
    tk: Toolkit, conn: psycopg.Connection[Any], since: datetime, until: datetime
) -> dict[str, Any]:
    """The report and the raw SQL agree on runs, statuses and percentiles."""
    report = build(tk.db, tk.jobs, since=since, until=until)
    raw = conn.execute(RAW_AGGREGATE, {"since": since, "until": until}).fetchall()
    conn.commit()
    ours = {(j.job, a.backend): a for j in report.jobs for a in j.arms}
    mismatches = []
    for row in raw:
        arm = ours[(row[0], row[1])]
        if (arm.runs, arm.completed, arm.failed, arm.cancelled) != tuple(row[2:6]):
            mismatches.append(f"{row[0]}/{row[1]}: counts")
        for mine, theirs in ((arm.latencies.queue, row[10]), (arm.latencies.duration, row[11])):
            if any(abs((a or 0) - float(b)) > 1e-6 for a, b in zip(mine, theirs, strict=True)):
                mismatches.append(f"{row[0]}/{row[1]}: percentiles")
    credit = sum(a.credit_errors for a in ours.values())
    tests = [c.queue_test for j in report.jobs for c in j.comparisons]
    tests += [c.duration_test for j in report.jobs for c in j.comparisons]
    if not tests or any(t is None or t.n_x == 0 or t.n_y == 0 for t in tests):
        mismatches.append("rank tests missing")
    return {
        "runs_in_window": sum(a.runs for a in ours.values()),
        "arms": len(ours),
        "credit_errors_found": credit,
        "negative_balances": len(report.negative_balances),
        "rank_tests": len(tests),
        "mismatches": mismatches,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    url = f"{args.pg}/{args.db}"
    end = utcnow().replace(microsecond=0)
    load_before = os.getloadavg()
    seeded: dict[str, float] = {}
    if not (args.reuse and _exists(args) and count_runs(url) == (args.runs, True)):
        common.recreate_database(args.pg, args.admin_db, args.db)
        tk = app(url)
        tk.migrate()
        tk.close()
        seeded = seed(url, args.runs, end)
    tk = app(url)
    conn = psycopg.connect(url)
    try:
        row = conn.execute("SELECT min(created_at), max(created_at) FROM toolkit_runs").fetchone()
        assert row is not None
        since, until = row[0] - timedelta(seconds=1), row[1] + timedelta(seconds=1)
        measured = variants(tk, conn, since, until)
        for fn in measured.values():  # warm-up: connections, plans, caches
            fn()

        def measure(name: str, _round: int) -> float:
            start = time.perf_counter()
            measured[name]()
            return time.perf_counter() - start

        samples = common.interleaved(list(measured), args.rounds, measure)
        check = sanity(tk, conn, since, until)
    finally:
        conn.close()
        tk.close()
    median = {name: statistics.median(s) for name, s in samples.items()}
    report = median["toolkit report"]
    goals = {
        f"report <= {GOAL_RATIO}x raw aggregate SQL": report / median["raw aggregate SQL"]
        <= GOAL_RATIO,
        f"report <= {GOAL_SECONDS:g} s": report <= GOAL_SECONDS,
    }
    return {
        **common.header("report"),
        "machine": common.machine(load_before),
        "postgres": url,
        "runs": args.runs,
        "rounds": args.rounds,
        "seed_s": seeded or None,
        "median_s": median,
        "min_s": {name: min(s) for name, s in samples.items()},
        "max_s": {name: max(s) for name, s in samples.items()},
        "report_session_settings": {"work_mem": WORK_MEM},
        "ratios": {
            "report / raw aggregate SQL": report / median["raw aggregate SQL"],
            f"report / {RAW_TUNED}": report / median[RAW_TUNED],
            "report / raw, every report figure": report / median["raw, every report figure"],
        },
        "goals": goals,
        "sanity": check,
        "samples_s": samples,
    }


def _exists(args: argparse.Namespace) -> bool:
    with common.admin_connection(args.pg, args.admin_db) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (args.db,)).fetchone()
    if not found:
        return False
    with psycopg.connect(f"{args.pg}/{args.db}") as conn:
        return conn.execute("SELECT to_regclass('toolkit_runs')").fetchone() not in (None, (None,))


def render(result: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"report over {result['runs']:,} runs: seconds, median of {result['rounds']} rounds"
    )
    for column in ("variant", "median s", "min s", "max s"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, value in result["median_s"].items():
        table.add_row(
            name, f"{value:.3f}", f"{result['min_s'][name]:.3f}", f"{result['max_s'][name]:.3f}"
        )
    console.print(table)
    ratios = Table(title="ratios (same run)")
    ratios.add_column("ratio")
    ratios.add_column("value", justify="right")
    for name, value in result["ratios"].items():
        ratios.add_row(name, f"{value:.2f}x")
    console.print(ratios)
    settings = ", ".join(f"{k} = '{v}'" for k, v in result["report_session_settings"].items())
    console.print(
        f"session settings: the report runs with SET LOCAL {settings} in its transactions; "
        "the raw aggregate SQL runs at the server's defaults (and once more with the same "
        "setting, as a variant of its own)"
    )
    for goal, ok in result["goals"].items():
        console.print(f"{'[green]PASS[/]' if ok else '[bold red]FAIL[/]'} {goal}")
    check = result["sanity"]
    agree = "[green]agree[/]" if not check["mismatches"] else f"[red]{check['mismatches']}[/]"
    console.print(
        f"sanity: {check['runs_in_window']:,} runs in {check['arms']} arms; report and raw SQL "
        f"{agree}; {check['credit_errors_found']} credit errors found (seeded on purpose), "
        f"{check['negative_balances']} negative balances, {check['rank_tests']} rank tests"
    )
    if result["seed_s"]:
        console.print(
            "seed: "
            + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in result["seed_s"].items())
        )
    console.print(f"load average (1 min) {common.load_text(result['machine'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_database_options(parser, "toolkit_bench_report")
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs to seed")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the scratch database if it holds --runs runs")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal fails")
    args = parser.parse_args(argv)
    common.check_scratch_database(parser, args)
    if args.runs < 1 or args.rounds < 1:
        parser.error("--runs and --rounds must be positive")
    result = run(args)
    common.emit(result, args.json, render, width=120)
    return 1 if args.strict and not all(result["goals"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
