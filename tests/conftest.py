"""Shared fixtures: one ``tk`` fixture parametrised over the databases (SQLite and PostgreSQL).

PostgreSQL tests run against TOOLKIT_TEST_PG_URL (default: the local server's ``test``
database is used only to create a private database per test session). Without a server they
skip with the reason; under CI=true they fail instead, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from toolkit import Toolkit
from toolkit.store.engine import Database

PG_ADMIN_URL = os.environ.get(
    "TOOLKIT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

TABLES = (
    "toolkit_steps, toolkit_credit_ledger, toolkit_dead_letters, toolkit_runs, "
    "toolkit_rollouts, toolkit_audit, toolkit_credit_accounts"
)


def service_missing(reason: str) -> None:
    """Skip on a laptop without the service; fail under CI, where it must be there."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: service tests must run, not skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A private, migrated PostgreSQL database for this test session."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"toolkit_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any connection failure means "no server"
        admin.dispose()
        service_missing(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {type(exc).__name__}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    db = Database(url)
    db.migrate()
    db.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrate once, copy per test: each test gets a fresh file without re-running Alembic."""
    path = tmp_path_factory.mktemp("template") / "toolkit.db"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    db.dispose()
    return path


def _fresh_pg(url: str) -> str:
    engine = create_engine(url)
    with engine.begin() as conn:
        # The audit log refuses TRUNCATE (0003); the superuser test role lifts every trigger
        # for this transaction only, which the documented app role cannot do.
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "toolkit.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    return _fresh_pg(request.getfixturevalue("pg_server_url"))


@pytest.fixture
def pg_url(pg_server_url: str) -> str:
    return _fresh_pg(pg_server_url)


def make_toolkit(url: str, **options: object) -> Toolkit:
    defaults: dict[str, object] = {
        "legacy_mode": "blocking",
        "retry_base_delay": 0.001,
        "retry_max_delay": 0.004,
    }
    defaults.update(options)
    # options are forwarded as given: Toolkit validates them (mypy cannot, key by key)
    return Toolkit(url, **defaults)  # type: ignore[arg-type]


@pytest.fixture
def tk(db_url: str) -> Iterator[Toolkit]:
    toolkit = make_toolkit(db_url)
    yield toolkit
    toolkit.close()


@pytest.fixture
def cli_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """In-process CLI runs: the database from the environment, a fixed actor, wide tables."""
    monkeypatch.setenv("TOOLKIT_DATABASE_URL", db_url)
    monkeypatch.setenv("TOOLKIT_ACTOR", "tester")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(ROOT)
    return db_url
