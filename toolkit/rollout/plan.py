"""Rollout plans: the steps a job's rollout takes and the thresholds its gates use."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import pairwise
from typing import Any

from toolkit.config import parse_duration
from toolkit.errors import ConfigError, InvalidInput
from toolkit.jobs import JobSpec
from toolkit.rollout.stats import normal_quantile
from toolkit.store.rollouts import parse_percentage


def _steps(values: Sequence[object]) -> tuple[Decimal, ...]:
    try:
        steps = tuple(parse_percentage(v) for v in values)
    except InvalidInput as exc:
        raise ConfigError(f"invalid rollout step: {exc}") from exc
    if not steps:
        raise ConfigError("a rollout plan needs at least one step")
    if any(s <= 0 for s in steps) or any(b <= a for a, b in pairwise(steps)):
        raise ConfigError(
            f"rollout steps must increase strictly and be above 0%: {[float(s) for s in steps]}"
        )
    return steps


@dataclass(frozen=True)
class RolloutPlan:
    """How a job's rollout advances; declare it with ``@tk.job(..., rollout=RolloutPlan(...))``.

    ``min_soak`` and ``latency_target`` take seconds or durations ("30m", "10s"); ``margin`` is
    a fraction (0.01 = one percentage point).
    """

    steps: Sequence[object] = (10, 50, 100)
    min_runs: int = 200
    min_soak: str | float = "30m"
    margin: float = 0.01
    latency_target: str | float = "10s"
    fail_confidence: float = 0.999
    pass_confidence: float = 0.80
    # derived, normalised in __post_init__
    step_values: tuple[Decimal, ...] = field(init=False, repr=False)
    soak_seconds: float = field(init=False, repr=False)
    target_seconds: float = field(init=False, repr=False)
    z_fail: float = field(init=False, repr=False)
    z_pass: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.min_runs, bool) or not isinstance(self.min_runs, int):
            raise ConfigError("rollout min_runs must be an integer")
        if self.min_runs < 1:
            raise ConfigError("rollout min_runs must be at least 1")
        if not 0 <= self.margin < 0.5:
            raise ConfigError("rollout margin must be a fraction from 0 to 0.5 (0.01 = 1 pp)")
        for name in ("fail_confidence", "pass_confidence"):
            if not 0.5 <= getattr(self, name) < 1:
                raise ConfigError(f"rollout {name} must be at least 0.5 and below 1")
        try:
            soak = (
                0.0 if self.min_soak in (0, "0") else parse_duration(self.min_soak, what="min_soak")
            )
            target = parse_duration(self.latency_target, what="latency_target")
        except InvalidInput as exc:
            raise ConfigError(f"rollout plan: {exc}") from exc
        values: dict[str, Any] = {
            "step_values": _steps(list(self.steps)),
            "soak_seconds": soak,
            "target_seconds": target,
            "z_fail": normal_quantile(self.fail_confidence),
            "z_pass": normal_quantile(self.pass_confidence),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def next_step(self, current: Decimal) -> Decimal | None:
        """The first step above ``current``; None when the plan has none left."""
        return next((s for s in self.step_values if s > current), None)

    def previous_step(self, current: Decimal) -> Decimal:
        """The largest step below ``current``, or 0."""
        below = [s for s in self.step_values if s < current]
        return below[-1] if below else Decimal("0.00")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the normalised steps and thresholds, durations in seconds."""
        return {
            "steps": [float(s) for s in self.step_values],
            "min_runs": self.min_runs,
            "min_soak_seconds": self.soak_seconds,
            "margin": self.margin,
            "latency_target_seconds": self.target_seconds,
            "fail_confidence": self.fail_confidence,
            "pass_confidence": self.pass_confidence,
        }


def plan_for(spec: JobSpec) -> RolloutPlan:
    """The job's declared plan (``rollout=RolloutPlan(...)`` or a dict of its fields), or the
    default plan."""
    declared = spec.options.get("rollout")
    if declared is None:
        return RolloutPlan()
    if isinstance(declared, RolloutPlan):
        return declared
    if isinstance(declared, dict):
        try:
            return RolloutPlan(**declared)
        except TypeError as exc:
            raise ConfigError(f"job {spec.name!r}: invalid rollout plan: {exc}") from exc
    raise ConfigError(
        f"job {spec.name!r}: rollout must be a RolloutPlan, not {type(declared).__name__}"
    )
