"""The Celery backend: one task per job, durable delivery settings, shared rate limits.

``CeleryBackend`` is imported on first use: importing a submodule never needs Celery itself.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CeleryBackend"]


def __getattr__(name: str) -> Any:
    if name == "CeleryBackend":
        from toolkit.backends.celery.backend import CeleryBackend

        return CeleryBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
