"""The rollout controller: a job's plan, its gates on the current step's runs, and the moves.

* the **current step began** at the last audited change of the job's percentage or state
  (the audit entry commits with the change, so this needs no state of its own);
* **paused** is a column of the rollout row, changed through the versioned store, so a pause
  and a concurrent advance cannot both win;
* **advance** evaluates the gates (:mod:`toolkit.rollout.gates`) on the runs created since the step
  began and moves one step, or refuses; starting from 0 % needs no gates (nothing to compare);
* **rollback** goes to 0 % at once, or one plan step down (``ramp``), and lists what is still
  in flight on the new backend with the commands that clean up after it;
* **watch** evaluates on a timer (clock and sleep injectable) and rolls back after
  ``failures`` consecutive FAIL evaluations; INCONCLUSIVE never rolls back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from toolkit.config import LEGACY
from toolkit.errors import (
    GatesFailed,
    GatesInconclusive,
    InvalidInput,
    RolledBack,
    RolloutKilled,
    RolloutPaused,
    StepComplete,
    VersionConflict,
)
from toolkit.flags.changes import FlagChanges
from toolkit.jobs import JobRegistry
from toolkit.rollout.arms import ArmStats, collect
from toolkit.rollout.gates import (
    Action,
    Evaluation,
    Verdict,
    decide,
    evaluate,
    step_text,
)
from toolkit.rollout.plan import RolloutPlan, plan_for
from toolkit.rollout.queries import Window
from toolkit.rollout.types import (
    Moved,
    PlanState,
    RollbackResult,
    StepEvaluation,
    Tick,
    WatchResult,
)
from toolkit.store.audit import AuditLog, default_actor
from toolkit.store.engine import Database
from toolkit.store.models import RunStatus, utcnow
from toolkit.store.rollouts import RolloutView
from toolkit.store.runs import RunQueries, RunView

log = logging.getLogger("toolkit.rollout")

__all__ = [
    "GatesFailed",
    "GatesInconclusive",
    "Moved",
    "PlanState",
    "RollbackResult",
    "RolledBack",
    "RolloutController",
    "RolloutKilled",
    "RolloutPaused",
    "RolloutPlan",
    "StepComplete",
    "StepEvaluation",
    "Tick",
    "WatchResult",
]

IN_FLIGHT_SHOWN = 20


# --- the controller -------------------------------------------------------------------------------


def _moved(before: Any, after: Any) -> bool:
    """Did this audit entry change the percentage or the state (start a new step)?"""
    if not isinstance(after, dict):
        return False
    if not isinstance(before, dict):
        return True
    return bool(
        before.get("percentage") != after.get("percentage")
        or before.get("state") != after.get("state")
    )


class RolloutController:
    """Receives the parts it uses (the Toolkit wires them: :mod:`toolkit.cli.rollout_plan`).

    ``db`` is only read (one snapshot per evaluation); every change goes through ``flags``,
    which the store audits and which tells this process's flag cache.
    """

    def __init__(
        self,
        *,
        db: Database,
        jobs: JobRegistry,
        flags: FlagChanges,
        runs: RunQueries,
        audit: AuditLog,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self._db = db
        self._jobs = jobs
        self._flags = flags
        self._runs = runs
        self._audit = audit
        self._clock = clock
        self._sleep = sleep or time.sleep  # looked up now: tests and Ctrl-C drills patch it

    # --- reading ---------------------------------------------------------------------------

    def plan(self, job: str) -> RolloutPlan:
        """The job's declared rollout plan, or the default plan."""
        return plan_for(self._jobs.get(job))

    def state(self, job: str) -> PlanState:
        """The job's percentage now, its plan, and when the step began (read from the audit log)."""
        spec = self._jobs.get(job)
        view = self._flags.view(job)
        return PlanState(job, spec.target, plan_for(spec), view, self._step_began(spec.flag_key))

    def _step_began(self, flag_key: str) -> datetime | None:
        """Newest first, through the audit log's keyset pages: list edits and pauses are
        skipped."""
        for entry in self._audit.newest(flag_key, action_prefix="rollout."):
            if _moved(entry.before, entry.after):
                return entry.at
        return None

    def evaluate(self, job: str) -> StepEvaluation:
        """Gates of the current step over the runs created since it began; read-only, figures
        from one snapshot. Always INCONCLUSIVE at 0 %."""
        return self._evaluate(self.state(job))

    def _evaluate(self, state: PlanState) -> StepEvaluation:
        now = self._clock()
        since = min(state.step_began or now, now)
        window = Window(since, now + timedelta(microseconds=1))  # runs created up to now
        arms = collect(self._db, window, [state.job], {state.job: state.plan.target_seconds}).arms
        new = arms.get((state.job, state.backend)) or ArmStats(state.job, state.backend)
        legacy = arms.get((state.job, LEGACY)) or ArmStats(state.job, LEGACY)
        elapsed = (now - since).total_seconds()
        result = evaluate(state.plan, new.counts(), legacy.counts(), elapsed)
        if state.current == 0:  # nothing routed to the new backend: nothing can pass or fail
            result = Evaluation(Verdict.INCONCLUSIVE, result.gates)
        return StepEvaluation(state, window, new, legacy, result)

    # --- moving ----------------------------------------------------------------------------

    def _set(
        self,
        state: PlanState,
        percentage: Decimal,
        *,
        action: str,
        reason: str,
        actor: str | None,
        expected_version: int | None,
    ) -> RolloutView:
        return self._flags.set_percentage(
            state.job,
            percentage,
            reason=reason,
            actor=actor,
            expected_version=expected_version,
            action=action,
        )

    def advance(
        self,
        job: str,
        *,
        force: bool = False,
        reason: str | None = None,
        actor: str | None = None,
    ) -> Moved:
        """To the plan's next step if the gates pass (from 0 % without gates), as an optimistic
        edit. Refuses a target backend this app has not enabled (exit 2), a killed or paused
        rollout; FAIL or INCONCLUSIVE gates refuse too, unless ``force`` (with a reason)."""
        if force and not (reason and reason.strip()):
            raise InvalidInput("--force needs --reason: an override is audited with its why")
        self._flags.check_enabled(self._jobs.get(job))  # before any gate: nothing to move to
        state = self.state(job)
        if state.view.killed:
            raise RolloutKilled(f"rollout of {job!r} is killed: unkill it before advancing")
        if state.view.paused:
            raise RolloutPaused(f"rollout of {job!r} is paused: resume it before advancing")
        target = state.next_step
        if target is None:
            raise StepComplete(
                f"{job!r} is at {step_text(state.current)}, the last step of its plan: "
                "nothing to advance"
            )
        note = f"; {reason.strip()}" if reason and reason.strip() else ""
        if state.current == 0:
            view = self._set(
                state,
                target,
                action="rollout.advance",
                reason=f"start the rollout plan at {step_text(target)}{note}",
                actor=actor,
                expected_version=state.view.version,
            )
            return Moved(state, view, None)
        ev = self._evaluate(state)
        if ev.verdict is Verdict.PASS:
            action, why = "rollout.advance", f"gates passed at {step_text(state.current)}{note}"
        elif force:
            action = "rollout.force_advance"
            why = f"forced past {ev.verdict.value} gates at {step_text(state.current)}{note}"
        elif ev.verdict is Verdict.FAIL:
            failing = "; ".join(f"{g.name}: {g.number}" for g in ev.result.failing())
            raise GatesFailed(f"advance refused, gates failing: {failing}", ev)
        else:
            missing = "; ".join(f"{g.name}: {g.number}" for g in ev.result.inconclusive())
            raise GatesInconclusive(f"advance refused, not enough evidence yet: {missing}", ev)
        view = self._set(
            state,
            target,
            action=action,
            reason=f"{why}: {ev.result.summary()}",
            actor=actor,
            expected_version=state.view.version,
        )
        return Moved(state, view, ev, forced=action == "rollout.force_advance")

    def set_paused(
        self, job: str, paused: bool, *, reason: str, actor: str | None = None
    ) -> RolloutView:
        """Hold or release the plan (audited); routing stays as it is, only advancing stops."""
        return self._flags.set_paused(job, paused, reason=reason, actor=actor)

    def rollback(
        self, job: str, *, reason: str, actor: str | None = None, ramp: bool = False
    ) -> RollbackResult:
        """0 % at once (``ramp``: the previous step), unconditionally: a concurrent change is
        retried on, never reported as a conflict (the store retries writes without an expected
        version). Already at 0 % it changes nothing (``view.changed`` is False). Returns what is
        still in flight on the new backend and the commands to clean it up."""
        state = self.state(job)
        if ramp:
            view = self._set(
                state,
                state.previous_step,
                action="rollout.ramp_down",
                reason=reason,
                actor=actor,
                expected_version=None,
            )
        else:
            view = self._set(  # 0% at once; in-flight runs finish where they are
                state,
                Decimal("0"),
                action="rollout.rollback",
                reason=reason,
                actor=actor,
                expected_version=None,
            )
        return self._aftermath(state, view)

    def _aftermath(self, state: PlanState, view: RolloutView) -> RollbackResult:
        job = state.job
        flight = {
            b: c for (j, b), c in self._runs.in_flight(job).items() if j == job and b != LEGACY
        }
        runs: list[RunView] = []
        for backend in sorted(flight):
            for status in (RunStatus.RUNNING, RunStatus.QUEUED):
                runs += self._runs.list(
                    job=job, backend=backend, status=status.value, limit=IN_FLIGHT_SHOWN
                )
        backends = sorted(flight) or [state.backend]
        follow = [
            *(f"toolkit recover --job {job} --backend {b}" for b in backends),
            *(f"toolkit cleanup orphans --job {job} --backend {b}" for b in backends),
            f"toolkit refund --job {job}",
        ]
        return RollbackResult(job, state.current, view, flight, runs[:IN_FLIGHT_SHOWN], follow)

    # --- watching --------------------------------------------------------------------------

    def watch(
        self,
        job: str,
        *,
        interval: float = 30.0,
        auto_advance: bool = False,
        failures: int = 2,
        max_evaluations: int | None = None,
        actor: str | None = None,
        on_tick: Callable[[Tick], None] | None = None,
    ) -> WatchResult:
        """Evaluate every ``interval`` seconds until a rollback or ``max_evaluations``.

        A paused rollout is watched (and still rolled back on failure) but never advanced.
        Auto-advance never starts a rollout from 0 %: that is a person's decision.
        """
        if not interval > 0:
            raise InvalidInput("--interval must be positive")
        if failures < 1:
            raise InvalidInput("--failures must be at least 1")
        if max_evaluations is not None and max_evaluations < 1:
            raise InvalidInput("--max-evaluations must be at least 1")
        self.plan(job)  # an unknown job or a bad plan fails before the first evaluation
        who = actor or f"watch:{default_actor()}"
        result = WatchResult()
        streak = 0
        while True:
            state = self.state(job)
            ev = self._evaluate(state)
            result.evaluations += 1
            result.last = ev
            nxt = state.next_step
            can_advance = (
                auto_advance
                and nxt is not None
                and state.current > 0
                and not state.view.paused
                and not state.view.killed
            )
            action, streak = decide(ev.verdict, streak, failures=failures, can_advance=can_advance)
            advanced_to = None
            if action is Action.ROLLBACK:
                failing = "; ".join(f"{g.name}: {g.number}" for g in ev.result.failing())
                why = f"watch: {streak} consecutive failing evaluations: {failing}"
                log.error("rolling back %s from %s: %s", job, step_text(state.current), why)
                result.rollback = self.rollback(job, reason=why, actor=who)
            elif action is Action.ADVANCE and nxt is not None:
                try:
                    self._set(
                        state,
                        nxt,
                        action="rollout.advance",
                        reason=f"watch: gates passed at {step_text(state.current)}: "
                        f"{ev.result.summary()}",
                        actor=who,
                        expected_version=state.view.version,
                    )
                except VersionConflict:
                    log.warning("%s changed during the evaluation; evaluating again", job)
                else:
                    advanced_to = nxt
                    result.advanced.append(nxt)
                    log.info(
                        "advanced %s from %s to %s", job, step_text(state.current), step_text(nxt)
                    )
            if on_tick is not None:
                on_tick(Tick(result.evaluations, ev, action, streak, advanced_to))
            if result.rollback is not None:
                return result
            if max_evaluations is not None and result.evaluations >= max_evaluations:
                return result
            self._sleep(interval)
