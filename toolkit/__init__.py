"""Move inline background work onto durable engines behind a percentage flag, reversibly."""

from toolkit.app import Toolkit
from toolkit.dispatch.handles import DispatchRequest, Route, RunHandle
from toolkit.errors import (
    BackendUnavailable,
    InsufficientCredits,
    JobTimeout,
    NonRetriableError,
    ToolkitError,
    UnknownJob,
    UnknownRun,
)
from toolkit.jobs import JobContext, JobSpec, RateLimit
from toolkit.store.models import RunStatus

__all__ = [
    "BackendUnavailable",
    "DispatchRequest",
    "InsufficientCredits",
    "JobContext",
    "JobSpec",
    "JobTimeout",
    "NonRetriableError",
    "RateLimit",
    "Route",
    "RunHandle",
    "RunStatus",
    "Toolkit",
    "ToolkitError",
    "UnknownJob",
    "UnknownRun",
]
