"""The Inngest backend: event send, one function per job, the signed serve route, config check.

``InngestBackend`` is imported on first use, so ``toolkit.backends.inngest.web`` (the cron
routes) works in an install without the Inngest SDK.
"""

from __future__ import annotations

from typing import Any

__all__ = ["InngestBackend"]


def __getattr__(name: str) -> Any:
    if name == "InngestBackend":
        from toolkit.backends.inngest.backend import InngestBackend

        return InngestBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
