"""Engine and session handling; the only place that knows about dialect differences."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.resources import files
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
    exc,
)
from sqlalchemy.orm import Session, sessionmaker

from toolkit.errors import ConfigError, DatabaseError
from toolkit.events import Events, RunEvent
from toolkit.store.dialect import Dialect
from toolkit.store.postgres import Postgres
from toolkit.store.sqlite import SQLite

VERSION_TABLE = "toolkit_alembic_version"
# Where a session keeps the events of its transaction until it commits (Session.info).
_PENDING = "toolkit_events"

# A pooled connection idle longer than this is pinged before use. A busy process reuses its
# connections within milliseconds and skips the round trip; after a server restart, the first
# error on a connection marks the whole pool stale and every later checkout reconnects.
PING_IDLE_AFTER = 1.0


def make_engine(url: str, **kwargs: Any) -> Engine:
    """A SQLAlchemy engine for ``url``, tuned per database (SQLite pragmas and BEGIN IMMEDIATE;
    psycopg, no server-side prepares). A bad URL or missing driver is a ConfigError."""
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "begin", _sqlite_begin_immediate)
        else:
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
            ping_idle_after = _seconds("ping_idle_after", kwargs.pop("ping_idle_after", None))
            # No automatic server-side prepares: a generic plan cached while toolkit_runs was
            # small scans the status index instead of the primary key once the table grows.
            connect_args = dict(kwargs.pop("connect_args", {}))
            connect_args.setdefault("prepare_threshold", None)
            kwargs["connect_args"] = connect_args
            engine = create_engine(url, **kwargs)
            if not kwargs.get("pool_pre_ping"):
                _ping_when_idle(engine, ping_idle_after)
    except exc.NoSuchModuleError as err:
        raise ConfigError(f"unsupported database URL {_safe(url)!r}: {err}") from err
    except exc.ArgumentError as err:
        raise ConfigError(f"malformed database URL {_safe(url)!r}") from err
    except ModuleNotFoundError as err:
        raise ConfigError(
            f"no driver for {_safe(url)!r} ({err.name}): pip install 'flagshift-toolkit[postgres]'"
        ) from err
    return engine


def _seconds(name: str, value: object) -> float:
    if value is None:
        return PING_IDLE_AFTER
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(f"{name} must be a number of seconds >= 0, not {value!r}")
    return float(value)


def _ping_when_idle(engine: Engine, idle_after: float) -> None:
    """``pool_pre_ping``, but only for connections that sat idle: a ping per transaction costs a
    round trip on every hot path (dispatch, claim, complete), while a connection just returned
    by this process was alive a moment ago."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["toolkit_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("toolkit_idle_since")
        if since is None or time.monotonic() - since < idle_after:
            return  # brand-new connection, or one in use a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as err:
            raise exc.DisconnectionError(f"stale pooled connection: {err}") from err
        if not alive:
            raise exc.DisconnectionError("stale pooled connection")


def _safe(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except exc.ArgumentError:
        return "<unparseable url>"


def missing_sqlite_file(url: str) -> str | None:
    """The path of the SQLite file ``url`` names when that file does not exist, else None
    (another database, in-memory, URI form, or the file is there). Opening it would create an
    empty file: the CLI refuses a mistyped path instead, except to ``db upgrade``."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except exc.ArgumentError:
        return None
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return None
    if path.startswith("file:") or str(parsed.query.get("uri", "")).lower() == "true":
        return None
    return None if Path(path).exists() else path


def _database_error(url: str, err: exc.DBAPIError) -> DatabaseError:
    text = str(err.orig)
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        return DatabaseError(
            f"toolkit tables missing in {_safe(url)}: run 'toolkit db upgrade' or tk.migrate()"
        )
    if isinstance(err, exc.OperationalError):
        return DatabaseError(f"database unavailable at {_safe(url)}: {text.splitlines()[0]}")
    return DatabaseError(f"database error at {_safe(url)}: {text.splitlines()[0]}")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Autocommit at the driver level; transactions begin explicitly in _sqlite_begin_immediate.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    """Take the write lock at BEGIN so read-then-write transactions cannot deadlock-upgrade."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def for_name(name: str) -> Dialect:
    """The dialect for SQLAlchemy's dialect ``name``."""
    return Postgres() if name == "postgresql" else SQLite()


class Database:
    """An engine plus a session factory, with transaction helpers."""

    def __init__(self, url: str, *, events: Events | None = None, **engine_kwargs: Any) -> None:
        self.url = url
        #: The lifecycle listeners: every transition the store commits is emitted here.
        self.events = events if events is not None else Events()
        self.engine = make_engine(url, **engine_kwargs)
        #: Everything that differs between PostgreSQL and SQLite, behind one interface.
        self.sql = for_name(self.engine.dialect.name)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # One statement, committed by itself: no BEGIN/COMMIT round trips. SQLite keeps its
        # BEGIN IMMEDIATE transactions (see autocommit()).
        self._autocommit = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT")
            if self.sql.autocommit
            else None
        )

    @property
    def is_postgres(self) -> bool:
        """PostgreSQL, where the report's readers share one exported snapshot."""
        return self.sql.name == "postgresql"

    @property
    def dialect(self) -> str:
        """SQLAlchemy's dialect name, for operators (``toolkit db current``)."""
        return self.sql.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: committed on success, rolled back on any error.

        Events recorded with :meth:`after_commit` are emitted once it committed (and dropped
        if it rolled back), so a listener never hears of a change that did not happen.
        """
        session = self._sessions()
        try:
            with session.begin():
                yield session
            pending: list[RunEvent] | None = session.info.pop(_PENDING, None)
        except (exc.OperationalError, exc.ProgrammingError) as err:
            raise _database_error(self.url, err) from err
        finally:
            session.close()
        if pending:
            self.events.emit_all(pending)

    def after_commit(self, s: Session, events: list[RunEvent]) -> None:
        """Emit ``events`` when the transaction of ``s`` (from :meth:`transaction`) commits."""
        if events:
            s.info.setdefault(_PENDING, []).extend(events)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A Core transaction: for hot single-statement paths that need no ORM session."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except (exc.OperationalError, exc.ProgrammingError) as err:
            raise _database_error(self.url, err) from err

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """For a statement that is atomic on its own (one conditional UPDATE, one INSERT): each
        statement commits as it runs, saving the BEGIN and COMMIT round trips of a transaction.
        Never use it for two writes that must commit together. On SQLite it is a transaction.
        """
        if self._autocommit is None:
            with self.connect() as conn:
                yield conn
            return
        try:
            with self._autocommit.connect() as conn:
                yield conn
        except (exc.OperationalError, exc.ProgrammingError) as err:
            raise _database_error(self.url, err) from err

    def insert(self, table: Any) -> Any:
        """A dialect INSERT that supports ``on_conflict_do_nothing``."""
        return self.sql.insert(table)

    def among(self, column: Any, ids: Sequence[uuid.UUID]) -> Any:
        """``column IN ids``, in the form this database plans best."""
        return self.sql.among(column, ids)

    def migrate(self, revision: str = "head") -> None:
        """Alembic upgrade to ``revision`` on this engine; a no-op when already there."""
        from alembic import command

        try:
            command.upgrade(self.alembic_config(), revision)
        except (exc.OperationalError, exc.ProgrammingError) as err:
            raise _database_error(self.url, err) from err

    def alembic_config(self) -> Any:
        """An Alembic config for the packaged migrations on this engine: no alembic.ini needed."""
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(files("toolkit.store") / "migrations"))
        cfg.attributes["engine"] = self.engine
        return cfg

    def dispose(self) -> None:
        """Close the pool's connections; for shutdown, once nothing uses the database any more."""
        self.engine.dispose()
