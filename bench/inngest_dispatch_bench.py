"""Dispatch to Inngest: ``tk.dispatch`` versus a raw ``client.send_sync`` of the same events.

Run: ``python bench/inngest_dispatch_bench.py`` (``--json`` for machine-readable output).

Both sides post to the same fake Inngest event API (``tests/support/inngest_fakes.py``: a
real HTTP/1.1 keep-alive server on 127.0.0.1 that answers like Inngest's ``/e/<key>``), each
through its own Inngest SDK client configured alike (production mode, event key, loopback
URL). Variants, interleaved round by round in a rotated order:

* ``tk.dispatch -> inngest``     - the full path: validate, flag evaluation, one transaction
                                   that records the run, then ``send_sync`` of its event
                                   (run id as event id, ``data={run_id, job}``).
* ``raw client.send_sync``       - the same event shape sent directly: the baseline.
* ``tk.dispatch -> no-op``       - the same dispatch to a backend that sends nothing: what
                                   recording the run costs on its own.
* ``raw httpx POST``             - the same JSON array posted with httpx: the SDK's own cost.

The database is a PostgreSQL scratch database (dropped and recreated; ``--pg``/``--db``,
``--synchronous-commit off`` to take the WAL flush out) or, with ``--sqlite``, a SQLite file
in a temporary directory. Reported: the median over rounds of
each variant's dispatches/s, and the ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _common as common
import httpx
import inngest
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the fake event API lives with the test support code

from tests.support.inngest_fakes import EVENT_KEY, SIGNING_KEY, FakeInngestApi  # noqa: E402
from toolkit import Toolkit  # noqa: E402

JOB = "bench-inngest"
NOOP_JOB = "bench-noop"
EVENT = "bench/inngest.requested"

VARIANTS: list[tuple[str, str]] = [
    ("tk.dispatch -> inngest", "dispatch_inngest"),
    ("raw client.send_sync", "raw_send"),
    ("tk.dispatch -> no-op", "dispatch_noop"),
    ("raw httpx POST", "raw_httpx"),
]
# (variant, baseline): the ratio reported is variant dispatches/s / baseline dispatches/s.
RATIOS = [
    ("tk.dispatch -> inngest", "raw client.send_sync"),
    ("raw client.send_sync", "raw httpx POST"),
]


def inngest_options(api: FakeInngestApi) -> dict[str, Any]:
    """One configuration for both sides: production mode, event key, the loopback API."""
    return {
        "app_id": "bench",
        "is_production": True,
        "event_key": EVENT_KEY,
        "signing_key": SIGNING_KEY,
        "event_api_base_url": api.url,
        "api_base_url": api.url,
    }


class Bench:
    def __init__(self, tk: Toolkit, api: FakeInngestApi) -> None:
        self.tk = tk
        self.api = api
        self.client = inngest.Inngest(**inngest_options(api))
        self.http = httpx.Client(timeout=30)
        self.url = f"{api.url}/e/{EVENT_KEY}"

    def dispatch_inngest(self, n: int) -> None:
        for i in range(n):
            self.tk.dispatch(JOB, {"i": i})

    def dispatch_noop(self, n: int) -> None:
        for i in range(n):
            self.tk.dispatch(NOOP_JOB, {"i": i})

    def raw_send(self, n: int) -> None:
        for _ in range(n):
            rid = str(uuid.uuid4())
            self.client.send_sync(
                inngest.Event(name=EVENT, id=rid, data={"run_id": rid, "job": JOB})
            )

    def raw_httpx(self, n: int) -> None:
        for _ in range(n):
            rid = str(uuid.uuid4())
            body = [
                {
                    "name": EVENT,
                    "id": rid,
                    "data": {"run_id": rid, "job": JOB},
                    "ts": int(time.time() * 1000),
                }
            ]
            self.http.post(self.url, json=body).raise_for_status()

    def close(self) -> None:
        self.http.close()


def setup(args: argparse.Namespace, workdir: Path) -> tuple[Bench, str]:
    if args.sqlite:
        url = f"sqlite:///{workdir / 'bench.db'}"
    else:
        url = common.recreate_database(args.pg, args.admin_db, args.db, args.synchronous_commit)
    tk = Toolkit(url, legacy_mode="blocking")
    tk.migrate()
    api = FakeInngestApi().start()

    def noop(ctx: Any, payload: Any) -> None:
        return None

    tk.job(JOB, event=EVENT, fallback="fail")(noop)  # an outage would show as FAILED runs
    tk.job(NOOP_JOB, target="noop")(noop)
    tk.use_backend("inngest", **inngest_options(api))
    tk.use_backend("noop", common.NoopBackend(tk.runtime))
    tk.set_rollout(JOB, 100, reason="bench: every run to inngest")
    tk.set_rollout(NOOP_JOB, 100, reason="bench: every run to the no-op backend")
    handle = tk.dispatch(JOB, {"i": -1})  # routing sanity: really the Inngest path
    assert (handle.backend, handle.status) == ("inngest", "QUEUED"), handle
    return Bench(tk, api), url.split("@")[-1]


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as workdir:
        bench, database = setup(args, Path(workdir))
        try:
            for _, method in VARIANTS:  # warm-up: connections, caches, code paths
                getattr(bench, method)(5)
            methods = dict(VARIANTS)
            started = time.perf_counter()
            samples = common.interleaved(
                list(methods),
                args.rounds,
                lambda name, _r: common.timed(getattr(bench, methods[name]), args.ops),
            )
            elapsed = time.perf_counter() - started
            sanity = check(bench)
        finally:
            bench.close()
            bench.api.close()
            bench.tk.close()
    n = args.ops
    per = {
        name: {
            "per_s": n / statistics.median(s),
            "ms_per_op": statistics.median(s) / n * 1e3,
            "min_per_s": n / max(s),
            "max_per_s": n / min(s),
        }
        for name, s in samples.items()
    }
    ratios = common.ratio_rows(RATIOS, {name: row["per_s"] for name, row in per.items()}, samples)
    return {
        **common.header("inngest_dispatch"),
        "inngest_sdk": _version("inngest"),
        "machine": common.machine(load_before),
        "database": database,
        "config": {
            "rounds": args.rounds,
            "ops": n,
            "timed_seconds": elapsed,
            "synchronous_commit": None if args.sqlite else args.synchronous_commit,
        },
        "variants": per,
        "ratios": ratios,
        "sanity": sanity,
        "samples_s": samples,
    }


def check(bench: Bench) -> dict[str, Any]:
    """Every timed dispatch really recorded a run and really posted one event."""
    inngest_runs = bench.tk.runs.list(job=JOB, limit=10**6)
    events = bench.api.events
    ids = {e["id"] for e in events}
    return {
        "inngest_runs": len(inngest_runs),
        "inngest_runs_queued": sum(r.status == "QUEUED" for r in inngest_runs),
        "every_run_has_its_event": all(str(r.id) in ids for r in inngest_runs),
        "events_received": len(events),
        "noop_runs": len(bench.tk.runs.list(job=NOOP_JOB, limit=10**6)),
        "rejected_event_keys": len(bench.api.rejected_keys),
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def render(result: dict[str, Any], console: Console) -> None:
    cfg = result["config"]
    table = Table(
        title=f"{cfg['ops']} sequential calls per block, median of {cfg['rounds']} rounds "
        f"({result['database']}, synchronous_commit={cfg['synchronous_commit']}, "
        "fake event API on loopback)"
    )
    table.add_column("variant")
    table.add_column("calls/s", justify="right")
    table.add_column("ms/call", justify="right")
    table.add_column("min-max calls/s", justify="right")
    for name, row in result["variants"].items():
        table.add_row(
            name,
            f"{row['per_s']:,.0f}",
            f"{row['ms_per_op']:.3f}",
            f"{row['min_per_s']:,.0f}-{row['max_per_s']:,.0f}",
        )
    console.print(table)
    rows = [(r["variant"], r["baseline"], r["ratio"], r["paired_ratio"]) for r in result["ratios"]]
    console.print(common.ratio_table("ratios (rate / rate, same run)", rows))
    s = result["sanity"]
    console.print(
        f"sanity: {s['inngest_runs']} runs dispatched to inngest, all QUEUED: "
        f"{s['inngest_runs_queued'] == s['inngest_runs']}, each with its event: "
        f"{s['every_run_has_its_event']}; {s['events_received']} events received in all; "
        f"timed section {cfg['timed_seconds']:.1f} s; load average (1 min) "
        f"{common.load_text(result['machine'])}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    common.add_database_options(
        parser, "toolkit_bench_inngest", db_help="scratch database (dropped and recreated)"
    )
    parser.add_argument("--sqlite", action="store_true", help="a temporary SQLite file instead")
    parser.add_argument("--synchronous-commit", choices=("on", "off"), default="on",
                        help="synchronous_commit of the PostgreSQL scratch database")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds")
    parser.add_argument("--ops", type=int, default=200, help="calls per block")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    common.check_scratch_database(parser, args)
    if args.rounds < 1 or args.ops < 1:
        parser.error("--rounds and --ops must be positive")
    common.emit(run(args), args.json, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
