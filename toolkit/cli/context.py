"""Finds the user's Toolkit from ``--app module:attr`` or TOOLKIT_APP, once per invocation."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from toolkit.app import Toolkit
from toolkit.config import DATABASE_URL_ENV, parse_duration
from toolkit.errors import AppLoadError, InvalidInput
from toolkit.store.engine import missing_sqlite_file

_APP = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def load_app(spec: str) -> Toolkit:
    """Import ``module:attr``; attr may be a Toolkit or a zero-argument factory returning one."""
    if not _APP.match(spec):
        raise AppLoadError(
            f"malformed --app {spec!r}: expected module:attribute, e.g. myapp.jobs:tk"
        )
    module_name, attr_path = spec.split(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppLoadError(f"cannot import {module_name!r} for --app {spec!r}: {exc}") from exc
    except SyntaxError as exc:
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else module_name
        raise AppLoadError(f"syntax error in --app {spec!r} at {where}: {exc.msg}") from exc
    obj: object = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if not isinstance(obj, Toolkit) and callable(obj):
        try:
            inspect.signature(obj).bind()
        except TypeError:
            raise AppLoadError(
                f"--app {spec!r} is a factory that needs arguments: give a Toolkit or a "
                "factory callable with none"
            ) from None
        except ValueError:
            pass  # no signature to inspect (a builtin): call it and see
        obj = obj()
    if not isinstance(obj, Toolkit):
        raise AppLoadError(f"--app {spec!r} is a {type(obj).__name__}, not a toolkit.Toolkit")
    return obj


def _norm(url: str) -> str:
    if url.startswith("postgresql://"):  # what Database makes of it
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    try:
        return make_url(url).render_as_string(hide_password=False)
    except ArgumentError:
        return url


def _safe(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable url>"


@dataclass
class CliContext:
    app_spec: str | None
    database_url: str | None
    _toolkit: Toolkit | None = field(default=None, repr=False)

    @property
    def toolkit(self) -> Toolkit:
        """The app's Toolkit, built on first use: ``--help`` and bad input never open a database.

        It works on exactly the database the operator named, or refuses (exit 2): an app
        whose database differs from ``--database-url``/TOOLKIT_DATABASE_URL, or a SQLite
        file that does not exist (opening it would create it empty; see :meth:`open`).
        """
        return self.open(create=False)

    def open(self, *, create: bool) -> Toolkit:
        """:attr:`toolkit`; ``create=True`` (``db upgrade`` only) may create a SQLite file."""
        if self._toolkit is None:
            if self.database_url is not None and not self.database_url.strip():
                raise InvalidInput("--database-url is empty: give a database URL")
            env = os.environ.get(DATABASE_URL_ENV)
            if (
                self.database_url is None and env is not None and not env.strip()
            ):  # click reads an empty variable as unset
                raise InvalidInput(f"{DATABASE_URL_ENV} is set but empty: give a URL or unset it")
            if self.app_spec:
                tk = load_app(self.app_spec)
                named = self.database_url
                if named and _norm(named) != _norm(tk.db.url):
                    tk.close()
                    raise InvalidInput(
                        f"--app {self.app_spec} uses {_safe(tk.db.url)} but --database-url/"
                        f"{DATABASE_URL_ENV} names {_safe(named)}: give one, or the same"
                    )
            else:
                # Without an app, read commands still work; job-specific ones say what is missing.
                tk = Toolkit(self.database_url, legacy_mode="blocking")
            self._toolkit = tk
        missing = None if create else missing_sqlite_file(self._toolkit.db.url)
        if missing is not None:
            raise InvalidInput(f"no database at {missing}: run `toolkit db upgrade` to create it")
        return self._toolkit

    def close(self) -> None:
        """Drain and release what the command opened; called once when the command ends."""
        if self._toolkit is not None:
            self._toolkit.close()


pass_ctx = click.make_pass_decorator(CliContext)


def parse_since(value: str | None) -> datetime | None:
    """'24h', '15m', '7d' back from now, or an ISO-8601 timestamp (UTC if no zone given)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            return datetime.now(UTC) - timedelta(seconds=parse_duration(value, what="--since"))
        except OverflowError:
            raise InvalidInput(f"invalid --since {value!r}: too far back") from None
        except InvalidInput:
            raise InvalidInput(
                f"invalid --since {value!r}: a duration like 24h or 15m, or an ISO timestamp"
            ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
