"""What runs outside the test process: the documented cron lines and the scripts in scripts/.

The cron lines must call the toolkit the virtualenv installed (``.venv/bin/toolkit``), not
``scripts/*.py`` through the system's ``python3``, which has no toolkit; the scripts, run by a
Python without the toolkit, say so in one line and exit 2 instead of a traceback.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.cli_app:build"
VENV_TOOLKIT = ".venv/bin/toolkit"


def cron_commands() -> list[list[str]]:
    """The commands of the ```cron block in docs/operations.md, as argument lists."""
    text = (ROOT / "docs" / "operations.md").read_text()
    block = re.search(r"```cron\n(.*?)```", text, re.S)
    assert block is not None
    commands = []
    for line in block.group(1).splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        command = line.split("&&", 1)[1].split(">>", 1)[0]  # after `cd ...`, before the log
        commands.append(shlex.split(command))
    return commands


def test_every_cron_line_runs_the_virtualenvs_toolkit() -> None:
    commands = cron_commands()
    assert len(commands) >= 4
    for words in commands:
        program = next(w for w in words if "=" not in w)  # past the VAR=value prefixes
        assert program == VENV_TOOLKIT, words


@pytest.mark.parametrize("words", cron_commands(), ids=lambda w: " ".join(w[2:4]))
def test_every_cron_line_runs(words: list[str], tmp_path: Path) -> None:
    """Each documented command, dry (no --apply), against a fresh database: exit 0."""
    args = words[words.index(VENV_TOOLKIT) + 1 :]
    args = [a for a in args if a != "--apply"]
    db = f"sqlite:///{tmp_path / 'cron.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOOLKIT_DATABASE_URL": db, "TOOLKIT_APP": APP}
    exe = [sys.executable, "-m", "toolkit"]  # what .venv/bin/toolkit runs
    migrate = subprocess.run([*exe, "db", "upgrade"], env=env, capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stderr
    done = subprocess.run([*exe, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (args, done.stdout, done.stderr)


def python_without_toolkit() -> str:
    """The interpreter the virtualenv was made from: it has no toolkit (checked)."""
    base = str(Path(sys.base_prefix) / "bin" / "python3")
    probe = subprocess.run([base, "-I", "-c", "import toolkit"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip(f"{base} has the toolkit installed")
    return base


@pytest.mark.parametrize(
    "script", ["refund_credits.py", "cleanup_orphans.py", "compare_success.py"]
)
def test_a_script_under_a_python_without_the_toolkit_says_so(script: str) -> None:
    python = python_without_toolkit()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [python, "-I", str(ROOT / "scripts" / script), "--since", "1d"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "'toolkit' is not installed" in lines[0] and ".venv/bin/toolkit" in lines[0]


def test_the_distribution_has_a_name_of_its_own() -> None:
    """``toolkit`` on PyPI is another project; the import package and command stay toolkit."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "flagshift-toolkit"
    assert project["scripts"]["toolkit"] == "toolkit.cli:run"
    assert "pip install -e '.[postgres,celery]'" in (ROOT / "README.md").read_text().replace(
        "./flagshift-toolkit", "."
    )
