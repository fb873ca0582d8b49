"""OpenFeature provider over the rollouts table.

Reads go through a snapshot of every rollout refreshed at most once per ``ttl`` seconds, so a
dispatch costs no query and a rollback reaches every process within ``ttl``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata

from toolkit.flags.bucketing import in_rollout
from toolkit.store.rollouts import RolloutView

ON = "on"
OFF = "off"
_METADATA = Metadata(name="toolkit-rollouts")


class _Rule(NamedTuple):
    """A rollout compiled once per snapshot: evaluation does no arithmetic but the hash."""

    on: str
    off: str
    basis_points: int
    killed: bool
    allow: frozenset[str]
    deny: frozenset[str]

    @classmethod
    def of(cls, v: RolloutView) -> _Rule:
        return cls(v.on_variant, v.off_variant, v.basis_points, v.killed, v.allow, v.deny)


class RolloutProvider(AbstractProvider):
    def __init__(
        self,
        load: Callable[[], Sequence[RolloutView]],
        *,
        ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._load = load
        self._ttl = ttl
        self._clock = clock
        self._snapshot: Mapping[str, RolloutView] = {}
        self._rules: Mapping[str, _Rule] = {}
        self._expires = float("-inf")
        self._refresh_error: str | None = None
        self._lock = threading.Lock()

    def get_metadata(self) -> Metadata:
        """OpenFeature's provider name, shown in evaluation details and hooks."""
        return _METADATA

    def invalidate(self) -> None:
        """Drop the snapshot: this process's own changes take effect at once."""
        self._expires = float("-inf")

    def snapshot(self) -> Mapping[str, RolloutView]:
        """All rollouts as of at most ``ttl`` ago: one query per ``ttl``, never one per dispatch."""
        if self._clock() >= self._expires:
            self._refresh()
        return self._snapshot

    def _refresh(self) -> None:
        with self._lock:
            now = self._clock()
            if now < self._expires:  # another thread refreshed while we waited
                return
            try:
                views = {r.flag_key: r for r in self._load()}
                self._rules = {key: _Rule.of(v) for key, v in views.items()}
                self._snapshot = views
                self._refresh_error = None
            except Exception as exc:  # noqa: BLE001 - evaluation must never raise
                # Fail safe: without a fresh read nobody may be sent to the new backend.
                self._snapshot, self._rules = {}, {}
                self._refresh_error = f"{type(exc).__name__}: {exc}"
            self._expires = now + self._ttl

    # --- OpenFeature resolution ----------------------------------------------------------

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        """The backend for a key: killed, deny, allow, then the sticky split; never raises."""
        if self._clock() >= self._expires:
            self._refresh()
        if self._refresh_error is not None:
            return _error(
                default_value, ErrorCode.GENERAL, f"rollouts unreadable: {self._refresh_error}"
            )
        rule = self._rules.get(flag_key)
        if rule is None:
            # No rollout row yet: the job has never been rolled out, so it stays on legacy.
            return FlagResolutionDetails(default_value, reason=Reason.DEFAULT, variant=OFF)
        if rule.killed:
            return FlagResolutionDetails(rule.off, reason=Reason.DISABLED, variant=OFF)
        key = evaluation_context.targeting_key if evaluation_context else None
        if not key:
            return _error(default_value, ErrorCode.TARGETING_KEY_MISSING, "targeting key missing")
        if key in rule.deny:
            return FlagResolutionDetails(
                rule.off,
                reason=Reason.TARGETING_MATCH,
                variant=OFF,
                flag_metadata={"rule": "deny"},
            )
        if key in rule.allow:
            return FlagResolutionDetails(
                rule.on,
                reason=Reason.TARGETING_MATCH,
                variant=ON,
                flag_metadata={"rule": "allow"},
            )
        if in_rollout(flag_key, key, rule.basis_points):
            return FlagResolutionDetails(rule.on, reason=Reason.SPLIT, variant=ON)
        return FlagResolutionDetails(rule.off, reason=Reason.SPLIT, variant=OFF)

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        """Rollout flags name a backend: asked for another type, the default with an error."""
        return _type_mismatch(default_value)

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        """Rollout flags name a backend: asked for another type, the default with an error."""
        return _type_mismatch(default_value)

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        """Rollout flags name a backend: asked for another type, the default with an error."""
        return _type_mismatch(default_value)

    def resolve_object_details(
        self, flag_key: str, default_value: Any, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[Any]:
        """Rollout flags name a backend: asked for another type, the default with an error."""
        return _type_mismatch(default_value)


def _error(default: Any, code: ErrorCode, message: str) -> FlagResolutionDetails[Any]:
    return FlagResolutionDetails(
        default, reason=Reason.ERROR, error_code=code, error_message=message
    )


def _type_mismatch(default: Any) -> FlagResolutionDetails[Any]:
    return _error(default, ErrorCode.TYPE_MISMATCH, "rollout flags are strings naming a backend")
