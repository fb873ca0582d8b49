"""Alembic migrations produce exactly the models' schema, and the audit log is append-only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from toolkit.store.engine import VERSION_TABLE, Database
from toolkit.store.models import Base


def _diff(db: Database) -> list[object]:
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "version_table": VERSION_TABLE,
                "include_name": lambda name, type_, _p: (
                    type_ != "table"
                    or ((name or "").startswith("toolkit_") and name != VERSION_TABLE)
                ),
            },
        )
        return list(compare_metadata(ctx, Base.metadata))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        return Database(f"sqlite:///{tmp_path / 'fresh.db'}")
    url = request.getfixturevalue("pg_server_url")
    db = Database(url)
    command.downgrade(db.alembic_config(), "base")

    def restore() -> None:
        db.migrate()
        db.dispose()

    request.addfinalizer(restore)
    return db


def test_migrations_match_models_exactly(empty_db: Database) -> None:
    empty_db.migrate()
    assert _diff(empty_db) == []
    tables = set(sa.inspect(empty_db.engine).get_table_names())
    assert {t.name for t in Base.metadata.sorted_tables} <= tables


def test_downgrade_then_upgrade_round_trips(empty_db: Database) -> None:
    empty_db.migrate()
    command.downgrade(empty_db.alembic_config(), "base")
    remaining = [
        t for t in sa.inspect(empty_db.engine).get_table_names() if t.startswith("toolkit_")
    ]
    assert remaining == [VERSION_TABLE]
    empty_db.migrate()
    assert _diff(empty_db) == []


def test_host_tables_are_left_alone(empty_db: Database) -> None:
    with empty_db.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE host_orders (id INTEGER PRIMARY KEY)"))
    try:
        empty_db.migrate()
        assert _diff(empty_db) == []
        assert "host_orders" in sa.inspect(empty_db.engine).get_table_names()
    finally:
        with empty_db.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE host_orders"))


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE toolkit_audit SET reason = 'rewritten'",
        "DELETE FROM toolkit_audit",
    ],
)
def test_audit_log_is_append_only(empty_db: Database, statement: str) -> None:
    empty_db.migrate()
    with empty_db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO toolkit_audit (at, actor, action, target, reason) "
                "VALUES (CURRENT_TIMESTAMP, 'ops', 'rollout.set', 'job', 'original')"
            )
        )
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), empty_db.engine.begin() as conn:
        conn.execute(sa.text(statement))
    with empty_db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT reason FROM toolkit_audit")).scalars().all() == [
            "original"
        ]
    empty_db.dispose()


def test_0003_gives_existing_runs_the_arm_they_were_assigned(empty_db: Database) -> None:
    """Before 0003 no arm was recorded: a fallback's ``fallback_from`` is the best record of
    its assignment, else the backend the run is on."""
    command.upgrade(empty_db.alembic_config(), "0002")
    columns = (
        "id, job, targeting_key, backend, fallback_from, status, payload, attempts, cost, "
        "recoveries, created_at"
    )
    with empty_db.engine.begin() as conn:
        for rid, backend, fallback in (
            ("00000000000000000000000000000001", "legacy", "celery"),
            ("00000000000000000000000000000002", "celery", None),
            ("00000000000000000000000000000003", "legacy", None),
        ):
            conn.execute(
                sa.text(
                    f"INSERT INTO toolkit_runs ({columns}) VALUES (:id, 'j', 'k', :backend, "
                    ":fallback, 'COMPLETED', '{}', 1, 0, 0, CURRENT_TIMESTAMP)"
                ),
                {
                    "id": rid,
                    "backend": backend,
                    "fallback": fallback,
                },
            )
    empty_db.migrate()
    with empty_db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT backend, arm FROM toolkit_runs ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [
        ("legacy", "celery"),
        ("celery", "celery"),
        ("legacy", "legacy"),
    ]
    assert _diff(empty_db) == []
    empty_db.dispose()


@pytest.mark.postgres
def test_audit_log_refuses_truncate_on_postgres(pg_url: str) -> None:
    db = Database(pg_url)
    try:
        with db.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO toolkit_audit (at, actor, action, target) "
                    "VALUES (CURRENT_TIMESTAMP, 'ops', 'rollout.set', 'job')"
                )
            )
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), db.engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE toolkit_audit"))
        with db.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM toolkit_audit")).scalar() == 1
    finally:
        db.dispose()


APP_ROLE = f"toolkit_test_app_{os.getpid()}"  # roles are cluster-wide: one per session


@pytest.mark.postgres
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE toolkit_audit SET reason = 'rewritten'",
        "DELETE FROM toolkit_audit",
        "TRUNCATE toolkit_audit",
        "ALTER TABLE toolkit_audit DISABLE TRIGGER USER",
        "DROP TRIGGER toolkit_audit_append_only ON toolkit_audit",
    ],
)
def test_the_documented_app_role_cannot_rewrite_the_audit_log(pg_url: str, statement: str) -> None:
    """docs/operations.md: tables owned by the migration role, the app role granted only
    INSERT and SELECT on the audit table (and its sequence). That role is refused."""
    db = Database(pg_url)
    try:
        with db.engine.begin() as conn:
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {APP_ROLE}"))
            conn.execute(sa.text(f"CREATE ROLE {APP_ROLE} NOLOGIN"))
            conn.execute(sa.text(f"GRANT INSERT, SELECT ON toolkit_audit TO {APP_ROLE}"))
            conn.execute(sa.text(f"GRANT USAGE ON SEQUENCE toolkit_audit_id_seq TO {APP_ROLE}"))
        with db.engine.begin() as conn:
            conn.execute(sa.text(f"SET LOCAL ROLE {APP_ROLE}"))
            conn.execute(
                sa.text(
                    "INSERT INTO toolkit_audit (at, actor, action, target, reason) "
                    "VALUES (CURRENT_TIMESTAMP, 'app', 'rollout.set', 'job', 'original')"
                )
            )
        with pytest.raises(sa.exc.DBAPIError), db.engine.begin() as conn:
            conn.execute(sa.text(f"SET LOCAL ROLE {APP_ROLE}"))
            conn.execute(sa.text(statement))
        with db.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT reason FROM toolkit_audit")).scalars().all() == [
                "original"
            ]
    finally:
        with db.engine.begin() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {APP_ROLE}"))
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {APP_ROLE}"))
        db.dispose()
