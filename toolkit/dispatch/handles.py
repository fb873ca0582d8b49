"""What dispatch hands back and takes in: routes, handles, requests, and their validation."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from toolkit.errors import ConfigError, InvalidInput, InvalidPayload
from toolkit.jobs import SubmittedRun

__all__ = [
    "DispatchRequest",
    "PayloadLimits",
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


#: Defaults for :class:`PayloadLimits`: a run's payload is a few fields, not a file upload.
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
DEFAULT_MAX_PAYLOAD_DEPTH = 64
#: Deeper than this the JSON encoder (and the store's JSON column) would hit Python's recursion
#: limit, so a larger configured depth could not be honoured.
MAX_PAYLOAD_DEPTH_CEILING = 500


@dataclass(frozen=True)
class PayloadLimits:
    """How large (bytes of UTF-8 JSON) and how deeply nested (containers inside containers) a
    payload may be: every run's payload is stored, sent to its backend and read back on every
    attempt, so an oversized one costs on every path and a very deep one crashes the encoder."""

    max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_depth: int = DEFAULT_MAX_PAYLOAD_DEPTH

    def __post_init__(self) -> None:
        if not _positive_int(self.max_bytes):
            raise ConfigError("max_payload_bytes must be a positive integer")
        if not _positive_int(self.max_depth) or self.max_depth > MAX_PAYLOAD_DEPTH_CEILING:
            raise ConfigError(
                f"max_payload_depth must be an integer from 1 to {MAX_PAYLOAD_DEPTH_CEILING}"
            )


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_payload(job: str, payload: object, limits: PayloadLimits = PayloadLimits()) -> Any:
    """The payload after a JSON round trip, i.e. what the job will receive (tuples become lists);
    InvalidPayload if it does not serialize (NaN included) or exceeds ``limits``. Called before
    any write, so a refused payload leaves no run and no debit."""
    try:
        encoded = json.dumps(payload, allow_nan=False, ensure_ascii=False)
    except RecursionError as exc:  # the C encoder's own limit, far past any allowed depth
        raise InvalidPayload(_too_deep(job, limits)) from exc
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"payload of job {job!r} is not JSON-serializable: {exc}") from exc
    size = len(encoded) if encoded.isascii() else len(encoded.encode())
    if size > limits.max_bytes:
        raise InvalidPayload(
            f"payload of job {job!r} is {size} bytes as JSON, over the limit of "
            f"{limits.max_bytes} (max_payload_bytes)"
        )
    value = json.loads(encoded)
    # Fewer brackets than the limit (strings' included) cannot nest deeper: skip the walk.
    if encoded.count("[") + encoded.count("{") > limits.max_depth and (
        _depth(value) > limits.max_depth
    ):
        raise InvalidPayload(_too_deep(job, limits))
    return value


def _depth(value: object) -> int:
    """How many containers deep a decoded JSON value nests, iteratively (no recursion limit)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend((child, depth) for child in node if isinstance(child, (dict, list)))
    return deepest


def _too_deep(job: str, limits: PayloadLimits) -> str:
    return f"payload of job {job!r} nests deeper than {limits.max_depth} levels (max_payload_depth)"


def as_request(item: DispatchRequest | Mapping[str, Any] | Any) -> DispatchRequest:
    """A DispatchRequest as is; anything else, a mapping included, is taken as the payload."""
    if isinstance(item, DispatchRequest):
        return item
    return DispatchRequest(item)
