"""Backends: the transport that gets a queued run to an executor.

The lifecycle (record, transition, memo, refund) lives in :mod:`toolkit.runtime`; a backend
only moves a run id from the dispatcher to something that calls ``Runtime.execute``.
Optional backends are imported lazily so their dependencies stay optional.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from toolkit.backends.base import Backend, BaseBackend, SubmittedRun
from toolkit.errors import ConfigError, MissingExtra

if TYPE_CHECKING:
    from toolkit.app import Toolkit

# name -> (module, class, extra, the import that proves the extra is installed)
OPTIONAL: dict[str, tuple[str, str, str, str]] = {
    "inngest": ("toolkit.backends.inngest", "InngestBackend", "inngest", "inngest"),
    "celery": ("toolkit.backends.celery", "CeleryBackend", "celery", "celery"),
}


def load_backend(name: str, toolkit: Toolkit, **options: Any) -> BaseBackend:
    """Build an optional backend, naming the pip extra when its dependencies are missing."""
    try:
        module_name, class_name, extra, requirement = OPTIONAL[name]
    except KeyError:
        raise ConfigError(
            f"unknown backend {name!r} (known: legacy, {', '.join(OPTIONAL)})"
        ) from None
    try:
        importlib.import_module(requirement)
    except ModuleNotFoundError as exc:
        raise MissingExtra(extra, requirement) from exc
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ConfigError(f"the {name!r} backend is not shipped in this version") from exc
        raise
    backend: BaseBackend = getattr(module, class_name)(toolkit, **options)
    return backend


__all__ = ["OPTIONAL", "Backend", "BaseBackend", "SubmittedRun", "load_backend"]
