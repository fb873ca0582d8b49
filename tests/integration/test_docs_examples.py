"""Every ``toolkit ...`` example in README.md and docs/*.md runs, with its documented exit code.

The commands are extracted from the fenced code blocks at test time and run in-process against
a scratch SQLite database seeded with one completed run, with ``tests/cli_app.py`` as the app.
The exit-code tables in the docs are checked against ``toolkit.errors``.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_app import build_enabled as build
from toolkit import errors
from toolkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.cli_app:build_enabled"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)

# Not run, each needs a live service or runs until stopped (the reason says which).
SKIP = {
    "worker": "starts a Celery worker that runs until stopped (needs the broker)",
    "serve": "starts the web server, runs until stopped",
    "rollout watch": "a loop that runs until stopped (or --max-evaluations)",
    "inngest check": "asks a running Inngest dev server for the registered functions",
}
# Documented non-zero exits by argv (docs/rollout.md "Exit codes"); every example in the docs
# today is normal use, exit 0 (`rollout advance` from 0% needs no gates).
EXPECTED: dict[str, int] = {}


def _examples() -> Iterator[tuple[str, str]]:
    for doc in DOCS:
        for block in FENCE.findall(doc.read_text()):
            for raw in block.splitlines():
                line = raw.strip()
                if line.startswith(".venv/bin/toolkit "):
                    line = line.removeprefix(".venv/bin/")
                if not line.startswith("toolkit ") or "[" in line.split("#")[0]:
                    continue  # not a command, or a synopsis ("[--app module:attr]")
                yield doc.name, line.split(" | ")[0]


def _argv(line: str, run_id: str = "3f2a9c1e") -> list[str]:
    line = line.replace("<run id>", run_id).replace("<run-id>", run_id).replace("3f2a9c1e", run_id)
    line = line.replace("<account>", "u1").replace("myapp.jobs:tk", APP)
    return shlex.split(line, comments=True)[1:]


def _skip_reason(argv: list[str]) -> str | None:
    words = " ".join(a for a in argv if not a.startswith("-") and ":" not in a)
    return next((why for cmd, why in SKIP.items() if words.startswith(cmd)), None)


ALL = sorted(set(_examples()))
EXAMPLES = [(doc, line) for doc, line in ALL if not _skip_reason(_argv(line))]


def test_docs_have_examples() -> None:
    """The extraction finds the examples, and skips exactly the live-service ones."""
    assert len(EXAMPLES) > 30
    skipped = {_skip_reason(_argv(line)) for _, line in ALL} - {None}
    assert skipped and skipped <= set(SKIP.values())


@pytest.mark.parametrize("doc, line", EXAMPLES, ids=[line for _, line in EXAMPLES])
def test_doc_example_runs(
    doc: str,
    line: str,
    tmp_path: Path,
    sqlite_template: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "toolkit.db"
    shutil.copy(sqlite_template, path)
    monkeypatch.setenv("TOOLKIT_DATABASE_URL", f"sqlite:///{path}")
    monkeypatch.setenv("TOOLKIT_APP", APP)
    monkeypatch.setenv("TOOLKIT_ACTOR", "docs")
    monkeypatch.chdir(ROOT)
    tk = build()
    try:
        tk.credits.grant("u1", 20)
        handle = tk.dispatch(
            "prediction-session", {"models": ["a"], "market_id": "m"}, key="u1", account="u1"
        )
    finally:
        tk.close()
    argv = _argv(line, str(handle.run_id)[:8])
    code = main(argv)
    out, err = capsys.readouterr()
    key = " ".join(argv)
    expected = next((c for cmd, c in EXPECTED.items() if key == cmd), 0)
    assert code == expected, (doc, line, code, err)
    assert "Traceback" not in out + err and "internal error" not in err, err


def test_exit_code_tables_match_errors() -> None:
    """The documented codes are the ones ``toolkit.errors`` maps to."""
    assert (errors.EXIT_FAILURE, errors.EXIT_USAGE) == (1, 2)
    rollout = (ROOT / "docs" / "rollout.md").read_text()
    table = dict(re.findall(r"^\| (\d) \| (.+) \|$", rollout, re.M))
    assert set(table) == {"0", "1", "2"}
    assert "bad input" in table["2"] and "refused or failed" in table["1"]
    # each documented refusal of the 1 row is an error class that exits 1, bad input exits 2
    for cls in (
        errors.GatesFailed,
        errors.GatesInconclusive,
        errors.RolloutPaused,
        errors.RolloutKilled,
        errors.StepComplete,
        errors.VersionConflict,
        errors.RolledBack,
        errors.DatabaseError,
    ):
        assert cls.exit_code == errors.EXIT_FAILURE, cls
    for bad in (errors.UnknownJob, errors.InvalidDuration, errors.InvalidInput):
        assert bad.exit_code == errors.EXIT_USAGE, bad
    for text in ((ROOT / "README.md").read_text(), (ROOT / "docs" / "operations.md").read_text()):
        assert re.search(r"\*?\*?`?0`?\*?\*? (success|done)", text)
        assert re.search(r"\*?\*?`?2`?\*?\*? bad", text)
