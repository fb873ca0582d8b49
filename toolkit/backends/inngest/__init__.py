"""The Inngest backend: event send, one function per job, the signed serve route, config check."""

from toolkit.backends.inngest.backend import InngestBackend

__all__ = ["InngestBackend"]
