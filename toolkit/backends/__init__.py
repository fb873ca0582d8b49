"""Backends: the transport that gets a queued run to an executor.

The lifecycle (record, transition, memo, refund) lives in :mod:`toolkit.runtime`; a backend
only moves a run id from the dispatcher to something that calls ``Runtime.execute``.
Optional backends are imported lazily so their dependencies stay optional.
"""

from __future__ import annotations

import importlib
from typing import Any

from toolkit.backends.base import BaseBackend
from toolkit.errors import ConfigError, MissingExtra
from toolkit.jobs import JobRegistry, SubmittedRun
from toolkit.runtime.lifecycle import Runtime

# name -> (module, class, extra, the import that proves the extra is installed)
OPTIONAL: dict[str, tuple[str, str, str, str]] = {
    "inngest": ("toolkit.backends.inngest", "InngestBackend", "inngest", "inngest"),
    "celery": ("toolkit.backends.celery", "CeleryBackend", "celery", "celery"),
}


def load_backend(name: str, runtime: Runtime, jobs: JobRegistry, **options: Any) -> BaseBackend:
    """Build an optional backend, naming the pip extra when its dependencies are missing.

    The backend gets the runtime it hands runs to and the job registry it builds its tasks
    or functions from (jobs declared later included), nothing else of the application.
    """
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
    backend: BaseBackend = getattr(module, class_name)(runtime, jobs, **options)
    return backend


__all__ = ["OPTIONAL", "BaseBackend", "SubmittedRun", "load_backend"]
