"""What dispatch hands back and takes in: routes, handles, requests, and their validation."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from toolkit.errors import InvalidInput, InvalidPayload
from toolkit.jobs import SubmittedRun

__all__ = [
    "DispatchRequest",
    "Reroute",
    "Route",
    "RunHandle",
    "RunReader",
    "RunRecord",
    "SubmittedRun",
]


class RunRecord(Protocol):
    """What a handle refreshes from: any view of the run's record with these fields."""

    @property
    def backend(self) -> str:
        """The backend holding the run now, after any fallback or recovery."""

    @property
    def status(self) -> str:
        """A RunStatus value, e.g. ``"QUEUED"``."""

    @property
    def fallback_from(self) -> str | None:
        """The backend that refused the run at hand-over; None if none did."""

    @property
    def error(self) -> str | None:
        """Why it failed or was cancelled, or the last attempt's error before a retry; else None."""


RunReader = Callable[[uuid.UUID], RunRecord]


@dataclass(frozen=True)
class Route:
    """Which backend a key gets and why, as the OpenFeature client answered."""

    job: str
    key: str
    backend: str
    reason: str
    variant: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict, for JSON output."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Reroute:
    """A recovered run, moved back to QUEUED on the backend the flag chose again."""

    run: SubmittedRun
    route: Route
    previous_backend: str
    recovery: int  # the run's recovery count, this one included


@dataclass(frozen=True)
class DispatchRequest:
    payload: Any
    key: str | None = None
    idempotency_key: str | None = None
    account: str | None = None


@dataclass
class RunHandle:
    run_id: uuid.UUID
    job: str
    backend: str
    status: str
    created: bool = True
    route_reason: str | None = None
    fallback_from: str | None = None
    error: str | None = None
    _reader: RunReader | None = field(default=None, repr=False, compare=False)

    def refresh(self) -> RunHandle:
        """Re-read backend and status from the run record, through the reader the
        dispatcher gave the handle (a plain value holds no application object)."""
        assert self._reader is not None
        view = self._reader(self.run_id)
        self.backend, self.status = view.backend, view.status
        self.fallback_from, self.error = view.fallback_from, view.error
        return self


def check_str(name: str, value: object) -> str | None:
    """None passes; otherwise a non-empty string of at most 200 characters, or InvalidInput."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 200:
        raise InvalidInput(f"{name} must be a non-empty string of at most 200 characters")
    return value


def check_payload(job: str, payload: object) -> Any:
    """The payload after a JSON round trip, i.e. what the job will receive (tuples become lists);
    InvalidPayload if it does not serialize (NaN included)."""
    try:
        return json.loads(json.dumps(payload, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"payload of job {job!r} is not JSON-serializable: {exc}") from exc


def as_request(item: DispatchRequest | Mapping[str, Any] | Any) -> DispatchRequest:
    """A DispatchRequest as is; anything else, a mapping included, is taken as the payload."""
    if isinstance(item, DispatchRequest):
        return item
    return DispatchRequest(item)
