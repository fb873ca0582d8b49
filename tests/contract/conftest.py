"""The ``harness`` fixture: every contract test runs once per backend and database.

Backends x databases: legacy (blocking and thread) on SQLite and PostgreSQL, Celery on
PostgreSQL (its workers are other processes sharing the database), Inngest on both. What is
slow to start is shared by a test module: the Celery workers, and the Inngest serve route,
fake API and executor with their Toolkit. Every test still starts from empty tables (the step
log is filtered by run id), so the tests stay independent.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import TABLES, _fresh_pg, make_toolkit, service_missing
from tests.contract.harness import (
    CeleryHarness,
    Harness,
    InngestContractHarness,
    LegacyHarness,
)
from tests.contract.jobs import CELERY_OPTIONS, DIE_ENV
from tests.support.celery_app import STEP_LOG_ENV
from tests.support.celery_harness import (
    REDIS_URL,
    CeleryTestEnv,
    CeleryWorkers,
    celery_workers,
    unreachable,
)
from toolkit import Toolkit

ACCOUNT = "acct"
BALANCE = 100
LEGACY_POOL = 2
CELERY_APP = "tests.contract.jobs:build_celery"

PG = pytest.mark.postgres
BACKENDS = [
    pytest.param(("legacy-blocking", "sqlite"), id="legacy-blocking-sqlite"),
    pytest.param(("legacy-blocking", "postgres"), id="legacy-blocking-pg", marks=PG),
    pytest.param(("legacy-thread", "sqlite"), id="legacy-thread-sqlite"),
    pytest.param(("legacy-thread", "postgres"), id="legacy-thread-pg", marks=PG),
    pytest.param(("celery", "postgres"), id="celery-pg", marks=PG),
    pytest.param(("inngest", "sqlite"), id="inngest-sqlite"),
    pytest.param(("inngest", "postgres"), id="inngest-pg", marks=PG),
]


@dataclass
class Backend:
    """What a module shares for one backend: for Celery, its running workers."""

    name: str
    database: str
    workers: CeleryWorkers | None = None
    env: CeleryTestEnv | None = None
    inngest: InngestContractHarness | None = None
    url: str | None = None


@pytest.fixture(scope="module", params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    name, database = request.param
    if name == "inngest":
        folder = tmp_path_factory.mktemp("inngest")
        url = _database(request, database, folder)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(STEP_LOG_ENV, str(folder / "steps.log"))  # while the functions sync
            shared = InngestContractHarness(_toolkit(url), folder / "steps.log")
        try:
            yield Backend(name, database, inngest=shared, url=url)
        finally:
            shared.close()
        return
    if name != "celery":
        yield Backend(name, database)
        return
    reason = unreachable(REDIS_URL)
    if reason:
        service_missing(reason)
    url = request.getfixturevalue("pg_server_url")
    env = CeleryTestEnv.isolated(REDIS_URL, **CELERY_OPTIONS)
    workdir = tmp_path_factory.mktemp("celery-workers")
    try:
        with celery_workers(
            url, env, app=CELERY_APP, extra_env={DIE_ENV: "kill"}, workdir=workdir
        ) as workers:
            yield Backend(name, database, workers, env)
    finally:
        env.cleanup()


@pytest.fixture
def harness(
    backend: Backend,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Harness]:
    """Empty tables and a Toolkit on ``backend``, 100 credits on ``acct``."""
    h: Harness
    if backend.inngest is not None:
        assert backend.url is not None
        _empty(backend.url)
        h = backend.inngest
        monkeypatch.setenv(STEP_LOG_ENV, str(h.step_log))
        h.prepare()
        h.tk.credits.grant(ACCOUNT, BALANCE)
        yield h
        return
    url = _database(request, backend.database, tmp_path)
    if backend.workers is not None:
        assert backend.env is not None
        # fallbacks run inline in this process: their steps go to the workers' log too
        monkeypatch.setenv(STEP_LOG_ENV, str(backend.workers.step_log))
        h = CeleryHarness(_toolkit(url), backend.workers, backend.env)
    else:
        log = tmp_path / "steps.log"
        monkeypatch.setenv(STEP_LOG_ENV, str(log))
        mode = backend.name.removeprefix("legacy-")
        tk = _toolkit(url, legacy_mode=mode, legacy_workers=LEGACY_POOL)
        h = LegacyHarness(tk, log, mode, pool_size=LEGACY_POOL)
    h.tk.credits.grant(ACCOUNT, BALANCE)
    try:
        yield h
    finally:
        h.close()


def _toolkit(url: str, **options: object) -> Toolkit:
    return make_toolkit(url, retry_base_delay=0.02, retry_max_delay=0.1, **options)


def _database(request: pytest.FixtureRequest, database: str, folder: Path) -> str:
    """A migrated database with empty tables: a copy of the SQLite template, or the session's
    PostgreSQL database truncated."""
    if database == "sqlite":
        path = folder / "toolkit.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    return _fresh_pg(request.getfixturevalue("pg_server_url"))


def _empty(url: str) -> None:
    """The toolkit tables emptied, for a Toolkit a module's tests share (SQLite: all but the
    append-only audit log, whose trigger refuses deletes and which no contract test reads)."""
    if not url.startswith("sqlite"):
        _fresh_pg(url)
        return
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for table in TABLES.split(", "):
                if table == "toolkit_audit":
                    continue
                conn.execute(text(f"DELETE FROM {table}"))  # children first: FKs hold
    finally:
        engine.dispose()
