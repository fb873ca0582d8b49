"""Issue 11 (E): output an operator can use, on SQLite and PostgreSQL.

Short run ids that ``runs show`` accepts, every table within 80 (and 200) columns with no id,
status or number broken, per-run progress for ``recover --apply``, raw values in ``--json``.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from rich.console import Console

from tests.conftest import make_toolkit
from tests.maintenance_fixture import JOB, dispatch, owe, set_runs, setup_jobs, start
from tests.maintenance_fixture import age as make_stuck
from toolkit import Toolkit
from toolkit.cli import main
from toolkit.errors import AmbiguousRun, UnknownRun
from toolkit.maintenance import operations as maintenance_ops
from toolkit.store.models import Run, utcnow

APP = "tests.maintenance_app:build"
HEX = re.compile(r"\b[0-9a-f]{8,32}\b")
STATUSES = ("QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED")


@pytest.fixture
def seeded(cli_env: str) -> Iterator[Toolkit]:
    """Runs in every state a table shows: owed, stuck (given up on, recoverable), running,
    with long errors and reasons that must fold, never break an id."""
    tk = make_toolkit(cli_env)
    setup_jobs(tk)
    run_ids = dispatch(tk, 8)
    owe(tk, run_ids[:4])
    set_runs(tk, run_ids[:2], error="lost before refund " * 6)
    start(tk, run_ids[5:6])
    make_stuck(tk, run_ids[4:6], recoveries=3)
    make_stuck(tk, run_ids[6:8], recoveries=0)
    tk.set_rollout(JOB, 40, reason="a long reason that has to fold onto more lines " * 3)
    yield tk
    tk.close()


def toolkit(
    capsys: pytest.CaptureFixture[str], *args: str, app: bool = True
) -> tuple[int, str, str]:
    code = main([*(["--app", APP] if app else []), *args])
    out, err = capsys.readouterr()
    return code, out, err


COMMANDS = [
    ["runs", "list"],
    ["runs", "list", "--status", "failed"],
    ["audit"],
    ["refund"],
    ["cleanup", "orphans"],
    ["recover"],
    ["rollout", "status"],
]


@pytest.mark.parametrize("width", [80, 200])
@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_tables_fit_the_width_and_short_ids_resolve(
    seeded: Toolkit,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    width: int,
    args: list[str],
) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    code, out, err = toolkit(capsys, *args)
    assert code == 0, err
    lines = out.splitlines()
    assert lines and max(len(line) for line in lines) <= width, out
    for line in lines:  # nothing cropped: a table row that starts with a border ends with one
        if line[:1] in "┏┃┡│└╭":
            assert line.rstrip()[-1] in "┓┃┩│┘╮", out
    # Every status is whole on one line (a folded one would leave a fragment such as "COMPLE").
    for line in lines:
        for fragment in re.findall(r"\b(?:QUEU|RUNN|COMPL|FAIL|CANCEL)[A-Z]*\b", line):
            assert fragment in STATUSES, (fragment, out)
    for name in seeded.jobs.names() if args == ["rollout", "status"] else ():
        assert name in out, out  # a job name is never broken across lines
    shown = [m for line in lines for m in HEX.findall(line)]
    if args[0] in ("runs", "refund", "cleanup", "recover"):
        assert shown, out
    for short in shown:
        assert len(short) < 32  # short ids, not whole uuids
        code, detail, err = toolkit(capsys, "runs", "show", short, "--json")
        assert code == 0, err
        assert json.loads(detail)["id"].replace("-", "").startswith(short)
    code, out, err = toolkit(capsys, "runs", "show", shown[0] if shown else short_of(seeded))
    assert code == 0 and max(len(line) for line in out.splitlines()) <= width, out


def short_of(tk: Toolkit) -> str:
    return tk.runs.list(limit=1)[0].id.hex[:8]


def test_runs_show_accepts_a_prefix_and_refuses_unknown_or_ambiguous_ones(
    seeded: Toolkit, capsys: pytest.CaptureFixture[str]
) -> None:
    a = uuid.UUID("abcd1234" + "0" * 24)
    b = uuid.UUID("abcd1234" + "5" * 24)
    insert_runs(seeded, [a, b])
    shorts = seeded.runs.short_ids([a, b])
    assert shorts == {a: "abcd12340", b: "abcd12345"}  # longer than 8 where 8 is shared
    for short, full in ((shorts[a], a), (shorts[b], b), ("abcd1234-5", b), (str(a), a)):
        code, out, err = toolkit(capsys, "runs", "show", short, "--json")
        assert code == 0 and json.loads(out)["id"] == str(full), err
    code, out, err = toolkit(capsys, "runs", "show", "ABCD")  # case does not matter
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "ambiguous" in err and "abcd12340000" in err and "abcd12345555" in err
    for bad in ("abc", "zzzzzz", "fedcba98"):
        code, out, err = toolkit(capsys, "runs", "show", bad)
        assert code == 2 and "unknown run id" in err and err.count("\n") == 1, err
    with pytest.raises(AmbiguousRun):
        seeded.runs.resolve("abcd1234")
    with pytest.raises(UnknownRun):
        seeded.runs.resolve("0000ffff")


def test_cancel_accepts_a_unique_prefix(seeded: Toolkit) -> None:
    (rid,) = dispatch(seeded, 1)
    assert seeded.cancel(seeded.runs.short_ids([rid])[rid]) is True
    assert seeded.runs.get(rid).status == "CANCELLED"


def insert_runs(tk: Toolkit, ids: list[uuid.UUID]) -> None:
    with tk.db.transaction() as s:
        for rid in ids:
            s.add(
                Run(
                    id=rid,
                    job=JOB,
                    status="COMPLETED",
                    backend="legacy",
                    targeting_key="k",
                    payload={},
                    cost=0,
                    attempts=1,
                    recoveries=0,
                    created_at=utcnow() - timedelta(days=1),
                )
            )


def test_recover_onto_legacy_shows_progress_per_run_and_what_ran_inline(
    seeded: Toolkit, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three more stuck runs, one fatal; after the rollback every one of them runs inline on legacy.
    run_ids = dispatch(seeded, 3)
    make_stuck(seeded, run_ids)
    bad = run_ids[0]
    with seeded.db.transaction() as s:
        run = s.get(Run, bad)
        assert run is not None
        run.payload = {**run.payload, "fatal": True}  # this one fails inline
    seeded.rollback(JOB, reason="incident")
    ticks: list[int] = []
    sweep = maintenance_ops.sweeper(seeded.maintenance, "recover")
    report = sweep.run(apply=True, progress=ticks.append)
    handed = report.changed
    assert handed == 5  # the seed's two recoverable runs and these three
    assert ticks == [1] * handed  # one tick per run, not one per 1,000-run batch
    assert report.ran_inline() == {"completed": handed - 1, "failed": 1}
    assert "not submitted: failed and refunded (fallback policy)" not in report.outcomes
    data = report.as_dict()
    assert data["ran_inline"] == {"completed": handed - 1, "failed": 1}
    assert {h["status"] for h in data["handovers"]} == {"COMPLETED", "FAILED"}
    assert all(c["to_backend"] == "legacy" and c["to_status"] == "QUEUED" for c in data["sample"])


def test_recover_apply_on_a_terminal_ticks_per_run_and_prints_the_counts(
    seeded: Toolkit, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded.rollback(JOB, reason="incident")
    screen = io.StringIO()
    monkeypatch.setattr(
        "toolkit.cli.maintenance.err_console",
        lambda: Console(file=screen, force_terminal=True, color_system=None, width=120),
    )
    seen: list[int] = []
    real = maintenance_ops.RecoverSweep.after_commit

    def spy(self: maintenance_ops.RecoverSweep, report: object, progress: object) -> int:
        def tick(n: int) -> None:
            seen.append(n)
            assert callable(progress)
            progress(n)

        return real(self, report, tick)  # type: ignore[arg-type]

    monkeypatch.setattr(maintenance_ops.RecoverSweep, "after_commit", spy)
    code, out, err = toolkit(capsys, "recover", "--apply")
    assert code == 0, err
    assert seen == [1, 1] and "2/2" in screen.getvalue()
    assert "ran inline: 2 completed, 0 failed" in out
    code, out, _ = toolkit(capsys, "recover", "--apply", "--json")
    assert code == 0 and json.loads(out)["ran_inline"] == {"completed": 0, "failed": 0}


def test_maintenance_json_holds_raw_values(
    seeded: Toolkit, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = toolkit(capsys, "cleanup", "orphans", "--json")
    data = json.loads(out)
    assert code == 0 and data["sample"]
    for change in data["sample"]:
        assert "change" not in change and change["to_status"] == "FAILED"
        assert change["status"] in ("QUEUED", "RUNNING") and change["to_backend"] == "parked"
        uuid.UUID(change["run_id"])  # the full id, not a short one
    assert {(t["status"], t["to_status"]) for t in data["totals"]} == {
        ("QUEUED", "FAILED"),
        ("RUNNING", "FAILED"),
    }
    code, out, _ = toolkit(capsys, "runs", "list", "--json")
    assert all(len(r["id"]) == 36 and r["status"] in STATUSES for r in json.loads(out))
