"""Pooled connections that the server dropped: an idle one is pinged and replaced before use;
a busy one fails one statement, after which the whole pool reconnects. And the autocommit path
commits each statement by itself."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from tests.conftest import PG_ADMIN_URL, make_toolkit
from toolkit import Toolkit
from toolkit.errors import ConfigError, DatabaseError
from toolkit.store.models import Run

pytestmark = pytest.mark.postgres


def _terminate_backends(url: str) -> int:
    """Kill every server process serving ``url``'s database (what a failover or restart does)."""
    name = url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        ).scalar_one()
    admin.dispose()
    return int(killed)


def _noop_job(tk: Toolkit) -> None:
    @tk.job("noop")
    def noop(ctx: Any, payload: Any) -> str:
        return "ok"


def test_idle_connection_dropped_by_the_server_is_replaced_before_use(pg_url: str) -> None:
    tk = make_toolkit(pg_url, engine_options={"ping_idle_after": 0.05})
    _noop_job(tk)
    try:
        assert tk.dispatch("noop", {}).status == "COMPLETED"
        assert _terminate_backends(pg_url) >= 1
        time.sleep(0.1)  # idle longer than ping_idle_after: the checkout pings, finds it dead
        handle = tk.dispatch("noop", {})
        assert handle.refresh().status == "COMPLETED"
    finally:
        tk.close()


def test_busy_connection_dropped_fails_once_then_the_pool_reconnects(pg_url: str) -> None:
    tk = make_toolkit(pg_url, engine_options={"ping_idle_after": 3600})  # never pings
    _noop_job(tk)
    try:
        first = tk.dispatch("noop", {})
        assert first.status == "COMPLETED"
        assert _terminate_backends(pg_url) >= 1
        with pytest.raises(DatabaseError, match="database unavailable"):
            tk.runs.get(first.run_id)
        # The error invalidated the pool: the next checkout opens a new connection.
        assert tk.runs.get(first.run_id).status == "COMPLETED"
        assert tk.dispatch("noop", {}).refresh().status == "COMPLETED"
    finally:
        tk.close()


def test_autocommit_statements_are_committed_one_by_one(pg_url: str) -> None:
    tk = make_toolkit(pg_url)
    _noop_job(tk)
    try:
        run_id = tk.dispatch("noop", {}).run_id
        with pytest.raises(RuntimeError), tk.db.autocommit() as conn:
            conn.execute(
                text("UPDATE toolkit_runs SET error = 'kept' WHERE id = :id"), {"id": run_id}
            )
            raise RuntimeError("after the statement: it stays committed")
        with tk.db.connect() as conn:
            assert conn.execute(select(Run.error).where(Run.id == run_id)).scalar_one() == "kept"
        with pytest.raises(RuntimeError), tk.db.connect() as conn:
            conn.execute(
                text("UPDATE toolkit_runs SET error = 'lost' WHERE id = :id"), {"id": run_id}
            )
            raise RuntimeError("inside a transaction: rolled back")
        with tk.db.connect() as conn:
            assert conn.execute(select(Run.error).where(Run.id == run_id)).scalar_one() == "kept"
    finally:
        tk.close()


@pytest.mark.parametrize("bad", ["soon", -1, True])
def test_a_bad_idle_ping_setting_is_a_config_error(pg_url: str, bad: object) -> None:
    with pytest.raises(ConfigError, match="ping_idle_after must be a number of seconds"):
        make_toolkit(pg_url, engine_options={"ping_idle_after": bad})
