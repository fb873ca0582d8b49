"""Celery backend on Redis: dispatch throughput and queue-to-start latency, toolkit vs raw Celery.

Run: ``python bench/celery_bench.py`` (``--json`` for machine-readable output). Needs the local
PostgreSQL and Redis. It drops and recreates its own scratch database (``toolkit_celery_bench``,
through an autocommit connection to ``test``, whose tables it never touches) and uses a Redis
database (``/12``) under a key prefix of its own, deleted at the end.

1. Throughput, no worker consuming, interleaved round by round in a rotated order:
   * ``tk.dispatch -> celery``: the full path for a job at 100 %: flag, run row (one
     transaction), then the publish of the job's task (task id = run id);
   * ``raw apply_async``: the same task object published with the same options and a fresh
     uuid as task id, nothing recorded. Goal: toolkit >= 0.7x raw.
   * ``tk.dispatch_many -> celery``: one transaction for the batch, then one publish per run;
   * ``tk.dispatch -> no-op (record only)``: the same dispatch to a backend that sends
     nothing, the toolkit's own share of ``tk.dispatch -> celery``.
2. With one real worker subprocess (``toolkit worker``, prefork, ``--concurrency``): its
   capacity (a backlog of ``--backlog`` runs, first start to last finish), then latency with
   runs dispatched at a steady ``--rate`` (default 100/s) for ``--seconds``:
   * toolkit: ``started_at - created_at`` of each run (the claim in the worker minus the
     dispatch), from the runs table. Goal: p95 <= 50 ms.
   * raw Celery: a task that records ``time.time() - sent_at`` (same worker, same queue, sent
     with ``apply_async`` at the same rate).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import _common as common
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from toolkit import Toolkit
from toolkit.store.models import Run

JOB = "bench-noop"
RECORD_JOB = "bench-record-only"
RAW_TASK = "bench.raw_probe"
HERE = Path(__file__).resolve().parent
ENV_DB, ENV_BROKER, ENV_PREFIX = "TOOLKIT_DATABASE_URL", "TOOLKIT_BROKER_URL", "BENCH_PREFIX"


# --- the app (also loaded by the worker subprocess: --app celery_bench:build_app) -----------


def build_app() -> Toolkit:
    tk = Toolkit(os.environ[ENV_DB], legacy_mode="blocking")

    @tk.job(JOB, target="celery", timeout=30)
    def noop(ctx: Any, payload: Any) -> None:
        return None

    @tk.job(RECORD_JOB, target="noop")
    def recorded(ctx: Any, payload: Any) -> None:
        return None

    tk.use_backend("noop", common.NoopBackend(tk.runtime))
    prefix = os.environ[ENV_PREFIX]
    backend = tk.use_backend(
        "celery",
        broker_url=os.environ[ENV_BROKER],
        queue=f"{prefix}q",
        key_prefix=prefix,
        visibility_timeout=300,
        transport_options={"global_keyprefix": prefix},
    )
    app = backend.app  # type: ignore[attr-defined]

    # celery has no type hints, so its task decorator is untyped
    @app.task(name=RAW_TASK, shared=False, acks_late=True, ignore_result=True)  # type: ignore[untyped-decorator]
    def raw_probe(sent_at: float) -> None:
        import redis

        lag = time.time() - sent_at
        client = redis.Redis.from_url(os.environ[ENV_BROKER])
        client.rpush(f"{prefix}raw-latency", repr(lag))
        client.close()

    return tk


# --- setup ----------------------------------------------------------------------------------


def purge(backend: Any) -> None:
    with backend.app.connection_for_write() as conn:
        conn.default_channel.queue_purge(backend.settings.queue)


def start_worker(
    args: argparse.Namespace, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "toolkit",
        "--app",
        "celery_bench:build_app",
        "worker",
        "--concurrency",
        str(args.concurrency),
        "--loglevel",
        "WARNING",
        "--hostname",
        f"bench-{env[ENV_PREFIX].strip(':')}@%h",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return proc


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # pool children that outlived the parent


# --- measurement ----------------------------------------------------------------------------


def in_threads(loop: Any, threads: int) -> Any:
    """``loop(n)`` split over ``threads`` threads started together; returns when all are done."""

    def run(n: int) -> None:
        workers = [
            threading.Thread(target=loop, args=(n // threads + (i < n % threads),))
            for i in range(threads)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    return run


def throughput(tk: Toolkit, args: argparse.Namespace) -> dict[str, Any]:
    backend: Any = tk.backends["celery"]
    task = backend.task_for(tk.jobs.get(JOB))
    queue, policy = backend.settings.queue, backend.publish_policy

    def toolkit_dispatch(n: int) -> None:
        for i in range(n):
            tk.dispatch(JOB, {"i": i})

    def raw_apply_async(n: int) -> None:
        for _ in range(n):
            rid = str(uuid.uuid4())
            task.apply_async(args=(rid,), task_id=rid, queue=queue, retry=True, retry_policy=policy)

    def toolkit_dispatch_many(n: int) -> None:
        tk.dispatch_many(JOB, [{"i": i} for i in range(n)])

    def record_only(n: int) -> None:
        for i in range(n):
            tk.dispatch(RECORD_JOB, {"i": i})

    variants = {
        "tk.dispatch -> celery": toolkit_dispatch,
        "raw apply_async": raw_apply_async,
        "tk.dispatch_many -> celery": toolkit_dispatch_many,
        "tk.dispatch -> no-op (record only)": record_only,
    }
    baseline = dict.fromkeys(variants, "raw apply_async")
    if args.threads > 1:  # the same loops from several threads at once, as a web process would
        tk_threads = f"tk.dispatch -> celery, {args.threads} threads"
        raw_threads = f"raw apply_async, {args.threads} threads"
        variants[tk_threads] = in_threads(toolkit_dispatch, args.threads)
        variants[raw_threads] = in_threads(raw_apply_async, args.threads)
        baseline[tk_threads] = raw_threads
        baseline[raw_threads] = raw_threads
    for fn in variants.values():  # warm-up: connections, prepared statements
        fn(20)

    def measure(name: str, _round: int) -> float:
        purge(backend)  # untimed: every block starts from an empty queue
        start = time.perf_counter()
        variants[name](args.ops)
        return time.perf_counter() - start

    samples = common.interleaved(list(variants), args.rounds, measure)
    purge(backend)
    rates = {name: args.ops / statistics.median(s) for name, s in samples.items()}
    paired = {
        name: common.paired_ratio(samples[name], samples[baseline[name]])
        for name in variants
        if baseline[name] != name
    }
    return {
        "ops_per_block": args.ops,
        "rounds": args.rounds,
        "threads": args.threads,
        "runs_per_s": rates,
        "ratio_vs_raw": {n: rates[n] / rates[baseline[n]] for n in paired},
        "baseline": {n: baseline[n] for n in paired},
        "paired_ratio_vs_raw": paired,
        "samples_s": samples,
    }


def unfinished(tk: Toolkit, ids: list[Any]) -> int:
    with tk.db.transaction() as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(Run)
                .where(Run.id.in_(ids), Run.status.in_(("QUEUED", "RUNNING")))
            )
            or 0
        )


def drain_rate(tk: Toolkit, backlog: int) -> float:
    """Runs/s the worker completes from a backlog: first start to last finish."""
    ids = [h.run_id for h in tk.dispatch_many(JOB, [{"backlog": i} for i in range(backlog)])]
    deadline = time.monotonic() + 120
    while unfinished(tk, ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    with tk.db.transaction() as s:
        first, last = s.execute(
            select(func.min(Run.started_at), func.max(Run.finished_at)).where(Run.id.in_(ids))
        ).one()
    assert first is not None and last is not None, "no run of the backlog finished"
    return backlog / max((last - first).total_seconds(), 1e-9)


def paced(count: int, rate: float, send: Any) -> float:
    """Call ``send(i)`` ``count`` times at a steady ``rate``; returns the achieved rate."""
    start = time.perf_counter()
    for i in range(count):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(i)
    return count / (time.perf_counter() - start)


def latency(tk: Toolkit, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    import redis

    backend: Any = tk.backends["celery"]
    prefix = env[ENV_PREFIX]
    raw = backend.app.tasks.get(RAW_TASK)
    assert raw is not None, "the raw probe task is registered by build_app"
    log = Path(f"/tmp/celery-bench-worker-{os.getpid()}.log")
    proc = start_worker(args, env, log)
    try:
        deadline = time.monotonic() + 60
        while True:  # ready = a run goes through
            probe = tk.dispatch(JOB, {"warmup": True})
            time.sleep(0.5)
            if tk.runs.get(probe.run_id).status == "COMPLETED":
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker did not start:\n{log.read_text()[-3000:]}")
        for i in range(50):  # warm both pool processes on both paths
            tk.dispatch(JOB, {"warmup": i})
            raw.apply_async(args=(time.time(),), queue=backend.settings.queue)
            time.sleep(0.01)
        time.sleep(1.0)
        capacity = drain_rate(tk, args.backlog)
        count = int(args.rate * args.seconds)
        ids: list[Any] = []
        achieved_tk = paced(
            count, args.rate, lambda i: ids.append(tk.dispatch(JOB, {"i": i}).run_id)
        )
        deadline = time.monotonic() + 120
        while unfinished(tk, ids) and time.monotonic() < deadline:  # drained before the raw side
            time.sleep(0.2)
        client = redis.Redis.from_url(env[ENV_BROKER])
        client.delete(f"{prefix}raw-latency")
        achieved_raw = paced(
            count,
            args.rate,
            lambda i: raw.apply_async(args=(time.time(),), queue=backend.settings.queue),
        )
        deadline = time.monotonic() + 120
        while client.llen(f"{prefix}raw-latency") < count and time.monotonic() < deadline:
            time.sleep(0.2)
        raw_lags = [float(x) for x in client.lrange(f"{prefix}raw-latency", 0, -1)]
        client.close()
    finally:
        stop_worker(proc)
    with tk.db.transaction() as s:
        rows = s.execute(
            select(Run.status, Run.created_at, Run.started_at).where(Run.id.in_(ids))
        ).all()
    statuses = dict(Counter(r.status for r in rows))
    lags = [(r.started_at - r.created_at).total_seconds() for r in rows if r.started_at]
    return {
        "rate": args.rate,
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "achieved_rate": {"toolkit": achieved_tk, "raw": achieved_raw},
        "worker_capacity_runs_per_s": capacity,
        "backlog": args.backlog,
        "toolkit": common.latency_percentiles(lags),
        "raw": common.latency_percentiles(raw_lags) if raw_lags else None,
        "statuses": statuses,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    load = os.getloadavg()
    url = common.recreate_database(args.pg, args.admin_db, args.db, args.synchronous_commit)
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLKIT_")}
    env.update(
        {
            ENV_DB: url,
            ENV_BROKER: args.broker,
            ENV_PREFIX: prefix,
            "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)]),
        }
    )
    os.environ.update({ENV_DB: url, ENV_BROKER: args.broker, ENV_PREFIX: prefix})
    tk = build_app()
    tk.migrate()
    tk.set_rollout(JOB, 100, reason="bench: every run on celery")
    tk.set_rollout(RECORD_JOB, 100, reason="bench: every run on the no-op backend")
    try:
        result: dict[str, Any] = {"throughput": throughput(tk, args)}
        result["latency"] = latency(tk, args, env)
    finally:
        import redis

        client = redis.Redis.from_url(args.broker)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        tk.close()
    return {
        **common.header("celery"),
        "machine": common.machine(),
        "broker": args.broker,
        "database": f"{args.pg}/{args.db}",
        "synchronous_commit": args.synchronous_commit,
        "load_average_before": load,
        **result,
    }


# --- output ---------------------------------------------------------------------------------


def render(result: dict[str, Any], console: Console) -> None:
    tp = result["throughput"]
    table = Table(
        title=f"dispatch throughput: {tp['ops_per_block']} runs per block, "
        f"median of {tp['rounds']} rounds (no worker consuming)"
    )
    for col in ("variant", "runs/s", "µs/run", "vs raw", "paired vs raw", "raw = "):
        table.add_column(col, justify="right" if col in ("runs/s", "µs/run") else "left")
    for name, rate in tp["runs_per_s"].items():
        ratio = tp["ratio_vs_raw"].get(name)
        paired = tp["paired_ratio_vs_raw"].get(name)
        table.add_row(
            name,
            f"{rate:,.0f}",
            f"{1e6 / rate:,.0f}",
            f"{ratio:.2f}x" if ratio else "-",
            f"{paired:.2f}x" if paired else "-",
            tp.get("baseline", {}).get(name, "-"),
        )
    console.print(table)
    single = tp["ratio_vs_raw"]["tk.dispatch -> celery"]
    console.print(
        f"synchronous_commit={result['synchronous_commit']} on the scratch database; "
        f"load average at start {result['load_average_before'][0]:.2f}"
    )
    console.print(
        f"goal tk.dispatch >= 0.7x raw apply_async: "
        f"{'[green]PASS' if single >= 0.7 else '[red]FAIL'}[/] ({single:.2f}x)"
    )

    lat = result["latency"]
    table = Table(
        title=f"queue-to-start latency at {lat['rate']:g} runs/s for "
        f"{lat['seconds']:g} s, one worker, prefork x{lat['concurrency']}"
    )
    for col in ("path", "runs", "achieved/s", "p50 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for name in ("toolkit", "raw"):
        row = lat[name]
        if row:
            table.add_row(
                name,
                str(row["count"]),
                f"{lat['achieved_rate'][name]:.1f}",
                f"{row['p50_ms']:.1f}",
                f"{row['p95_ms']:.1f}",
                f"{row['p99_ms']:.1f}",
                f"{row['max_ms']:.1f}",
            )
    console.print(table)
    console.print(
        f"worker capacity (backlog of {lat['backlog']} runs drained): "
        f"{lat['worker_capacity_runs_per_s']:.0f} runs/s"
    )
    p95 = lat["toolkit"]["p95_ms"]
    console.print(
        f"goal toolkit p95 <= 50 ms: {'[green]PASS' if p95 <= 50 else '[red]FAIL'}[/] "
        f"({p95:.1f} ms); run statuses: {lat['statuses']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_database_options(parser, "toolkit_celery_bench")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=300, help="runs per throughput block")
    parser.add_argument(
        "--threads",
        type=int,
        default=4,
        help="also measure tk.dispatch and raw apply_async from this many threads (0: do not)",
    )
    parser.add_argument("--rate", type=float, default=100.0, help="runs/s for the latency test")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency test")
    parser.add_argument("--concurrency", type=int, default=2, help="worker pool processes")
    parser.add_argument(
        "--backlog",
        type=int,
        default=500,
        help="runs queued at once to measure the worker's capacity",
    )
    parser.add_argument(
        "--synchronous-commit",
        choices=("on", "off"),
        default="on",
        help="synchronous_commit of the scratch database (server default: on)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    common.check_scratch_database(parser, args)
    if min(args.rounds, args.ops, args.concurrency) < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--rounds, --ops, --concurrency, --rate and --seconds must be positive")
    if args.threads < 0:
        parser.error("--threads must be 0 or more")
    common.emit(run(args), args.json, render, width=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
