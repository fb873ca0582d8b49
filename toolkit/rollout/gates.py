"""Rollout plans and the gate logic: pure functions over per-arm counts, no database.

A gate answers PASS (evidence that the new backend is good enough), FAIL (evidence that it is
worse) or INCONCLUSIVE (not enough evidence either way). The success-rate gate is two one-sided
tests around a margin m on the difference d = p_new - p_legacy, with Newcombe's interval:

* FAIL when the upper bound of d at one-sided confidence ``fail_confidence`` (99.9 %) is below
  -m: the new backend is worse than legacy by more than the margin, beyond reasonable doubt.
* PASS when the lower bound of d at one-sided confidence ``pass_confidence`` (80 %) is above -m:
  non-inferiority within the margin is shown, with enough confidence to take the next step
  (the next step is evaluated again, on its own runs).
* otherwise INCONCLUSIVE: keep collecting.

``decide`` turns a sequence of evaluations into actions: roll back only after ``failures``
consecutive FAIL evaluations, advance on PASS, hold on INCONCLUSIVE. The simulation test
(tests/unit/test_gates_simulation.py) measures the false-rollback rate and the power of this
design on synthetic rollouts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import pairwise
from typing import Any

from toolkit.config import parse_duration
from toolkit.errors import ConfigError, InvalidInput
from toolkit.jobs import JobSpec
from toolkit.rollout.stats import newcombe, normal_quantile, wilson
from toolkit.store.rollouts import parse_percentage

LATENCY_QUANTILE = 0.95


class Verdict(enum.StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """Any FAIL fails; otherwise any INCONCLUSIVE is inconclusive; otherwise PASS."""
    seen = set(verdicts)
    if Verdict.FAIL in seen:
        return Verdict.FAIL
    if Verdict.INCONCLUSIVE in seen:
        return Verdict.INCONCLUSIVE
    return Verdict.PASS


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
        return next((s for s in self.step_values if s > current), None)

    def previous_step(self, current: Decimal) -> Decimal:
        """The largest step below ``current``, or 0."""
        below = [s for s in self.step_values if s < current]
        return below[-1] if below else Decimal("0.00")

    def as_dict(self) -> dict[str, Any]:
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


@dataclass(frozen=True)
class ArmCounts:
    """What the gates need from one arm (one backend of one job) over the evaluation window."""

    finished: int = 0
    completed: int = 0
    started: int = 0
    queue_p95: float | None = None
    queue_over_target: int = 0
    credit_errors: int = 0


@dataclass(frozen=True)
class Gate:
    """One gate's verdict and the number behind it (``detail``; ``number`` renders it)."""

    name: str
    verdict: Verdict
    detail: dict[str, Any] = field(default_factory=dict)
    render: Callable[[dict[str, Any]], str] | None = field(default=None, compare=False)

    @property
    def number(self) -> str:
        """Formatted on demand: the watch loop and the simulation evaluate many times."""
        return self.render(self.detail) if self.render else str(self.detail.get("text", ""))

    def as_dict(self) -> dict[str, Any]:
        return {
            "gate": self.name,
            "verdict": self.verdict.value,
            "number": self.number,
            **{k: v for k, v in self.detail.items() if k != "text"},
        }


@dataclass(frozen=True)
class Evaluation:
    verdict: Verdict
    gates: tuple[Gate, ...]

    def failing(self) -> list[Gate]:
        return [g for g in self.gates if g.verdict is Verdict.FAIL]

    def inconclusive(self) -> list[Gate]:
        return [g for g in self.gates if g.verdict is Verdict.INCONCLUSIVE]

    def summary(self) -> str:
        return "; ".join(f"{g.name} {g.verdict.value.lower()}: {g.number}" for g in self.gates)

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "gates": [g.as_dict() for g in self.gates]}


def step_text(value: Decimal) -> str:
    """A rollout percentage as people write it: 10%, 12.5%."""
    return f"{float(value):g}%"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def pp(value: float) -> str:
    return f"{value * 100:+.1f} pp"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:.0f}s"


def _soak_text(d: dict[str, Any]) -> str:
    return f"{_duration(max(d['elapsed_seconds'], 0.0))} of {_duration(d['min_soak_seconds'])}"


def soak_gate(plan: RolloutPlan, elapsed: float) -> Gate:
    verdict = Verdict.PASS if elapsed >= plan.soak_seconds else Verdict.INCONCLUSIVE
    detail = {"elapsed_seconds": elapsed, "min_soak_seconds": plan.soak_seconds}
    return Gate("soak time", verdict, detail, _soak_text)


def _runs_text(d: dict[str, Any]) -> str:
    return f"new {d['new']}, legacy {d['legacy']} (min {d['min_runs']} each)"


def runs_gate(plan: RolloutPlan, new: ArmCounts, legacy: ArmCounts) -> Gate:
    enough = new.finished >= plan.min_runs and legacy.finished >= plan.min_runs
    detail = {"new": new.finished, "legacy": legacy.finished, "min_runs": plan.min_runs}
    return Gate(
        "runs per arm", Verdict.PASS if enough else Verdict.INCONCLUSIVE, detail, _runs_text
    )


def _rate(arm: ArmCounts) -> float | None:
    return arm.completed / arm.finished if arm.finished else None


def _success_text(d: dict[str, Any]) -> str:
    rates = f"new {pct(d['new_rate'])} vs legacy {pct(d['legacy_rate'])}"
    if d.get("difference") is None:
        return f"{rates}: too few runs (min {d['min_runs']} per arm)"
    return (
        f"{rates}: {pp(d['difference'])} (bounds {pp(d['lower_bound'])} / "
        f"{pp(d['upper_bound'])}, margin -{d['margin'] * 100:g} pp)"
    )


def success_gate(plan: RolloutPlan, new: ArmCounts, legacy: ArmCounts) -> Gate:
    """Two one-sided tests of the success-rate difference around the margin (see module doc)."""
    detail: dict[str, Any] = {
        "new_rate": _rate(new),
        "legacy_rate": _rate(legacy),
        "min_runs": plan.min_runs,
    }
    if new.finished < plan.min_runs or legacy.finished < plan.min_runs:
        return Gate("success rate", Verdict.INCONCLUSIVE, detail, _success_text)
    harm = newcombe(new.completed, new.finished, legacy.completed, legacy.finished, plan.z_fail)
    shown = newcombe(new.completed, new.finished, legacy.completed, legacy.finished, plan.z_pass)
    if harm is None or shown is None:  # unreachable with min_runs >= 1; keeps the types exact
        return Gate("success rate", Verdict.INCONCLUSIVE, detail, _success_text)
    if harm.high < -plan.margin:
        verdict = Verdict.FAIL
    elif shown.low > -plan.margin:
        verdict = Verdict.PASS
    else:
        verdict = Verdict.INCONCLUSIVE
    detail.update(
        difference=harm.estimate, lower_bound=shown.low, upper_bound=harm.high, margin=plan.margin
    )
    return Gate("success rate", verdict, detail, _success_text)


def _latency_text(d: dict[str, Any]) -> str:
    target = f"target < {d['target_seconds']:g} s"
    if d.get("p95_seconds") is None or d.get("over_share") is None:
        return f"{d['started']} started runs, too few (min {d['min_runs']}); {target}"
    return f"{d['p95_seconds']:.2f} s ({pct(d['over_share'])} of runs over); {target}"


def latency_gate(plan: RolloutPlan, new: ArmCounts) -> Gate:
    """p95 queue-to-start under target; FAIL only when significantly more than 5 % exceed it."""
    detail: dict[str, Any] = {
        "p95_seconds": new.queue_p95,
        "started": new.started,
        "over_target": new.queue_over_target,
        "target_seconds": plan.target_seconds,
        "min_runs": plan.min_runs,
    }
    over = wilson(new.queue_over_target, new.started, plan.z_fail)
    if new.started < plan.min_runs or new.queue_p95 is None or over is None:
        return Gate("queue-to-start p95", Verdict.INCONCLUSIVE, detail, _latency_text)
    detail["over_share"] = over.estimate
    if new.queue_p95 < plan.target_seconds:
        verdict = Verdict.PASS
    elif over.low > 1 - LATENCY_QUANTILE:
        verdict = Verdict.FAIL
    else:
        verdict = Verdict.INCONCLUSIVE
    return Gate("queue-to-start p95", verdict, detail, _latency_text)


def _credit_text(d: dict[str, Any]) -> str:
    return f"{d['credit_errors']} on the new backend"


def credit_gate(new: ArmCounts) -> Gate:
    """Zero tolerance: a credit error is a bug, not noise, so it fails even on little data."""
    verdict = Verdict.PASS if new.credit_errors == 0 else Verdict.FAIL
    return Gate("credit errors", verdict, {"credit_errors": new.credit_errors}, _credit_text)


def evaluate(plan: RolloutPlan, new: ArmCounts, legacy: ArmCounts, elapsed: float) -> Evaluation:
    gates = (
        soak_gate(plan, elapsed),
        runs_gate(plan, new, legacy),
        success_gate(plan, new, legacy),
        latency_gate(plan, new),
        credit_gate(new),
    )
    return Evaluation(combine(g.verdict for g in gates), gates)


class Action(enum.StrEnum):
    HOLD = "hold"
    ADVANCE = "advance"
    ROLLBACK = "rollback"


def decide(
    verdict: Verdict, streak: int, *, failures: int, can_advance: bool
) -> tuple[Action, int]:
    """One watch tick: (action, new streak of consecutive FAIL evaluations).

    INCONCLUSIVE and PASS break the streak; INCONCLUSIVE never rolls back.
    """
    if verdict is Verdict.FAIL:
        streak += 1
        return (Action.ROLLBACK, streak) if streak >= failures else (Action.HOLD, streak)
    if verdict is Verdict.PASS and can_advance:
        return Action.ADVANCE, 0
    return Action.HOLD, 0
