"""What dispatch hands back and takes in: routes, handles, requests, and their validation."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from toolkit.backends.base import SubmittedRun
from toolkit.errors import InvalidInput, InvalidPayload
from toolkit.store.runs import RunQueries


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
    _runs: RunQueries | None = field(default=None, repr=False, compare=False)

    def refresh(self) -> RunHandle:
        """Re-read backend and status from the run record."""
        assert self._runs is not None
        view = self._runs.get(self.run_id)
        self.backend, self.status = view.backend, view.status
        self.fallback_from, self.error = view.fallback_from, view.error
        return self


def check_str(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 200:
        raise InvalidInput(f"{name} must be a non-empty string of at most 200 characters")
    return value


def check_payload(job: str, payload: object) -> Any:
    try:
        return json.loads(json.dumps(payload, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"payload of job {job!r} is not JSON-serializable: {exc}") from exc


def as_request(item: DispatchRequest | Mapping[str, Any] | Any) -> DispatchRequest:
    if isinstance(item, DispatchRequest):
        return item
    return DispatchRequest(item)
