"""The benchmark scripts in bench/ still run: each one end to end at its smallest size.

Every script runs as a subprocess (``python bench/X.py --json`` and the fewest rounds, runs and
seconds it accepts) and must exit 0 and print JSON with its top-level keys and sane values:
counts above zero, rates and ratios finite and above zero, its own sanity checks passing. No
timing is asserted: performance is measured by the scripts, never tested.

Scratch PostgreSQL databases get a name unique to this test run (``--db``) and are dropped
afterwards, whatever the script did; Redis keys live under the Celery bench's own prefix, which
it deletes itself. Without PostgreSQL or Redis the tests skip (fail under CI=true).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import PG_ADMIN_URL, ROOT, service_missing
from tests.support.celery_harness import REDIS_URL, unreachable

BENCH = ROOT / "bench"
TIMEOUT = 180.0  # a hang fails the test; a normal run takes seconds

_admin = make_url(PG_ADMIN_URL)
# the scripts take the server URL without a database (--pg) and the database apart (--admin-db)
PG_SERVER = (
    _admin.set(drivername="postgresql").render_as_string(hide_password=False).rsplit("/", 1)[0]
)
ADMIN_DB = _admin.database or "postgres"
RUN_ID = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"

# The top-level keys of each script's JSON, in order ("benchmark" names the script's own).
KEYS: dict[str, list[str]] = {
    "flags": [
        "benchmark", "date", "python", "machine", "config", "client", "provider_only", "ratios",
        "goal", "refreshes", "agreement", "breakdown_ns", "samples_s", "profile"
    ],
    "dispatch": [
        "benchmark", "date", "python", "machine", "postgres", "config", "groups", "sanity",
        "breakdown_ms", "samples_s", "profile"
    ],
    "inngest_dispatch": [
        "benchmark", "date", "python", "inngest_sdk", "machine", "database", "config", "variants",
        "ratios", "sanity", "samples_s"
    ],
    "celery": [
        "benchmark", "date", "python", "machine", "broker", "database", "synchronous_commit",
        "load_average_before", "throughput", "latency"
    ],
    "maintenance": [
        "benchmark", "date", "python", "machine", "config", "before", "after_toolkit", "after_sql",
        "same_state", "results"
    ],
    "report": [
        "benchmark", "date", "python", "machine", "postgres", "runs", "rounds", "seed_s",
        "median_s", "min_s", "max_s", "report_session_settings", "ratios", "goals", "sanity",
        "samples_s"
    ],
}  # fmt: skip


# --- running a script ------------------------------------------------------------------------


def run_bench(script: str, benchmark: str, *args: str) -> dict[str, Any]:
    """``python bench/<script> --json *args``: its JSON, after checking that it exited 0 and
    that the JSON has the keys of ``KEYS[benchmark]``.

    On a timeout the script gets SIGINT first, so its ``finally`` blocks run (the Celery bench
    stops its worker there), and SIGKILL only if that does not end it.
    """
    cmd = [sys.executable, str(BENCH / script), "--json", *args]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        pytest.fail(f"{script} did not finish in {TIMEOUT:g} s:\n{stderr[-3000:]}")
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{stderr[-3000:]}"
    try:
        result: dict[str, Any] = json.loads(stdout)
    except json.JSONDecodeError as exc:
        pytest.fail(f"{script} printed no valid JSON ({exc}):\n{stdout[:2000]}")
    assert list(result) == KEYS[benchmark]
    assert result["benchmark"] == benchmark
    assert result["machine"]["cpus"] >= 1
    return result


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def assert_all_positive(values: dict[str, Any] | list[Any], what: str) -> None:
    items = values.items() if isinstance(values, dict) else enumerate(values)
    bad = {k: v for k, v in items if not positive(v)}
    assert values and not bad, f"{what}: not finite and > 0: {bad or 'empty'}"


# --- services and scratch databases ----------------------------------------------------------


@pytest.fixture(scope="module")
def pg_server() -> str:
    import psycopg

    try:
        with psycopg.connect(f"{PG_SERVER}/{ADMIN_DB}", connect_timeout=5):
            pass
    except psycopg.Error as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        service_missing(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {reason}")
    return PG_SERVER


@pytest.fixture
def scratch_db(pg_server: str, request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """``--pg``/``--admin-db``/``--db`` options naming a database unique to this test run;
    it (and the maintenance bench's ``<db>_sql`` clone) is dropped afterwards."""
    import psycopg

    name = f"tk_bench_smoke_{request.node.name.removeprefix('test_')}_{RUN_ID}"
    yield ["--pg", pg_server, "--admin-db", ADMIN_DB, "--db", name]
    with psycopg.connect(f"{pg_server}/{ADMIN_DB}", autocommit=True) as admin:
        for db in (name, f"{name}_sql"):
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> str:
    reason = unreachable(REDIS_URL)
    if reason:
        service_missing(reason)
    return REDIS_URL


# --- one test per script ---------------------------------------------------------------------


def test_flags() -> None:
    rounds = 3
    result = run_bench(
        "flags_bench.py",
        "flags",
        *("--keys", "1000", "--block", "100", "--provider-block", "200"),
        *("--rounds", str(rounds), "--warmup", "50"),
    )
    providers = {"ours", "inmem-plain", "inmem-split"}
    for section in ("client", "provider_only"):
        assert set(result[section]) == providers
        for name, row in result[section].items():
            assert_all_positive(row, f"{section} {name}")
        assert {len(s) for s in result["samples_s"][section].values()} == {rounds}
    for name, ratios in result["ratios"].items():
        assert_all_positive(ratios, name)
    assert result["agreement"]["disagreements_with_inmem_split"] == 0
    assert 0 < result["agreement"]["ours_on_share"] < 1
    assert result["refreshes"]["count"] >= 0


@pytest.mark.postgres
def test_dispatch(scratch_db: list[str]) -> None:
    rounds = 2
    result = run_bench(
        "dispatch_bench.py",
        "dispatch",
        *scratch_db,
        *("--rounds", str(rounds), "--ops", "3", "--batch-sizes", "10"),
    )
    assert set(result["groups"]) == {"single", "batch 10"}
    for group, data in result["groups"].items():
        assert data["runs_per_block"] > 0
        for name, row in data["variants"].items():
            assert_all_positive(row, f"{group} {name}")
            assert len(result["samples_s"][group][name]) == rounds
        assert data["ratios"], group
        for row in data["ratios"]:
            assert_all_positive([row["ratio"], row["paired_ratio"]], f"{group} {row['toolkit']}")
    sanity = result["sanity"]
    assert sanity["balance_consistent"] is True
    assert sanity["debit_entries"] > 0
    assert sanity["debit_entries"] == sanity["runs_with_cost"]


@pytest.mark.postgres
def test_inngest_dispatch(scratch_db: list[str]) -> None:
    rounds, ops = 2, 5
    result = run_bench(
        "inngest_dispatch_bench.py",
        "inngest_dispatch",
        *scratch_db,
        "--rounds",
        str(rounds),
        "--ops",
        str(ops),
    )
    assert len(result["variants"]) == 4
    for name, row in result["variants"].items():
        assert_all_positive(row, name)
        assert len(result["samples_s"][name]) == rounds
    for row in result["ratios"]:
        assert_all_positive([row["ratio"], row["paired_ratio"]], row["variant"])
    sanity = result["sanity"]
    assert sanity["inngest_runs"] > rounds * ops  # the timed runs, the warm-up and the probe
    assert sanity["inngest_runs_queued"] == sanity["inngest_runs"]
    assert sanity["every_run_has_its_event"] is True
    assert sanity["events_received"] >= sanity["inngest_runs"]
    assert sanity["rejected_event_keys"] == 0


@pytest.mark.postgres
def test_celery(scratch_db: list[str], redis_url: str) -> None:
    rate, seconds = 20, 0.5
    result = run_bench(
        "celery_bench.py",
        "celery",
        *scratch_db,
        *("--broker", redis_url, "--rounds", "2", "--ops", "6", "--backlog", "10"),
        *("--threads", "2"),
        *("--rate", str(rate), "--seconds", str(seconds), "--concurrency", "1"),
    )
    throughput = result["throughput"]
    assert len(throughput["runs_per_s"]) == 6  # four single-threaded, two with --threads 2
    assert_all_positive(throughput["runs_per_s"], "runs/s")
    assert_all_positive(throughput["ratio_vs_raw"], "ratio vs raw")
    assert_all_positive(throughput["paired_ratio_vs_raw"], "paired ratio vs raw")
    latency = result["latency"]
    count = int(rate * seconds)
    assert latency["statuses"] == {"COMPLETED": count}
    assert positive(latency["worker_capacity_runs_per_s"])
    assert_all_positive(latency["achieved_rate"], "achieved rate")
    for side in ("toolkit", "raw"):
        assert latency[side] is not None, f"no {side} latencies recorded"
        assert latency[side]["count"] == count, side
        assert all(math.isfinite(v) for v in latency[side].values()), side


@pytest.mark.postgres
def test_maintenance(scratch_db: list[str]) -> None:
    result = run_bench(
        "maintenance_bench.py", "maintenance", *scratch_db, "--runs", "2000", "--accounts", "50"
    )
    assert result["same_state"] and all(result["same_state"].values()), result["same_state"]
    for side in ("after_toolkit", "after_sql"):
        assert result[side]["invariant"] == {"balance != ledger": 0, "negative balances": 0}
        assert result[side]["still owed"] == [[0]]
        assert result[side]["stuck orphans"] == [[0]]
    assert set(result["results"]) == {"refund", "cleanup"}
    for sweep, row in result["results"].items():
        assert row["toolkit"]["changed"] > 0, sweep
        assert_all_positive(
            [row["toolkit"]["wall_s"], row["toolkit"]["peak_rss_mb"], row["sql"]["wall_s"]], sweep
        )
        assert positive(row["ratio_wall"]), sweep
        assert math.isfinite(row["ratio_sweep"]), sweep  # the sweep's own time is rounded


@pytest.mark.postgres
def test_report(scratch_db: list[str]) -> None:
    runs, rounds = 2000, 2
    result = run_bench(
        "report_bench.py", "report", *scratch_db, "--runs", str(runs), "--rounds", str(rounds)
    )
    assert result["runs"] == runs
    assert len(result["median_s"]) == 4
    assert_all_positive(result["median_s"], "median seconds")
    assert_all_positive(result["ratios"], "ratios")
    assert_all_positive(result["seed_s"], "seed seconds")
    assert {len(s) for s in result["samples_s"].values()} == {rounds}
    sanity = result["sanity"]
    assert sanity["mismatches"] == []
    assert sanity["runs_in_window"] == runs
    assert sanity["arms"] == 4
    assert sanity["rank_tests"] > 0
