"""Dispatch throughput on PostgreSQL: tk.dispatch / tk.dispatch_many versus a plain INSERT.

Run: ``python bench/dispatch_bench.py`` (add ``--json`` for machine-readable output).

It drops and recreates its own scratch database (``toolkit_bench`` by default, created through an
autocommit connection to the ``test`` database, whose tables are never touched), migrates it,
and times, interleaved round by round in a rotated order:

single run per call (one transaction per run on the raw side):
* ``dispatch legacy-blocking``  - job at 0 % -> legacy backend in blocking mode: the full path,
                                  record the run, then execute it in the caller (claim, run the
                                  no-op, complete) and re-read it for the handle.
* ``dispatch record-only``      - job at 100 % -> a registered no-op backend: routing plus the
                                  recording transaction only.
* ``dispatch record+debit``     - as above with ``cost=1``: the credit debit commits in the
                                  same transaction as the run.
* ``raw psycopg INSERT``        - the same row into toolkit_runs through psycopg, 1 txn each.
* ``raw psycopg INSERT+debit``  - the row, the conditional balance UPDATE and the ledger INSERT.
* ``raw Core INSERT``           - SQLAlchemy Core ``insert(Run)`` on a default engine.
* ``raw Core INSERT pre_ping``  - the same on an engine with ``pool_pre_ping=True`` (a ping on
                                  every checkout; the toolkit pings only connections idle > 1 s).

batches (one transaction per batch on the raw side), for each ``--batch-sizes`` value:
``dispatch_many`` legacy-blocking / record-only / record+debit versus ``executemany`` through
psycopg (with and without the debit) and through SQLAlchemy Core.

Reported: the median over rounds of each variant's runs/s, and toolkit rate / raw rate (ratio of
medians and median of per-round paired ratios). Before each round (untimed) the toolkit tables
are ANALYZEd, as autovacuum would (it is off on the benchmark server); see ``analyze``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import _common as common
import psycopg
from psycopg.types.json import Json
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, insert
from sqlalchemy.engine import Engine

from toolkit import DispatchRequest, Toolkit
from toolkit.store.models import Run

ACCOUNT = "bench-account"
LEGACY_JOB = "noop"
RECORD_JOB = "noop-job"
COST_JOB = "noop-cost"

RUN_COLUMNS = (
    "id", "job", "idempotency_key", "targeting_key", "backend", "arm", "status", "payload",
    "attempts", "account", "cost", "route_reason", "recoveries", "created_at",
)  # fmt: skip
INSERT_RUN = (
    f"INSERT INTO toolkit_runs ({', '.join(RUN_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(RUN_COLUMNS))})"
)
SPEND = (
    "UPDATE toolkit_credit_accounts SET balance = balance - %s, updated_at = %s "
    "WHERE account = %s AND balance >= %s"
)
INSERT_DEBIT = (
    "INSERT INTO toolkit_credit_ledger (account, run_id, kind, amount, created_at) "
    "VALUES (%s, %s, 'DEBIT', %s, %s)"
)


# --- rows for the raw side -------------------------------------------------------------------


def run_row(i: int, *, job: str, cost: int = 0) -> dict[str, Any]:
    """What Dispatcher._row writes for a routed run, built independently."""
    run_id = uuid.uuid4()
    return {
        "id": run_id, "job": job, "idempotency_key": None, "targeting_key": str(run_id),
        "backend": "noop", "arm": "noop", "status": "QUEUED", "payload": {"i": i}, "attempts": 0,
        "account": ACCOUNT if cost else None, "cost": cost, "route_reason": "SPLIT",
        "recoveries": 0, "created_at": datetime.now(UTC),
    }  # fmt: skip


def run_params(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(Json(row[c]) if c == "payload" else row[c] for c in RUN_COLUMNS)


# --- the measured operations -----------------------------------------------------------------


@dataclass
class Bench:
    tk: Toolkit
    pg: psycopg.Connection[Any]
    core: Engine
    core_ping: Engine

    # single ------------------------------------------------------------------------------
    def dispatch_legacy(self, n: int) -> None:
        for i in range(n):
            self.tk.dispatch(LEGACY_JOB, {"i": i})

    def dispatch_record(self, n: int) -> None:
        for i in range(n):
            self.tk.dispatch(RECORD_JOB, {"i": i})

    def dispatch_debit(self, n: int) -> None:
        for i in range(n):
            self.tk.dispatch(COST_JOB, {"i": i}, account=ACCOUNT)

    def raw_insert(self, n: int) -> None:
        pg = self.pg
        for i in range(n):
            pg.execute(INSERT_RUN, run_params(run_row(i, job="raw")))
            pg.commit()

    def raw_insert_debit(self, n: int) -> None:
        pg = self.pg
        for i in range(n):
            row = run_row(i, job="raw-cost", cost=1)
            pg.execute(INSERT_RUN, run_params(row))
            now = datetime.now(UTC)
            if pg.execute(SPEND, (1, now, ACCOUNT, 1)).rowcount != 1:
                raise RuntimeError("insufficient credits")
            pg.execute(INSERT_DEBIT, (ACCOUNT, row["id"], 1, now))
            pg.commit()

    def _core_insert(self, engine: Engine, n: int) -> None:
        for i in range(n):
            with engine.begin() as conn:
                conn.execute(insert(Run), [run_row(i, job="raw-core")])

    def core_insert(self, n: int) -> None:
        self._core_insert(self.core, n)

    def core_insert_ping(self, n: int) -> None:
        self._core_insert(self.core_ping, n)

    # batch -------------------------------------------------------------------------------
    def many_legacy(self, n: int) -> None:
        self.tk.dispatch_many(LEGACY_JOB, [{"i": i} for i in range(n)])

    def many_record(self, n: int) -> None:
        self.tk.dispatch_many(RECORD_JOB, [{"i": i} for i in range(n)])

    def many_debit(self, n: int) -> None:
        reqs = [DispatchRequest({"i": i}, account=ACCOUNT) for i in range(n)]
        self.tk.dispatch_many(COST_JOB, reqs)

    def raw_many(self, n: int) -> None:
        rows = [run_params(run_row(i, job="raw")) for i in range(n)]
        with self.pg.cursor() as cur:
            cur.executemany(INSERT_RUN, rows)
        self.pg.commit()

    def raw_many_debit(self, n: int) -> None:
        rows = [run_row(i, job="raw-cost", cost=1) for i in range(n)]
        now = datetime.now(UTC)
        with self.pg.cursor() as cur:
            cur.executemany(INSERT_RUN, [run_params(r) for r in rows])
            if cur.execute(SPEND, (n, now, ACCOUNT, n)).rowcount != 1:
                raise RuntimeError("insufficient credits")
            cur.executemany(INSERT_DEBIT, [(ACCOUNT, r["id"], 1, now) for r in rows])
        self.pg.commit()

    def core_many(self, n: int) -> None:
        rows = [run_row(i, job="raw-core") for i in range(n)]
        with self.core.begin() as conn:
            conn.execute(insert(Run), rows)


SINGLE: list[tuple[str, str]] = [
    ("dispatch legacy-blocking", "dispatch_legacy"),
    ("dispatch record-only", "dispatch_record"),
    ("dispatch record+debit", "dispatch_debit"),
    ("raw psycopg INSERT", "raw_insert"),
    ("raw psycopg INSERT+debit", "raw_insert_debit"),
    ("raw Core INSERT", "core_insert"),
    ("raw Core INSERT pre_ping", "core_insert_ping"),
]
BATCH: list[tuple[str, str]] = [
    ("dispatch_many legacy-blocking", "many_legacy"),
    ("dispatch_many record-only", "many_record"),
    ("dispatch_many record+debit", "many_debit"),
    ("raw psycopg executemany", "raw_many"),
    ("raw psycopg executemany+debit", "raw_many_debit"),
    ("raw Core executemany", "core_many"),
]
# (toolkit variant, raw baseline): the ratio reported is toolkit runs/s / raw runs/s.
SINGLE_RATIOS = [
    ("dispatch legacy-blocking", "raw psycopg INSERT"),
    ("dispatch record-only", "raw psycopg INSERT"),
    ("dispatch record-only", "raw Core INSERT"),
    ("dispatch record+debit", "raw psycopg INSERT+debit"),
    ("raw Core INSERT pre_ping", "raw Core INSERT"),
]
BATCH_RATIOS = [
    ("dispatch_many legacy-blocking", "raw psycopg executemany"),
    ("dispatch_many record-only", "raw psycopg executemany"),
    ("dispatch_many record-only", "raw Core executemany"),
    ("dispatch_many record+debit", "raw psycopg executemany+debit"),
]


# --- setup -----------------------------------------------------------------------------------


def setup(args: argparse.Namespace) -> Bench:
    url = common.recreate_database(args.pg, args.admin_db, args.db, args.synchronous_commit)
    tk = Toolkit(url, legacy_mode="blocking")
    tk.migrate()

    def noop(ctx: Any, payload: Any) -> None:
        return None

    tk.job(LEGACY_JOB, target="inngest")(noop)
    tk.job(RECORD_JOB, target="noop")(noop)
    tk.job(COST_JOB, target="noop", cost=1)(noop)
    tk.use_backend("noop", common.NoopBackend(tk.runtime))
    tk.set_rollout(LEGACY_JOB, 0, reason="bench: everything on legacy")
    tk.set_rollout(RECORD_JOB, 100, reason="bench: everything on the no-op backend")
    tk.set_rollout(COST_JOB, 100, reason="bench: everything on the no-op backend")
    tk.credits.grant(ACCOUNT, 10**15, reason="bench")

    # Routing sanity: the variants really take the paths they are named after.
    assert tk.dispatch(LEGACY_JOB, {"i": -1}).status == "COMPLETED"
    assert tk.dispatch(RECORD_JOB, {"i": -1}).backend == "noop"
    assert tk.dispatch(COST_JOB, {"i": -1}, account=ACCOUNT).backend == "noop"

    raw_url = f"{args.pg}/{args.db}"
    return Bench(
        tk=tk,
        pg=psycopg.connect(raw_url),
        core=create_engine(url),
        core_ping=create_engine(url, pool_pre_ping=True),
    )


# --- measurement -----------------------------------------------------------------------------


def analyze(bench: Bench) -> None:
    """What autovacuum would do (it is off on the benchmark server): refresh the statistics.

    Without it, the generic plan PostgreSQL caches for a statement psycopg prepared (after 5
    executions) while toolkit_runs was still nearly empty stays in use as the table grows; for
    the claim/complete UPDATEs (``WHERE id = ... AND status = ...``) that plan scans
    ``ix_toolkit_runs_status_created_at`` over every QUEUED row. ANALYZE invalidates it.
    ``--no-analyze`` shows that effect.
    """
    bench.pg.execute("ANALYZE toolkit_runs, toolkit_credit_accounts, toolkit_credit_ledger")
    bench.pg.commit()


def stats(samples: list[float], n: int) -> dict[str, float]:
    med = statistics.median(samples)
    return {
        "runs_per_s": n / med,
        "us_per_run": med / n * 1e6,
        "min_runs_per_s": n / max(samples),
        "max_runs_per_s": n / min(samples),
        "median_block_s": med,
    }


def sanity(bench: Bench) -> dict[str, Any]:
    with bench.pg.cursor() as cur:
        by = cur.execute(
            "SELECT job, backend, status, count(*) FROM toolkit_runs "
            "GROUP BY job, backend, status ORDER BY 1, 2, 3"
        ).fetchall()
        debits = cur.execute(
            "SELECT count(*), coalesce(sum(amount), 0) FROM toolkit_credit_ledger "
            "WHERE kind = 'DEBIT'"
        ).fetchone()
        cost_runs = cur.execute("SELECT count(*) FROM toolkit_runs WHERE cost > 0").fetchone()
    bench.pg.commit()
    grants = 10**15
    balance = bench.tk.credits.balance(ACCOUNT)
    return {
        "runs": [{"job": j, "backend": b, "status": s, "count": c} for j, b, s, c in by],
        "debit_entries": debits[0] if debits else None,
        "runs_with_cost": cost_runs[0] if cost_runs else None,
        "balance_consistent": balance == grants - (debits[1] if debits else 0),
    }


def profile(bench: Bench, n_single: int, n_batch: int, top: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for label, fn, n in (
        (f"tk.dispatch record-only x {n_single}", bench.dispatch_record, n_single),
        (f"tk.dispatch legacy-blocking x {n_single}", bench.dispatch_legacy, n_single),
        (f"tk.dispatch_many record-only, batch of {n_batch}", bench.many_record, n_batch),
    ):
        prof = cProfile.Profile()
        prof.enable()
        fn(n)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
        out[label] = buf.getvalue()
    return out


WRAPPED = ("dispatch", "_validate", "route", "connect", "debit_in", "claim", "complete", "get",
           "dispatch_many", "record_many", "_submit")  # fmt: skip


def breakdown(bench: Bench, n: int, batch: int) -> dict[str, dict[str, float]]:
    """Median wall time of the pieces of one dispatch, timed by wrapping them on the instances.

    Only instance attributes of this Toolkit are wrapped (nothing in toolkit/ is changed); the
    wrappers cost about a microsecond each. ``pool checkout`` includes the ping the toolkit's
    engine sends to a connection that sat idle for over a second (none in a busy loop).
    """
    tk = bench.tk
    samples: dict[str, list[float]] = {}

    def wrap(obj: Any, attr: str, label: str) -> None:
        fn = getattr(obj, attr, None)
        if fn is None:  # renamed in toolkit/: leave that piece out
            return

        def timed_call(*a: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                samples.setdefault(label, []).append(time.perf_counter() - start)

        setattr(obj, attr, timed_call)

    wrap(tk.dispatcher, "dispatch", "tk.dispatch (total)")
    wrap(tk.dispatcher, "_validate", "validate payload (json round trip)")
    wrap(tk.dispatcher, "route", "route (OpenFeature evaluation)")
    wrap(tk.db.engine.pool, "connect", "pool checkout (ping if idle)")
    wrap(tk.credits, "debit_in", "credits.debit_in (UPDATE + INSERT)")
    wrap(tk.runtime, "claim", "runtime.claim (autocommit UPDATE RETURNING)")
    wrap(tk.runtime, "complete", "runtime.complete (autocommit UPDATE)")
    wrap(tk.runs, "get", "handle.refresh -> runs.get (autocommit SELECT)")
    wrap(tk.dispatcher, "dispatch_many", "tk.dispatch_many (total)")
    wrap(tk.records, "record_many", "records.record_many (txn: Core INSERT of the batch)")
    wrap(tk.dispatcher, "_submit", "_submit (handles + backend.submit)")
    out: dict[str, dict[str, float]] = {}
    try:
        for label, fn in (
            ("record-only", bench.dispatch_record),
            ("record+debit", bench.dispatch_debit),
            ("legacy-blocking", bench.dispatch_legacy),
        ):
            fn(5)
            samples.clear()
            fn(n)
            out[label] = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
            out[label]["calls per dispatch: pool checkout"] = (
                len(samples.get("pool checkout (ping if idle)", [])) / n
            )
        for label, fn in (("raw psycopg INSERT", bench.raw_insert),
                          ("raw psycopg INSERT+debit", bench.raw_insert_debit)):  # fmt: skip
            fn(5)
            each = []
            for _ in range(n):
                start = time.perf_counter()
                fn(1)
                each.append(time.perf_counter() - start)
            out[label] = {"total": statistics.median(each) * 1e3}
        # One batch: the pieces summed over the call and divided by the runs in it.
        bench.many_record(batch)
        samples.clear()
        bench.many_record(batch)
        out[f"dispatch_many record-only x{batch}, per run"] = {
            k: sum(v) / batch * 1e3 for k, v in samples.items()
        }
        bench.raw_many(batch)
        start = time.perf_counter()
        bench.raw_many(batch)
        out[f"raw psycopg executemany x{batch}, per run"] = {
            "total": (time.perf_counter() - start) / batch * 1e3
        }
    finally:
        for obj in (tk.dispatcher, tk.db.engine.pool, tk.credits, tk.runtime, tk.runs, tk.records):
            for attr in [a for a in WRAPPED if a in vars(obj)]:
                delattr(obj, attr)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    bench = setup(args)
    try:
        groups: list[tuple[str, int, list[tuple[str, str]]]] = [("single", args.ops, SINGLE)]
        for size in args.batch_sizes:
            # dispatch_many on legacy-blocking executes every run in the caller, one after the
            # other: its per-run cost is the single-dispatch cost, so big batches only take time.
            variants = [v for v in BATCH if size <= args.legacy_batch_max or "legacy" not in v[0]]
            groups.append((f"batch {size}", size, variants))
        # Warm-up: connections, prepared statements, caches, code paths.
        for _, _, variants in groups:
            for _, method in variants:
                getattr(bench, method)(5)

        samples: dict[str, dict[str, list[float]]] = {
            g: {name: [] for name, _ in variants} for g, _, variants in groups
        }
        started = time.perf_counter()
        for r in range(args.rounds):
            if args.analyze:
                analyze(bench)  # untimed
            for group, n, variants in common.rotated(groups, r):
                for name, method in common.rotated(variants, r):
                    samples[group][name].append(common.timed(getattr(bench, method), n))
        elapsed = time.perf_counter() - started

        results: dict[str, Any] = {}
        for group, n, variants in groups:
            per = {name: stats(samples[group][name], n) for name, _ in variants}
            pairs = [
                (a, b)
                for a, b in (SINGLE_RATIOS if group == "single" else BATCH_RATIOS)
                if a in per and b in per
            ]
            rates = {name: row["runs_per_s"] for name, row in per.items()}
            ratios = common.ratio_rows(pairs, rates, samples[group], labels=("toolkit", "raw"))
            results[group] = {"runs_per_block": n, "variants": per, "ratios": ratios}
        check = sanity(bench)
        if args.analyze:
            analyze(bench)
        parts = breakdown(bench, args.breakdown, max(args.batch_sizes)) if args.breakdown else None
        prof = profile(bench, args.ops, max(args.batch_sizes), args.profile_top) if (
            args.profile
        ) else None  # fmt: skip
    finally:
        bench.pg.close()
        bench.core.dispose()
        bench.core_ping.dispose()
        bench.tk.close()

    return {
        **common.header("dispatch"),
        "machine": common.machine(load_before),
        "postgres": args.pg + "/" + args.db,
        "config": {
            "analyze_each_round": args.analyze,
            "synchronous_commit": args.synchronous_commit,
            "legacy_batch_max": args.legacy_batch_max,
            "rounds": args.rounds,
            "ops": args.ops,
            "batch_sizes": args.batch_sizes,
            "timed_seconds": elapsed,
        },
        "groups": results,
        "sanity": check,
        "breakdown_ms": parts,
        "samples_s": samples,
        "profile": prof,
    }


# --- output ----------------------------------------------------------------------------------


def render(result: dict[str, Any], console: Console) -> None:
    cfg = result["config"]
    for group, data in result["groups"].items():
        n = data["runs_per_block"]
        what = f"{n} calls of tk.dispatch" if group == "single" else f"one call with {n} runs"
        table = Table(title=f"{group}: {what} per block, median of {cfg['rounds']} rounds")
        table.add_column("variant")
        table.add_column("runs/s", justify="right")
        table.add_column("µs/run", justify="right")
        table.add_column("min-max runs/s", justify="right")
        for name, row in data["variants"].items():
            table.add_row(
                name,
                f"{row['runs_per_s']:,.0f}",
                f"{row['us_per_run']:,.0f}",
                f"{row['min_runs_per_s']:,.0f}-{row['max_runs_per_s']:,.0f}",
            )
        console.print(table)
        rows = [(r["toolkit"], r["raw"], r["ratio"], r["paired_ratio"]) for r in data["ratios"]]
        console.print(common.ratio_table(f"{group}: ratios (rate / rate, same run)", rows))

    check = result["sanity"]
    console.print(
        f"sanity: {check['debit_entries']} DEBIT ledger rows for {check['runs_with_cost']} "
        f"runs with a cost; balance consistent with the ledger: {check['balance_consistent']}"
    )
    legacy = [r for r in check["runs"] if r["job"] == LEGACY_JOB]
    console.print(
        "legacy runs by status: "
        + ", ".join(f"{r['backend']}/{r['status']}={r['count']}" for r in legacy)
    )
    console.print(
        f"timed section: {cfg['timed_seconds']:.1f} s; synchronous_commit="
        f"{cfg['synchronous_commit']} on the scratch database; ANALYZE before each round: "
        f"{cfg['analyze_each_round']}; load average (1 min) {common.load_text(result['machine'])}"
    )
    if result.get("breakdown_ms"):
        table = Table(title="where the time goes: ms, median per call (batch: mean per run)")
        table.add_column("path")
        table.add_column("piece")
        table.add_column("ms", justify="right")
        for path, pieces in result["breakdown_ms"].items():
            for piece, ms in pieces.items():
                table.add_row(path, piece, f"{ms:.3f}")
        console.print(table)
    for label, text in (result.get("profile") or {}).items():
        console.print(f"cProfile: {label} (sorted by tottime)")
        console.print(text, markup=False, highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_database_options(parser, "toolkit_bench")
    parser.add_argument("--rounds", type=int, default=11, help="interleaved rounds")
    parser.add_argument("--ops", type=int, default=20, help="tk.dispatch calls per block")
    parser.add_argument("--batch-sizes", default="100,1000",
                        help="comma-separated dispatch_many sizes")  # fmt: skip
    parser.add_argument("--legacy-batch-max", type=int, default=100,
                        help="largest batch also timed through legacy-blocking")  # fmt: skip
    parser.add_argument("--synchronous-commit", choices=("on", "off"), default="on",
                        help="synchronous_commit of the scratch database")  # fmt: skip
    parser.add_argument("--no-analyze", dest="analyze", action="store_false",
                        help="skip the ANALYZE before each round (autovacuum's job)")  # fmt: skip
    parser.add_argument("--breakdown", type=int, default=0, metavar="N",
                        help="then time the pieces of N dispatches per path")  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="cProfile the toolkit paths")
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(s) for s in str(args.batch_sizes).split(",") if s.strip()]
    common.check_scratch_database(parser, args)
    if args.rounds < 1 or args.ops < 1 or not args.batch_sizes:
        parser.error("--rounds, --ops and --batch-sizes must be positive")

    common.emit(run(args), args.json, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
