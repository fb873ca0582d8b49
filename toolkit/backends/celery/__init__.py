"""The Celery backend: one task per job, durable delivery settings, shared rate limits."""

from toolkit.backends.celery.backend import CeleryBackend

__all__ = ["CeleryBackend"]
