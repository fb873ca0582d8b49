"""Alembic migrations produce exactly the models' schema, and the audit log is append-only."""

from __future__ import annotations

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
