"""Maintenance sweeps at scale on PostgreSQL: ``toolkit refund --apply`` and ``toolkit cleanup
orphans --apply`` (the Python path, as an operator runs it) versus the one set-based SQL
statement that does the same, in one run.

Run: ``python bench/maintenance_bench.py`` (``--runs 100000`` for a quick check, ``--json``).

It connects to the ``test`` database only to drop and create its own scratch databases
(``--db``, default ``toolkit_bench_maint``, and ``<db>_sql``); it never touches tables in
``test``. The seed, by ``INSERT ... SELECT generate_series``:

* ``--runs`` runs (default 1,000,000) over ``--accounts`` accounts, two jobs, two backends, all
  debited 5 credits: 10 % FAILED (half refunded when they failed, half never refunded: what the
  refund sweep owes), 5 % orphans stuck QUEUED or RUNNING for two hours that recovery gave up
  on (``recoveries = 3``: what cleanup fails and refunds), the rest COMPLETED;
* a GRANT per account and balances that agree with the ledger.

The seeded database is cloned (``CREATE DATABASE ... TEMPLATE``) so both sides start from the
same rows. Timed, in one run:

* ``toolkit refund --apply --json`` in a subprocess (``python -m toolkit``): wall time from
  spawn to exit (interpreter start and imports included), the sweep's own time, and the peak
  RSS of the process (``wait4`` rusage); against the single ``WITH ... INSERT ... UPDATE``
  statement on the clone;
* the same for ``toolkit cleanup orphans --older-than 15m --apply --json``.

Afterwards both databases must hold the same state: runs per status, ledger entries and sums
per kind, dead letters, every account's balance; and the ledger invariant must hold in both.
Goals (per issue 5): Python wall at most 2x SQL, ≤ 30 s, peak RSS ≤ 200 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as common
import psycopg
from rich.console import Console
from rich.table import Table

from toolkit.maintenance.sweep import BULK_BATCH
from toolkit.store.engine import Database

ROOT = Path(__file__).resolve().parents[1]
MAX_RECOVERIES = 3

SEED = [
    """
    INSERT INTO toolkit_credit_accounts (account, balance, updated_at)
    SELECT 'acct-' || a, 0, now() FROM generate_series(0, %(accounts)s - 1) AS a
    """,
    # mod(g, 20): 0 FAILED + refunded, 1 FAILED never refunded, 2 orphan (QUEUED or RUNNING), else
    # COMPLETED. Created two hours ago and earlier, 10 ms apart.
    """
    INSERT INTO toolkit_runs (
        id, job, targeting_key, backend, arm, status, payload, result, error, attempts, account,
        cost, route_reason, recoveries, created_at, started_at, finished_at, heartbeat_at)
    SELECT
        md5('run-' || g)::uuid,
        CASE WHEN mod(g, 3) = 0 THEN 'daily-batch' ELSE 'prediction-session' END,
        'user-' || mod(abs(hashtext(g::text)), %(accounts)s),
        CASE WHEN mod(g, 7) < 3 THEN 'inngest' ELSE 'legacy' END,
        CASE WHEN mod(g, 7) < 3 THEN 'inngest' ELSE 'legacy' END,
        CASE WHEN mod(g, 20) IN (0, 1) THEN 'FAILED'
             WHEN mod(g, 20) = 2 AND mod(g, 40) = 2 THEN 'QUEUED'
             WHEN mod(g, 20) = 2 THEN 'RUNNING'
             ELSE 'COMPLETED' END,
        '{"models": ["gpt", "claude", "llama"], "market_id": "m-1"}'::json,
        CASE WHEN mod(g, 20) > 2 THEN '{"ok": true}'::json END,
        CASE WHEN mod(g, 20) = 0 THEN 'provider error (refunded when it failed)'
             WHEN mod(g, 20) = 1 THEN 'worker lost before the refund' END,
        CASE WHEN mod(g, 40) = 2 THEN 0 ELSE 1 END,
        'acct-' || mod(abs(hashtext(g::text)), %(accounts)s),
        5,
        'SPLIT',
        CASE WHEN mod(g, 20) = 2 THEN %(max_recoveries)s ELSE 0 END,
        t,
        CASE WHEN mod(g, 40) = 2 THEN NULL ELSE t + interval '100 ms' END,
        CASE WHEN mod(g, 20) = 2 THEN NULL ELSE t + interval '1 s' END,
        CASE WHEN mod(g, 40) = 2 THEN NULL ELSE t + interval '100 ms' END
    FROM generate_series(1, %(runs)s) AS g,
         LATERAL (SELECT now() - interval '2 hours' - (%(runs)s - g) * interval '10 ms') AS c(t)
    """,
    """
    INSERT INTO toolkit_credit_ledger (account, run_id, kind, amount, reason, created_at)
    SELECT account, id, 'DEBIT', cost, NULL, created_at FROM toolkit_runs
    """,
    """
    INSERT INTO toolkit_credit_ledger (account, run_id, kind, amount, reason, created_at)
    SELECT account, id, 'REFUND', cost, 'run failed', finished_at FROM toolkit_runs
    WHERE status = 'FAILED' AND error LIKE 'provider error%%'
    """,
    """
    INSERT INTO toolkit_credit_ledger (account, run_id, kind, amount, reason, created_at)
    SELECT account, NULL, 'GRANT', 1000000, 'seed', now() FROM toolkit_credit_accounts
    """,
    """
    UPDATE toolkit_credit_accounts AS a SET balance = l.balance FROM (
        SELECT account, sum(CASE kind WHEN 'DEBIT' THEN -amount ELSE amount END) AS balance
        FROM toolkit_credit_ledger GROUP BY account) AS l
    WHERE a.account = l.account
    """,
]

SQL_REFUND = """
WITH owed AS (
    SELECT d.run_id, d.account, d.amount
    FROM toolkit_runs r
    JOIN toolkit_credit_ledger d ON d.run_id = r.id AND d.kind = 'DEBIT'
    WHERE r.status IN ('FAILED', 'CANCELLED')
      AND NOT EXISTS (SELECT 1 FROM toolkit_credit_ledger x
                      WHERE x.run_id = r.id AND x.kind = 'REFUND')
), refunded AS (
    INSERT INTO toolkit_credit_ledger (account, run_id, kind, amount, reason, created_at)
    SELECT account, run_id, 'REFUND', amount, 'refund sweep (set-based)', now() FROM owed
    ON CONFLICT (run_id, kind) DO NOTHING
    RETURNING account, amount
)
UPDATE toolkit_credit_accounts AS a
SET balance = a.balance + t.total, updated_at = now()
FROM (SELECT account, sum(amount) AS total FROM refunded GROUP BY account) AS t
WHERE a.account = t.account
"""

SQL_CLEANUP = """
WITH failed AS (
    UPDATE toolkit_runs
    SET status = 'FAILED', finished_at = now(),
        error = 'orphaned (set-based cleanup); recovery gave up'
    WHERE recoveries >= %(max_recoveries)s AND (
        (status = 'QUEUED' AND coalesce(next_attempt_at, created_at) < now() - interval '15 min')
        OR (status = 'RUNNING'
            AND coalesce(heartbeat_at, started_at, created_at) < now() - interval '15 min'))
    RETURNING id, job, payload, attempts, error
), dead AS (
    INSERT INTO toolkit_dead_letters (run_id, job, payload, error, attempts, created_at)
    SELECT id, job, payload, error, attempts, now() FROM failed
    ON CONFLICT (run_id) DO NOTHING
), refunded AS (
    INSERT INTO toolkit_credit_ledger (account, run_id, kind, amount, reason, created_at)
    SELECT d.account, d.run_id, 'REFUND', d.amount, 'run failed: orphaned', now()
    FROM failed f JOIN toolkit_credit_ledger d ON d.run_id = f.id AND d.kind = 'DEBIT'
    ON CONFLICT (run_id, kind) DO NOTHING
    RETURNING account, amount
)
UPDATE toolkit_credit_accounts AS a
SET balance = a.balance + t.total, updated_at = now()
FROM (SELECT account, sum(amount) AS total FROM refunded GROUP BY account) AS t
WHERE a.account = t.account
"""

STATE = {
    "runs by status": "SELECT status, count(*) FROM toolkit_runs GROUP BY 1 ORDER BY 1",
    "ledger by kind": (
        "SELECT kind, count(*), sum(amount) FROM toolkit_credit_ledger GROUP BY 1 ORDER BY 1"
    ),
    "dead letters": "SELECT count(*) FROM toolkit_dead_letters",
    "balances": (
        "SELECT md5(string_agg(account || ':' || balance, ',' ORDER BY account)), sum(balance) "
        "FROM toolkit_credit_accounts"
    ),
    "still owed": (
        "SELECT count(*) FROM toolkit_runs r WHERE r.status IN ('FAILED', 'CANCELLED') "
        "AND EXISTS (SELECT 1 FROM toolkit_credit_ledger d WHERE d.run_id = r.id "
        "AND d.kind = 'DEBIT') AND NOT EXISTS (SELECT 1 FROM toolkit_credit_ledger x "
        "WHERE x.run_id = r.id AND x.kind = 'REFUND')"
    ),
    "stuck orphans": (
        "SELECT count(*) FROM toolkit_runs WHERE status IN ('QUEUED', 'RUNNING') "
        f"AND recoveries >= {MAX_RECOVERIES}"
    ),
}
INVARIANT = """
SELECT count(*) FILTER (WHERE a.balance <> coalesce(l.balance, 0)),
       count(*) FILTER (WHERE a.balance < 0)
FROM toolkit_credit_accounts a
LEFT JOIN (SELECT account, sum(CASE kind WHEN 'DEBIT' THEN -amount ELSE amount END) AS balance
           FROM toolkit_credit_ledger GROUP BY account) l ON l.account = a.account
"""


# --- setup -----------------------------------------------------------------------------------


def seed(args: argparse.Namespace, console: Console) -> dict[str, float]:
    times: dict[str, float] = {}
    common.drop_databases(args.pg, args.admin_db, f"{args.db}_sql")
    common.recreate_database(args.pg, args.admin_db, args.db)
    db = Database(f"{args.pg}/{args.db}")
    db.migrate()
    db.dispose()
    params = {"runs": args.runs, "accounts": args.accounts, "max_recoveries": MAX_RECOVERIES}
    started = time.perf_counter()
    with psycopg.connect(f"{args.pg}/{args.db}") as conn:
        for statement in SEED:
            conn.execute(statement, params)
        conn.commit()
    times["seed_s"] = time.perf_counter() - started
    started = time.perf_counter()
    with psycopg.connect(f"{args.pg}/{args.db}", autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    times["vacuum_analyze_s"] = time.perf_counter() - started
    started = time.perf_counter()
    with common.admin_connection(args.pg, args.admin_db) as conn:
        conn.execute(f'CREATE DATABASE "{args.db}_sql" TEMPLATE "{args.db}"')
    times["clone_s"] = time.perf_counter() - started
    for name in (args.db, f"{args.db}_sql"):  # warm the OS cache alike for both sides
        with psycopg.connect(f"{args.pg}/{name}") as conn:
            conn.execute("SELECT count(*) FROM toolkit_runs").fetchone()
            conn.execute("SELECT count(*) FROM toolkit_credit_ledger").fetchone()
    console.print(
        f"seeded {args.runs:,} runs in {times['seed_s']:.1f} s "
        f"(+ vacuum analyze {times['vacuum_analyze_s']:.1f} s, clone {times['clone_s']:.1f} s)"
    )
    return times


# --- the two paths ---------------------------------------------------------------------------


def toolkit_cli(args: argparse.Namespace, command: list[str]) -> dict[str, Any]:
    """``python -m toolkit <command> --apply --json`` with its wall time and peak RSS."""
    argv = [
        sys.executable, "-m", "toolkit", "--database-url", f"{args.pg}/{args.db}",
        *command, "--apply", "--json", "--batch-size", str(args.batch_size),
    ]  # fmt: skip
    env = {**os.environ, "TOOLKIT_ACTOR": "maintenance-bench", "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        # wait4 (not Popen.wait) so the child's own rusage comes back: its peak RSS.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}: {stderr.decode()}")
    peak_kb = usage.ru_maxrss  # kilobytes on Linux
    report = json.loads(stdout)
    return {
        "wall_s": wall,
        "sweep_s": report["elapsed_s"],
        "peak_rss_mb": peak_kb / 1024,
        "changed": report["changed"],
        "credits": report["credits"],
        "batches": report["batches"],
    }


def set_based(args: argparse.Namespace, statement: str) -> dict[str, Any]:
    with psycopg.connect(f"{args.pg}/{args.db}_sql") as conn:
        started = time.perf_counter()
        cur = conn.execute(statement, {"max_recoveries": MAX_RECOVERIES})
        conn.commit()
        elapsed = time.perf_counter() - started
    return {"wall_s": elapsed, "accounts_updated": cur.rowcount}


def state(args: argparse.Namespace, name: str) -> dict[str, Any]:
    with psycopg.connect(f"{args.pg}/{name}") as conn:
        out: dict[str, Any] = {
            label: [list(r) for r in conn.execute(query).fetchall()]
            for label, query in STATE.items()
        }
        mismatched, negative = conn.execute(INVARIANT).fetchone() or (None, None)
    out["invariant"] = {"balance != ledger": mismatched, "negative balances": negative}
    return out


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    load_before = os.getloadavg()
    times = seed(args, console)
    before = state(args, args.db)
    if args.seed_only:
        return {"config": vars(args), "seed": times, "before": before}
    results: dict[str, Any] = {}
    for label, command, statement, python_first in (
        ("refund", ["refund"], SQL_REFUND, True),
        (
            "cleanup",
            ["cleanup", "orphans", "--older-than", "15m", "--max-recoveries", str(MAX_RECOVERIES)],
            SQL_CLEANUP,
            False,
        ),
    ):
        if python_first:
            py = toolkit_cli(args, command)
            sql = set_based(args, statement)
        else:
            sql = set_based(args, statement)
            py = toolkit_cli(args, command)
        ratio = py["wall_s"] / sql["wall_s"]
        results[label] = {
            "toolkit": py,
            "sql": sql,
            "ratio_wall": ratio,
            "ratio_sweep": py["sweep_s"] / sql["wall_s"],
            "goals": {
                "<= 2x set-based SQL (wall)": ratio <= 2,
                "<= 30 s": py["wall_s"] <= 30,
                "<= 200 MB peak RSS": py["peak_rss_mb"] <= 200,
            },
        }
        console.print(
            f"{label}: toolkit {py['wall_s']:.2f} s wall ({py['sweep_s']:.2f} s sweep), "
            f"{py['peak_rss_mb']:.0f} MB; SQL {sql['wall_s']:.2f} s; ratio {ratio:.2f}"
        )
    after_py, after_sql = state(args, args.db), state(args, f"{args.db}_sql")
    same = {k: after_py[k] == after_sql[k] for k in STATE}
    if not args.keep:
        common.drop_databases(args.pg, args.admin_db, args.db, f"{args.db}_sql")
    return {
        **common.header("maintenance"),
        "machine": common.machine(load_before),
        "config": {
            "runs": args.runs,
            "accounts": args.accounts,
            "batch_size": args.batch_size,
            "databases": [args.db, f"{args.db}_sql"],
            **times,
        },
        "before": before,
        "after_toolkit": after_py,
        "after_sql": after_sql,
        "same_state": same,
        "results": results,
    }


# --- output ----------------------------------------------------------------------------------


def render(result: dict[str, Any], console: Console) -> None:
    cfg = result["config"]
    table = Table(
        title=(
            f"Maintenance sweeps on PostgreSQL: {cfg['runs']:,} runs, {cfg['accounts']:,} "
            f"accounts, batch {cfg['batch_size']}"
        ),
        title_justify="left",
    )
    for column in (
        "sweep", "runs changed", "toolkit wall", "toolkit sweep", "peak RSS", "set-based SQL",
        "ratio (wall)", "goals",
    ):  # fmt: skip
        table.add_column(column, justify="right" if column != "goals" else "left")
    for label, r in result["results"].items():
        py, sql = r["toolkit"], r["sql"]
        goals = ", ".join(
            f"[green]{name}[/]" if ok else f"[red]{name} FAILED[/]"
            for name, ok in r["goals"].items()
        )
        table.add_row(
            label,
            f"{py['changed']:,}",
            f"{py['wall_s']:.2f} s",
            f"{py['sweep_s']:.2f} s",
            f"{py['peak_rss_mb']:.0f} MB",
            f"{sql['wall_s']:.2f} s",
            f"{r['ratio_wall']:.2f}x",
            goals,
        )
    console.print(table)
    same = result["same_state"]
    colour = "green" if all(same.values()) else "red"
    console.print(f"[{colour}]same end state on both sides: {same}[/]")
    for side in ("after_toolkit", "after_sql"):
        console.print(f"{side}: invariant {result[side]['invariant']}, "
                      f"still owed {result[side]['still owed']}, "
                      f"stuck orphans {result[side]['stuck orphans']}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_database_options(
        parser,
        "toolkit_bench_maint",
        db_help="scratch database, and <db>_sql for the set-based side (recreated)",
        admin_help="only used to create/drop --db",
    )
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=BULK_BATCH,
        help="--batch-size for the toolkit commands (default: theirs, %(default)s)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch databases")
    parser.add_argument(
        "--seed-only", action="store_true", help="seed both databases, keep them, time nothing"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal fails")
    args = parser.parse_args(argv)
    common.check_scratch_database(parser, args)
    console = Console(stderr=args.json)
    result = run(args, console)
    if args.seed_only:
        console.print(f"seeded and kept {args.db} and {args.db}_sql")
        return 0
    common.emit(result, args.json, render, console=console)
    ok = all(all(r["goals"].values()) for r in result["results"].values())
    ok = ok and all(result["same_state"].values())
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
