"""The gate logic, every gate defined once: pure functions over per-arm counts, no database.

A gate answers PASS (evidence that the new backend is good enough), FAIL (evidence that it is
worse) or INCONCLUSIVE (not enough evidence either way). The success-rate gate is two one-sided
tests around a margin m on the difference d = p_new - p_legacy, with Newcombe's interval:

* FAIL when the upper bound of d at one-sided confidence ``fail_confidence`` (99.9 %) is below
  -m: the new backend is worse than legacy by more than the margin, beyond reasonable doubt.
* PASS when the lower bound of d at one-sided confidence ``pass_confidence`` (80 %) is above -m:
  non-inferiority within the margin is shown, with enough confidence to take the next step
  (the next step is evaluated again, on its own runs).
* otherwise INCONCLUSIVE: keep collecting.

Every gate is defined here once (:data:`RULES`): ``rollout advance`` evaluates :data:`ADVANCE`,
the report's scorecard presents a selection of the same rules under the seed's metric names, so
the two cannot disagree on the same runs.

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
from typing import Any

from toolkit.rollout.plan import RolloutPlan
from toolkit.rollout.stats import newcombe, wilson

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


@dataclass(frozen=True)
class ArmCounts:
    """What the gates need from one arm (one backend of one job) over the evaluation window."""

    finished: int = 0
    completed: int = 0
    started: int = 0
    queue_p95: float | None = None
    queue_over_target: int = 0
    credit_errors: int = 0
    timeouts: int = 0
    missing_heartbeats: int = 0


@dataclass(frozen=True)
class Gate:
    """One gate's verdict and the number behind it (``detail``; ``number`` renders it)."""

    name: str
    verdict: Verdict
    detail: dict[str, Any] = field(default_factory=dict)
    render: Callable[[dict[str, Any]], str] | None = field(default=None, compare=False)
    #: The rule that decided the verdict (a key of :data:`RULES`); kept when presented renamed.
    key: str = ""

    @property
    def number(self) -> str:
        """Formatted on demand: the watch loop and the simulation evaluate many times."""
        return self.render(self.detail) if self.render else str(self.detail.get("text", ""))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: name, verdict, the rendered number and the raw detail (less ``text``)."""
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
        """The gates that said FAIL, in order: what a refused advance names."""
        return [g for g in self.gates if g.verdict is Verdict.FAIL]

    def inconclusive(self) -> list[Gate]:
        """The gates still short of evidence, in order: what to wait for."""
        return [g for g in self.gates if g.verdict is Verdict.INCONCLUSIVE]

    def summary(self) -> str:
        """Every gate's verdict and number on one line: the audit reason of a move quotes it."""
        return "; ".join(f"{g.name} {g.verdict.value.lower()}: {g.number}" for g in self.gates)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the combined verdict and each gate's."""
        return {"verdict": self.verdict.value, "gates": [g.as_dict() for g in self.gates]}


def step_text(value: Decimal) -> str:
    """A rollout percentage as people write it: 10%, 12.5%."""
    return f"{float(value):g}%"


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal; "-" for None (no runs)."""
    return "-" if value is None else f"{value * 100:.1f}%"


def pp(value: float) -> str:
    """A difference of fractions in signed percentage points, e.g. "-1.2 pp"."""
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
    """PASS once the step has been live ``min_soak`` seconds; never FAIL, time only helps."""
    verdict = Verdict.PASS if elapsed >= plan.soak_seconds else Verdict.INCONCLUSIVE
    detail = {"elapsed_seconds": elapsed, "min_soak_seconds": plan.soak_seconds}
    return Gate("soak time", verdict, detail, _soak_text, "soak")


def _runs_text(d: dict[str, Any]) -> str:
    return f"new {d['new']}, legacy {d['legacy']} (min {d['min_runs']} each)"


def runs_gate(plan: RolloutPlan, new: ArmCounts, legacy: ArmCounts) -> Gate:
    """PASS once both arms finished ``min_runs`` runs; never FAIL, only INCONCLUSIVE before."""
    enough = new.finished >= plan.min_runs and legacy.finished >= plan.min_runs
    detail = {"new": new.finished, "legacy": legacy.finished, "min_runs": plan.min_runs}
    verdict = Verdict.PASS if enough else Verdict.INCONCLUSIVE
    return Gate("runs per arm", verdict, detail, _runs_text, "runs")


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
        return Gate("success rate", Verdict.INCONCLUSIVE, detail, _success_text, "success")
    harm = newcombe(new.completed, new.finished, legacy.completed, legacy.finished, plan.z_fail)
    shown = newcombe(new.completed, new.finished, legacy.completed, legacy.finished, plan.z_pass)
    if harm is None or shown is None:  # unreachable with min_runs >= 1; keeps the types exact
        return Gate("success rate", Verdict.INCONCLUSIVE, detail, _success_text, "success")
    if harm.high < -plan.margin:
        verdict = Verdict.FAIL
    elif shown.low > -plan.margin:
        verdict = Verdict.PASS
    else:
        verdict = Verdict.INCONCLUSIVE
    detail.update(
        difference=harm.estimate, lower_bound=shown.low, upper_bound=harm.high, margin=plan.margin
    )
    return Gate("success rate", verdict, detail, _success_text, "success")


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
        return Gate("queue-to-start p95", Verdict.INCONCLUSIVE, detail, _latency_text, "latency")
    detail["over_share"] = over.estimate
    if new.queue_p95 < plan.target_seconds:
        verdict = Verdict.PASS
    elif over.low > 1 - LATENCY_QUANTILE:
        verdict = Verdict.FAIL
    else:
        verdict = Verdict.INCONCLUSIVE
    return Gate("queue-to-start p95", verdict, detail, _latency_text, "latency")


def _credit_text(d: dict[str, Any]) -> str:
    return f"{d['credit_errors']} on the new backend"


def credit_gate(new: ArmCounts) -> Gate:
    """Zero tolerance: a credit error is a bug, not noise, so it fails even on little data.

    The product's rule ("zero credit errors"): a rate no higher than legacy's is no excuse,
    since legacy's errors are the ones the migration exists to remove.
    """
    verdict = Verdict.PASS if new.credit_errors == 0 else Verdict.FAIL
    detail = {"credit_errors": new.credit_errors}
    return Gate("credit errors", verdict, detail, _credit_text, "credit")


def _timeouts_text(d: dict[str, Any]) -> str:
    return f"{d['timeouts']} of {d['finished']} finished"


def timeouts_gate(new: ArmCounts) -> Gate:
    """No run failed by a time limit; nothing finished proves nothing."""
    verdict = (
        Verdict.INCONCLUSIVE
        if new.finished == 0
        else (Verdict.PASS if new.timeouts == 0 else Verdict.FAIL)
    )
    detail = {"timeouts": new.timeouts, "finished": new.finished}
    return Gate("timeouts", verdict, detail, _timeouts_text, "timeouts")


def _heartbeats_text(d: dict[str, Any]) -> str:
    return f"{d['missing']} of {d['started']} started runs without a heartbeat"


def heartbeats_gate(new: ArmCounts) -> Gate:
    """Every started run sent a heartbeat (else a stalled run would go unnoticed)."""
    verdict = (
        Verdict.INCONCLUSIVE
        if new.started == 0
        else (Verdict.PASS if new.missing_heartbeats == 0 else Verdict.FAIL)
    )
    detail = {"missing": new.missing_heartbeats, "started": new.started}
    return Gate("heartbeats", verdict, detail, _heartbeats_text, "heartbeats")


Rule = Callable[[RolloutPlan, ArmCounts, ArmCounts, float], Gate]

#: Every gate, once: (plan, new arm, legacy arm, seconds on the step) -> verdict.
RULES: dict[str, Rule] = {
    "soak": lambda plan, new, legacy, elapsed: soak_gate(plan, elapsed),
    "runs": lambda plan, new, legacy, elapsed: runs_gate(plan, new, legacy),
    "success": lambda plan, new, legacy, elapsed: success_gate(plan, new, legacy),
    "latency": lambda plan, new, legacy, elapsed: latency_gate(plan, new),
    "credit": lambda plan, new, legacy, elapsed: credit_gate(new),
    "timeouts": lambda plan, new, legacy, elapsed: timeouts_gate(new),
    "heartbeats": lambda plan, new, legacy, elapsed: heartbeats_gate(new),
}
#: What ``rollout advance`` (and ``watch``) require.
ADVANCE = ("soak", "runs", "success", "latency", "credit")


def gates(
    keys: Sequence[str], plan: RolloutPlan, new: ArmCounts, legacy: ArmCounts, elapsed: float
) -> tuple[Gate, ...]:
    """The gates ``keys`` (of :data:`RULES`) on one pair of arms, in that order."""
    return tuple(RULES[k](plan, new, legacy, elapsed) for k in keys)


def evaluate(plan: RolloutPlan, new: ArmCounts, legacy: ArmCounts, elapsed: float) -> Evaluation:
    """The advance gates combined: what ``rollout advance`` decides on."""
    found = gates(ADVANCE, plan, new, legacy, elapsed)
    return Evaluation(combine(g.verdict for g in found), found)


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
