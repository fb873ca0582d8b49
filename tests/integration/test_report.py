"""``toolkit report`` on SQLite and PostgreSQL: counts, intervals, percentiles, credit errors,
the scorecard, the CLI (tables and --json), and bad input that exits 2."""

from __future__ import annotations

import json
import random
import shutil
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, TypedDict

import pytest

from tests.report_fixture import T0, Seed, arm, grant, insert_runs
from toolkit import Toolkit
from toolkit.cli import main
from toolkit.rollout import latency as rl
from toolkit.rollout import queries as rq
from toolkit.rollout.arms import collect
from toolkit.rollout.gates import Verdict
from toolkit.rollout.plan import RolloutPlan
from toolkit.rollout.report import build
from toolkit.rollout.stats import mann_whitney, newcombe, quantile, two_proportion_z, wilson

JOB = "prediction-session"
SINCE = T0 - timedelta(hours=1)
UNTIL = T0 + timedelta(hours=2)
TIMEOUT = "JobTimeout: run exceeded the 900s timeout of job 'prediction-session'"


def register(tk: Toolkit, **options: Any) -> None:
    @tk.job(JOB, target="inngest", **options)
    def session(ctx: object, payload: object) -> None:
        return None


def seed_mixed(tk: Toolkit) -> None:
    """Legacy: 12 runs with queue times 1..11 s; inngest: 7 runs with credit trouble."""
    at = [T0 + timedelta(seconds=10 * i) for i in range(12)]
    legacy = [
        Seed("legacy", "FAILED", at[0], 1.0, 2.0, error=TIMEOUT, attempts=2),
        Seed("legacy", "CANCELLED", at[1], 2.0, 2.0, account="a", debit=5, refund=True),
        Seed("legacy", "RUNNING", at[2], 3.0, None),
        Seed("legacy", "QUEUED", at[3], None, None, heartbeat=False),
        *(Seed("legacy", "COMPLETED", at[i], float(i), 2.0) for i in range(4, 12)),
    ]
    legacy[5] = Seed("legacy", "COMPLETED", at[5], 5.0, 2.0, attempts=3)
    inngest = [
        *(Seed("inngest", "COMPLETED", at[i], 0.5, 3.0) for i in range(3)),
        # Assigned to inngest, refused, run on legacy: it counts on the inngest arm.
        Seed("legacy", "COMPLETED", at[3], 0.5, 3.0, fallback_from="inngest"),
        Seed("inngest", "COMPLETED", at[4], 0.5, 3.0, heartbeat=False),
        Seed("inngest", "COMPLETED", at[5], 0.5, 3.0, account="a", debit=5, refund=True),
        Seed("inngest", "FAILED", at[6], 0.5, 3.0, account="neg", debit=5, error="boom"),
    ]
    outside = [
        Seed("inngest", "FAILED", T0 - timedelta(hours=2), error=TIMEOUT),
        Seed("inngest", "FAILED", T0 + timedelta(hours=3), error=TIMEOUT),
    ]
    grant(tk, "a", 100)
    grant(tk, "neg", 1)  # then debited 5: the ledger says -4
    insert_runs(tk, JOB, [*legacy, *inngest, *outside])


def test_arms_counts_rates_latencies_and_credit_errors(tk: Toolkit) -> None:
    register(tk)
    seed_mixed(tk)
    report = build(tk.db, tk.jobs, since=SINCE, until=UNTIL)
    [job] = report.jobs
    assert job.job == JOB and job.new_backend == "inngest"
    legacy, new = job.arm("legacy"), job.arm("inngest")
    assert (legacy.runs, legacy.completed, legacy.failed, legacy.cancelled) == (12, 8, 1, 1)
    assert (legacy.in_flight, legacy.retries, legacy.timeouts, legacy.started) == (2, 2, 1, 11)
    assert legacy.success == wilson(8, 10)
    # percentile_cont over queue times 1..11: 1 + f * 10
    assert legacy.latencies.queue == pytest.approx((6.0, 10.5, 10.9))
    assert legacy.latencies.duration == pytest.approx((2.0, 2.0, 2.0))
    assert legacy.credit_errors == 0 and legacy.fallbacks == 0

    assert (new.runs, new.completed, new.failed, new.in_flight) == (7, 6, 1, 0)
    assert new.fallbacks == 1  # routed to inngest, ran on legacy: on the inngest arm
    assert (new.unrefunded, new.refunds_without_failure) == (1, 1)
    assert new.missing_heartbeats == 1 and new.timeouts == 0
    assert new.latencies.queue == pytest.approx((0.5, 0.5, 0.5))
    assert report.negative_balances == ["neg"]

    [cmp] = job.comparisons
    assert cmp.backend == "inngest" and not cmp.sampled
    assert cmp.difference == pytest.approx(newcombe(6, 7, 8, 10))
    assert cmp.z_test == pytest.approx(two_proportion_z(6, 7, 8, 10))
    expected = mann_whitney([0.5] * 7, [float(i) for i in range(1, 12)])
    assert cmp.queue_test == expected and cmp.queue_test is not None
    assert cmp.queue_test.superiority == 0.0  # every inngest run started sooner

    verdicts = {g.name: g.verdict for g in job.scorecard}
    assert verdicts == {
        "runs failed by timeouts = 0": Verdict.PASS,
        "queue-to-processing p95 < 10 s": Verdict.INCONCLUSIVE,  # 7 runs < 200
        "completion rate same or better": Verdict.INCONCLUSIVE,
        "no increase in credit-handling errors": Verdict.FAIL,
        "heartbeats delivered": Verdict.FAIL,
    }
    numbers = {g.name: g.number for g in job.scorecard}
    assert numbers["heartbeats delivered"] == "1 of 7 started runs without a heartbeat"
    assert numbers["no increase in credit-handling errors"].startswith("inngest 2 (28.6%)")


def test_scorecard_with_enough_runs(tk: Toolkit) -> None:
    """A declared plan (20 runs per arm, 5 s target) decides every metric."""
    register(tk, rollout=RolloutPlan(min_runs=20, latency_target="5s"))
    insert_runs(
        tk,
        JOB,
        [
            *arm("legacy", 200, failed=10, queue=0.2),
            *arm("inngest", 40, failed=1, queue=12.0, error=TIMEOUT),
        ],
    )
    job = build(tk.db, tk.jobs, since=SINCE, until=UNTIL).jobs[0]
    verdicts = {g.name: g.verdict for g in job.scorecard}
    assert verdicts["runs failed by timeouts = 0"] is Verdict.FAIL
    assert verdicts["queue-to-processing p95 < 5 s"] is Verdict.FAIL  # every run waited 12 s
    assert verdicts["no increase in credit-handling errors"] is Verdict.PASS
    assert verdicts["heartbeats delivered"] is Verdict.PASS
    # 97.5% vs 95%: not shown worse; with 40 runs not yet shown within 1 pp either
    assert verdicts["completion rate same or better"] in (Verdict.PASS, Verdict.INCONCLUSIVE)
    assert job.arm("inngest").timeouts == 1 and job.arm("inngest").latencies.queue_over_target == 40


def test_window_and_job_filter(tk: Toolkit) -> None:
    register(tk)
    insert_runs(tk, JOB, arm("legacy", 5, start=T0))
    insert_runs(tk, "other-job", arm("inngest", 3, start=T0))
    narrow = build(
        tk.db, tk.jobs, since=T0 + timedelta(seconds=15), until=T0 + timedelta(seconds=35)
    )
    assert {(j.job, a.backend, a.runs) for j in narrow.jobs for a in j.arms} == {
        (JOB, "legacy", 2),
        ("other-job", "inngest", 1),
    }
    only = build(tk.db, tk.jobs, job="other-job", since=SINCE, until=UNTIL)
    assert [j.job for j in only.jobs] == ["other-job"]
    assert only.jobs[0].new_backend == "inngest" and only.jobs[0].comparisons == []


def test_rank_samples_are_capped_deterministically(tk: Toolkit) -> None:
    register(tk)
    n = 400
    ids = [uuid.UUID(int=(i * 2**128) // n) for i in range(n)]  # evenly spread ids
    seeds = [
        Seed("legacy" if i % 2 else "inngest", "COMPLETED", T0 + timedelta(seconds=i), 1.0 + i)
        for i in range(n)
    ]
    insert_runs(
        tk, JOB, [Seed(**{**s.__dict__, "id": rid}) for s, rid in zip(seeds, ids, strict=True)]
    )
    [cmp] = build(tk.db, tk.jobs, since=SINCE, until=UNTIL, sample_cap=50).jobs[0].comparisons
    assert cmp.sampled and cmp.queue_test is not None
    assert 40 <= cmp.queue_test.n_x <= 60 and 40 <= cmp.queue_test.n_y <= 60
    again = build(tk.db, tk.jobs, since=SINCE, until=UNTIL, sample_cap=50).jobs[0].comparisons[0]
    assert again.queue_test == cmp.queue_test


class _Debited(TypedDict):
    """The seed fields of a debited run, so ``**debited`` is typed field by field."""

    account: str
    debit: int


def test_credit_errors_in_one_statement(tk: Toolkit) -> None:
    """Unrefunded = failed/cancelled, debited, no refund; unexplained = refunded but not failed;
    only runs created in the window and of the jobs asked for count."""
    at = [T0 + timedelta(seconds=i) for i in range(10)]
    debited: _Debited = {"account": "a", "debit": 5}
    insert_runs(
        tk,
        JOB,
        [
            Seed("inngest", "FAILED", at[0], **debited),  # unrefunded
            Seed("inngest", "CANCELLED", at[1], None, None, **debited),  # unrefunded, never ran
            Seed("inngest", "FAILED", at[2], **debited, refund=True),  # fine
            Seed("inngest", "FAILED", at[3]),  # never debited: fine
            Seed("inngest", "COMPLETED", at[4], **debited, refund=True),  # unexplained
            Seed("legacy", "RUNNING", at[5], 1.0, None, **debited, refund=True),  # unexplained
            Seed("legacy", "QUEUED", at[6], None, None, **debited, refund=True),  # unexplained
            Seed("legacy", "COMPLETED", at[7], **debited),  # fine
            Seed("inngest", "FAILED", T0 - timedelta(hours=2), **debited),  # outside
            Seed("inngest", "COMPLETED", T0 + timedelta(hours=3), **debited, refund=True),
        ],
    )
    insert_runs(tk, "other-job", [Seed("celery", "FAILED", at[8], **debited)])
    window = rq.Window(SINCE, UNTIL)
    with tk.db.transaction() as s:
        every = rq.credit_errors(s, tk.db, window, None)
        mine = rq.credit_errors(s, tk.db, window, [JOB])
    assert mine == {(JOB, "inngest"): (2, 1), (JOB, "legacy"): (0, 2)}
    assert every == {**mine, ("other-job", "celery"): (1, 0)}


@pytest.mark.postgres
def test_both_databases_give_the_same_percentiles_of_the_same_runs(
    pg_url: str, tmp_path: Path, sqlite_template: Path
) -> None:
    """One definition of the p-th percentile (interpolated at rank p (n - 1)), whichever way
    each database computes it: PostgreSQL's percentile_cont, SQLite's streamed stats.quantile.
    Awkward sizes and uneven values, so every fraction interpolates between two runs."""
    rng = random.Random(7)
    seeds = [
        Seed(
            backend,
            "COMPLETED",
            T0 + timedelta(seconds=i),
            round(rng.expovariate(0.3), 6),
            round(rng.uniform(0.001, 90.0), 6),
        )
        for backend, n in (("legacy", 97), ("inngest", 13))
        for i in range(n)
    ]
    lite = tmp_path / "agree.db"
    shutil.copy(sqlite_template, lite)
    figures = {}
    for url in (f"sqlite:///{lite}", pg_url):
        tk = Toolkit(url, legacy_mode="blocking")
        try:
            insert_runs(tk, JOB, seeds)
            arms = collect(tk.db, rq.Window(SINCE, UNTIL), None, {JOB: 5.0}).arms
            figures[tk.db.sql.name] = {k: a.latencies for k, a in arms.items()}
        finally:
            tk.close()
    lite_figures, pg_figures = figures["sqlite"], figures["postgresql"]
    assert lite_figures.keys() == pg_figures.keys() == {(JOB, "legacy"), (JOB, "inngest")}
    for key, got in pg_figures.items():
        mine = [x for x in seeds if x.backend == key[1]]
        queue = sorted(float(x.queue or 0) for x in mine)
        duration = sorted(float(x.duration or 0) for x in mine)
        want = (
            [quantile(queue, f) for f in rl.FRACTIONS],
            [quantile(duration, f) for f in rl.FRACTIONS],
        )
        for latencies in (got, lite_figures[key]):
            assert list(latencies.queue) == pytest.approx(want[0], abs=1e-5), key
            assert list(latencies.duration) == pytest.approx(want[1], abs=1e-5), key
        assert got.queue_over_target == lite_figures[key].queue_over_target
        assert got.queue_over_target == sum(q > 5.0 for q in queue)


@pytest.mark.postgres
@pytest.mark.parametrize("filter_groups_max", [rl.FILTER_GROUPS_MAX, 0])
def test_postgres_percentiles_and_samples_equal_the_python_definition(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, filter_groups_max: int
) -> None:
    """percentile_cont (per-arm FILTERs or one GROUP BY) = stats.quantile on the same rows, and
    the rank samples taken in the same scan are the same runs as in Python."""
    monkeypatch.setattr(rl, "FILTER_GROUPS_MAX", filter_groups_max)
    tk = Toolkit(pg_url, legacy_mode="blocking")
    try:
        seed_mixed(tk)
        insert_runs(tk, "other-job", arm("celery", 30, queue=7.25, duration=0.125))
        window = rq.Window(SINCE, UNTIL)
        groups = [(JOB, "legacy"), (JOB, "inngest"), ("other-job", "celery")]
        targets = {JOB: 5.0}
        # legacy sampled down to about half its runs, inngest whole, other-job not sampled
        limits = {(JOB, "legacy"): rl.sample_limit(11, 5), (JOB, "inngest"): None}
        with tk.db.transaction() as s:
            db = tk.db
            percentiles = db.sql.percentiles(rl.FRACTIONS)
            assert percentiles is not None
            sql = rl._latencies_sql(
                s, db, percentiles, window, None, groups, targets, 10.0, rl.METRICS, limits
            )
            python = rl._latencies_python(s, window, None, groups, targets, 10.0, limits)
            queue = rl._latencies_sql(
                s, db, percentiles, window, None, groups, targets, 10.0, ("queue",), limits
            )
            jobs = [JOB, "other-job"]
            duration = rl.latencies(
                s, db, window, jobs, groups, targets, 10.0, ("duration",), limits
            )
        assert sql.latencies.keys() == python.latencies.keys() == set(groups)
        # one statement per metric (as the report runs them side by side) = both at once
        assert queue.merged(duration).latencies == sql.latencies
        for key in groups:
            got, want = sql.latencies[key], python.latencies[key]
            assert got.queue == pytest.approx(want.queue), key
            assert got.duration == pytest.approx(want.duration), key
            assert got.queue_over_target == want.queue_over_target, key
        assert sql.latencies[(JOB, "legacy")].queue_over_target == 6  # 6..11 s > 5 s
        assert sql.samples.keys() == python.samples.keys() == set(limits)
        for key in limits:
            for mine, theirs in ((sql, python), (queue.merged(duration), python)):
                a, b = mine.samples[key], theirs.samples[key]
                assert (sorted(a.queue), sorted(a.duration), a.capped) == (
                    sorted(b.queue),
                    sorted(b.duration),
                    b.capped,
                ), key
        assert python.samples[(JOB, "legacy")].capped
        assert 0 < len(python.samples[(JOB, "legacy")].queue) < 11
        assert len(python.samples[(JOB, "inngest")].queue) == 7
        assert len(python.samples[(JOB, "inngest")].duration) == 7
    finally:
        tk.close()


# --- CLI ----------------------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str, str]:
    code = main(["--database-url", url, "report", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_and_tables(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "220")
    tk = Toolkit(db_url, legacy_mode="blocking")
    try:
        seed_mixed(tk)
    finally:
        tk.close()
    window = ["--since", SINCE.isoformat(), "--until", UNTIL.isoformat()]
    code, out, err = cli(capsys, db_url, *window, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["window"] == {"since": SINCE.isoformat(), "until": UNTIL.isoformat()}
    [job] = data["jobs"]
    arms = {a["backend"]: a for a in job["arms"]}
    assert arms["legacy"]["queue_seconds"] == pytest.approx({"p50": 6.0, "p95": 10.5, "p99": 10.9})
    assert arms["inngest"]["credit_errors"] == {"unrefunded": 1, "refunds_without_failure": 1}
    assert job["comparisons"][0]["queue_rank_test"]["p_new_slower"] == 0.0
    assert [s["verdict"] for s in job["scorecard"]] == [
        "PASS",
        "INCONCLUSIVE",
        "INCONCLUSIVE",
        "FAIL",
        "FAIL",
    ]
    assert data["negative_balances"] == ["neg"]
    code, out, err = cli(capsys, db_url, *window)
    assert code == 0, err
    for text in ("Runs per arm", "Latency", "New - legacy", "Scorecard", "FAIL"):
        assert text in out
    assert "negative balances: 1 (neg)" in out


def _state(url: str) -> tuple[int, int]:
    from sqlalchemy import func, select

    from toolkit.store.models import AuditEntry, Run

    tk = Toolkit(url, legacy_mode="blocking")
    try:
        with tk.db.transaction() as s:
            return (s.scalar(select(func.count()).select_from(Run)) or 0), (
                s.scalar(select(func.count()).select_from(AuditEntry)) or 0
            )
    finally:
        tk.close()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--since", "yesterday"], "invalid --since 'yesterday'"),
        (["--until", "soon"], "invalid --until 'soon'"),
        (["--since", "1h", "--until", "2h"], "empty window"),
        (["--job", "nope"], "unknown job 'nope'"),
    ],
)
def test_bad_input_exits_2_and_changes_nothing(
    db_url: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    tk = Toolkit(db_url, legacy_mode="blocking")
    try:
        insert_runs(tk, JOB, arm("legacy", 3, start=T0))
    finally:
        tk.close()
    before = _state(db_url)
    code, out, err = cli(capsys, db_url, *args)
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in out + err
    assert _state(db_url) == before


@pytest.mark.postgres
def test_worker_connections_read_the_lead_snapshot(pg_url: str) -> None:
    """Rows committed after the snapshot was exported are invisible to the lead and workers."""
    from sqlalchemy import func, select

    from toolkit.store.models import Run
    from toolkit.store.snapshot import snapshot

    tk = Toolkit(pg_url, legacy_mode="blocking")
    try:
        insert_runs(tk, JOB, arm("legacy", 3))

        def runs(s: Any) -> int:
            return int(s.scalar(select(func.count()).select_from(Run)))

        with snapshot(tk.db, workers=2) as snap:
            insert_runs(tk, JOB, arm("legacy", 2))  # another transaction, committed now
            assert runs(snap.session) == 3
            assert [snap.submit(runs).result() for _ in range(3)] == [3, 3, 3]
        with tk.db.transaction() as s:
            assert runs(s) == 5
    finally:
        tk.close()


def test_cli_at_80_columns_keeps_numbers_and_names_whole(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipe or a log is 80 columns: columns that do not fit are left out and named, the
    rest keep every number, header and backend name on one line."""
    monkeypatch.setenv("COLUMNS", "80")
    tk = Toolkit(db_url, legacy_mode="blocking")
    try:
        seed_mixed(tk)
        insert_runs(tk, "a-rather-long-nightly-batch-name", arm("legacy", 3))
    finally:
        tk.close()
    code, out, err = cli(capsys, db_url, "--since", SINCE.isoformat(), "--until", UNTIL.isoformat())
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = [line for line in lines if line.startswith("│ prediction-session")]
    assert rows and all(("│ legacy " in r or "│ inngest " in r) for r in rows)
    for text in ("success (95% CI)", "80.0% (49.0-94.3)", "a-rather-long-nightly-batch-name"):
        assert text in out
    assert "left out at 80 columns:" in out


def test_cli_header_converts_an_offset_to_utc_and_states_the_legacy_mode(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    tk = Toolkit(db_url, legacy_mode="blocking")
    try:
        seed_mixed(tk)
    finally:
        tk.close()
    # 09:00 at +02:00 is 07:00 UTC, which is SINCE.
    window = ["--since", "2026-11-30T09:00:00+02:00", "--until", UNTIL.isoformat()]
    code, out, err = cli(capsys, db_url, *window)
    assert code == 0, err
    assert "2026-11-30 07:00 → 2026-11-30 10:00 UTC" in out
    assert "09:00" not in out
    assert "legacy mode: not known" in out  # no --app: the app's mode is not known here
    code, out, err = cli(capsys, db_url, *window, "--json")
    data = json.loads(out)
    assert data["window"]["since"] == SINCE.isoformat()
    assert data["legacy_mode"] is None
    monkeypatch.setenv("TOOLKIT_DATABASE_URL", db_url)
    code = main(["--app", "tests.cli_app:build", "report", *window])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "legacy mode of the app: blocking (inline, as the old code ran)" in out
