"""Finds the user's Toolkit from ``--app module:attr`` or TOOLKIT_APP, once per invocation."""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import click

from toolkit.app import Toolkit
from toolkit.config import parse_duration
from toolkit.errors import AppLoadError, InvalidInput

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
    except ModuleNotFoundError as exc:
        raise AppLoadError(f"cannot import {module_name!r} for --app {spec!r}: {exc}") from exc
    obj: object = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if not isinstance(obj, Toolkit) and callable(obj):
        obj = obj()
    if not isinstance(obj, Toolkit):
        raise AppLoadError(f"--app {spec!r} is a {type(obj).__name__}, not a toolkit.Toolkit")
    return obj


@dataclass
class CliContext:
    app_spec: str | None
    database_url: str | None
    _toolkit: Toolkit | None = field(default=None, repr=False)

    @property
    def toolkit(self) -> Toolkit:
        """The app's Toolkit, built on first use: ``--help`` and bad input never open a database."""
        if self._toolkit is None:
            if self.app_spec:
                self._toolkit = load_app(self.app_spec)
            else:
                # Without an app, read commands still work; job-specific ones say what is missing.
                self._toolkit = Toolkit(self.database_url, legacy_mode="blocking")
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
        except InvalidInput:
            raise InvalidInput(
                f"invalid --since {value!r}: a duration like 24h or 15m, or an ISO timestamp"
            ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
