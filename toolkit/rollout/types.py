"""What the rollout controller returns and raises: plan state, evaluations, moves, rollbacks,
watch ticks; and its refusals, each a ToolkitError with a stable code (exit 1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from toolkit.rollout.arms import ArmStats
from toolkit.rollout.gates import Action, Evaluation, Verdict
from toolkit.rollout.plan import RolloutPlan
from toolkit.rollout.queries import Window
from toolkit.store.rollouts import RolloutView
from toolkit.store.runs import RunView

# --- errors: the operation was refused (exit 1); bad input stays InvalidInput (exit 2) -------


# --- views ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanState:
    job: str
    backend: str
    plan: RolloutPlan
    view: RolloutView
    step_began: datetime | None

    @property
    def current(self) -> Decimal:
        """The percentage routed to the new backend now, as stored."""
        return self.view.percentage

    @property
    def next_step(self) -> Decimal | None:
        """The plan's next step above the current percentage; None at (or past) the last one."""
        return self.plan.next_step(self.current)

    @property
    def previous_step(self) -> Decimal:
        """The plan's step below the current one (0 below the first): where a ramp-down goes."""
        return self.plan.previous_step(self.current)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, percentages as floats and the plan included."""
        nxt = self.next_step
        return {
            "job": self.job,
            "backend": self.backend,
            "percentage": float(self.current),
            "next_step": float(nxt) if nxt is not None else None,
            "paused": self.view.paused,
            "killed": self.view.killed,
            "version": self.view.version,
            "step_began": self.step_began.isoformat() if self.step_began else None,
            "plan": self.plan.as_dict(),
        }


@dataclass(frozen=True)
class StepEvaluation:
    state: PlanState
    window: Window
    new: ArmStats
    legacy: ArmStats
    result: Evaluation

    @property
    def verdict(self) -> Verdict:
        """The combined verdict of the step's gates."""
        return self.result.verdict

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the plan state, the window and the gates, each gate's figures as raw
        numbers (the table renders them; a script should not parse display text)."""
        return {
            **self.state.as_dict(),
            "window": self.window.as_dict(),
            "verdict": self.verdict.value,
            "gates": [
                {
                    "gate": g.name,
                    "rule": g.key,
                    "verdict": g.verdict.value,
                    **{k: v for k, v in g.detail.items() if k != "text"},
                }
                for g in self.result.gates
            ],
        }


@dataclass(frozen=True)
class Moved:
    """An advance (or its start) that happened."""

    before: PlanState
    view: RolloutView
    evaluation: StepEvaluation | None
    forced: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: from and to, whether forced, the new version and the evaluation."""
        return {
            "job": self.before.job,
            "from": float(self.before.current),
            "to": float(self.view.percentage),
            "forced": self.forced,
            "version": self.view.version,
            "evaluation": self.evaluation.as_dict() if self.evaluation else None,
        }


@dataclass(frozen=True)
class RollbackResult:
    job: str
    before: Decimal
    view: RolloutView
    in_flight: dict[str, dict[str, int]]  # backend -> {"QUEUED": n, "RUNNING": n}
    runs: list[RunView]
    follow_ups: list[str]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the in-flight counts, a few of those runs and the follow-up commands."""
        return {
            "job": self.job,
            "from": float(self.before),
            "to": float(self.view.percentage),
            "version": self.view.version,
            "changed": self.view.changed,
            "rollout": self.view.as_dict(),
            "in_flight": self.in_flight,
            "runs": [
                {
                    "id": str(r.id),
                    "backend": r.backend,
                    "status": r.status,
                    "created_at": r.created_at,
                }
                for r in self.runs
            ],
            "follow_ups": self.follow_ups,
        }


@dataclass(frozen=True)
class Tick:
    """One watch evaluation and what the watch did about it."""

    number: int
    evaluation: StepEvaluation
    action: Action
    streak: int
    advanced_to: Decimal | None = None


@dataclass
class WatchResult:
    evaluations: int = 0
    advanced: list[Decimal] = field(default_factory=list)
    rollback: RollbackResult | None = None
    last: StepEvaluation | None = None
