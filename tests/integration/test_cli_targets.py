"""The CLI acts on exactly the database the operator named, or refuses; bad input exits 2."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import click
import pytest

from toolkit.cli import cli, main

APP = "tests.cli_app:build"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def percentage(capsys: pytest.CaptureFixture[str]) -> object:
    code, out, err = run(capsys, "--app", APP, "rollout", "status", "daily-batch", "--json")
    assert code == 0, err
    return json.loads(out)[0]["percentage"]


def test_app_and_another_database_url_refused(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = percentage(capsys)
    other = "postgresql://ops:s3cret@127.0.0.1:1/elsewhere"
    code, out, err = run(
        capsys, "--app", APP, "--database-url", other, "rollout", "set", "daily-batch", "5",
        "--reason", "x",
    )  # fmt: skip
    assert code == 2, err
    assert err.count("\n") == 1 and "s3cret" not in err and "elsewhere" in err
    assert "--database-url" in err and "Traceback" not in err + out
    assert percentage(capsys) == before  # the app's database was not touched
    # a server that is down is not an excuse to list the app's runs instead
    code, _, err = run(capsys, "--app", APP, "--database-url", other, "runs", "list")
    assert code == 2 and "elsewhere" in err


def test_app_and_the_same_database_url_accepted(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "--app", APP, "--database-url", cli_env, "runs", "list")
    assert code == 0, err


@pytest.mark.parametrize(
    "args",
    [
        ["runs", "list"],
        ["db", "current"],
        ["--app", APP, "rollout", "set", "daily-batch", "5", "--reason", "x"],
        ["credits", "balance", "acct"],
    ],
)
def test_missing_sqlite_file_refused_not_created(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
) -> None:
    path = tmp_path / "typo.db"
    monkeypatch.setenv("TOOLKIT_DATABASE_URL", f"sqlite:///{path}")
    code, out, err = run(capsys, *args)
    assert code == 2, err
    assert f"no database at {path}" in err and "toolkit db upgrade" in err
    assert err.count("\n") == 1 and "Traceback" not in err + out
    assert not path.exists()


def test_db_upgrade_creates_the_sqlite_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "new.db"
    assert run(capsys, "--database-url", f"sqlite:///{path}", "db", "upgrade")[0] == 0
    assert path.exists()
    code, out, _ = run(capsys, "--database-url", f"sqlite:///{path}", "runs", "list", "--json")
    assert code == 0 and json.loads(out) == []


@pytest.mark.parametrize("with_app", [False, True])
def test_empty_database_url_env_is_bad_input(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    with_app: bool,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOOLKIT_DATABASE_URL", "")
    args = ["--app", APP] if with_app else []
    code, _, err = run(capsys, *args, "runs", "list")
    assert code == 2, err
    assert "TOOLKIT_DATABASE_URL" in err and err.count("\n") == 1
    assert not (tmp_path / "toolkit.db").exists()


def test_empty_database_url_option_is_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "--database-url", "", "runs", "list")
    assert code == 2 and "--database-url" in err
    assert not (tmp_path / "toolkit.db").exists()


def test_an_exit_code_is_not_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    """``toolkit worker`` ends with click.exceptions.Exit(code) when Celery dies."""

    @click.command("dies")
    def dies() -> None:
        raise click.exceptions.Exit(3)

    cli.add_command(dies)
    try:
        assert main(["dies"]) == 3
    finally:
        del cli.commands["dies"]


def test_worker_exit_code_reaches_the_shell(
    cli_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from toolkit.backends.celery.backend import CeleryBackend

    monkeypatch.setenv("TOOLKIT_BROKER_URL", "memory://")
    monkeypatch.setattr(CeleryBackend, "run_worker", lambda self, **kw: 1)
    code, _, err = run(capsys, "--app", APP, "worker", "--pool", "solo")
    assert code == 1, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"toolkit {version('flagshift-toolkit')}"


def test_every_runs_list_option_has_help() -> None:
    from toolkit.cli.runs import group

    command = group.commands["list"]
    missing = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
    assert missing == []


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    name = f"tk_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.mark.parametrize(
    "source, attr, message",
    [
        ("from toolkit import Toolkit\ndef make(url):\n    return Toolkit(url)\n", "make",
         "needs arguments"),
        ("def broken(:\n    pass\n", "tk", "syntax error"),
    ],
)  # fmt: skip
def test_bad_app_exits_2(
    cli_env: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    source: str,
    attr: str,
    message: str,
) -> None:
    name = _module(tmp_path, monkeypatch, source)
    code, out, err = run(capsys, "--app", f"{name}:{attr}", "runs", "list")
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err + out


@pytest.mark.parametrize(
    "args, message",
    [
        (["runs", "list", "--since", "1000000d"], "invalid --since"),
        (["credits", "grant", "acct", str(10**30)], "credit amount must be"),
        (["credits", "grant", "acct", "0"], "credit amount must be"),
        (["credits", "balance", ""], "invalid account"),
        (["db", "upgrade", "--revision", "bogus"], "unknown --revision"),
        (["db", "upgrade", "--revision", ""], "--revision is empty"),
    ],
)
def test_bad_input_exits_2(
    cli_env: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    _, audit_before, _ = run(capsys, "audit", "--json")
    code, out, err = run(capsys, *args)
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err + out
    assert run(capsys, "audit", "--json")[1] == audit_before


def test_db_upgrade_against_a_down_server(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://ops:s3cret@127.0.0.1:1/toolkit"
    code, _, err = run(capsys, "--database-url", url, "db", "upgrade")
    assert code == 1 and "database unavailable" in err and "s3cret" not in err


def test_grant_is_audited(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "credits", "grant", "acct-1", "25", "--reason", "welcome")
    assert code == 0 and "balance 25" in out, err
    code, out, _ = run(capsys, "credits", "grant", "acct-1", "5", "--actor", "alice")
    code, out, _ = run(capsys, "audit", "--json")
    entries = json.loads(out)
    assert [(e["action"], e["actor"], e["target"]) for e in entries] == [
        ("credits.grant", "alice", "acct-1"),
        ("credits.grant", "tester", "acct-1"),
    ]
    assert entries[1]["after"] == {"account": "acct-1", "amount": 25, "balance": 25}
    assert entries[1]["reason"] == "welcome"
