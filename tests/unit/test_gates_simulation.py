"""Statistical quality of the gate design, by simulation over the pure gate logic (no database).

Each simulated rollout is what ``toolkit rollout watch --auto-advance`` does with the default
plan (steps 10 → 50 → 100 %, 200 runs per arm, 30 min soak, 1 pp margin) and the default watch
(an evaluation every 30 s, rollback after 2 consecutive FAIL evaluations): every 30 s, 50 runs
arrive (6,000 runs an hour), each routed to the new backend with the step's probability and
failing with its arm's failure rate (legacy: 5 %); the gates see the runs since the step began.

Requirements (issue 6): identical backends roll back in under 1 % of 500 rollouts; a new backend
whose failure rate is 5 percentage points higher is rolled back before leaving the 10 % step in
at least 95 % of them. Seeded, so the figures are reproducible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from toolkit.rollout.gates import Action, ArmCounts, Verdict, decide, evaluate
from toolkit.rollout.plan import RolloutPlan

ROLLOUTS = 500
RUNS_PER_EVALUATION = 50
INTERVAL = 30.0
FAILURES = 2
LEGACY_FAILURE_RATE = 0.05
MAX_EVALUATIONS = 5_000  # per rollout; a rollout still undecided then counts as "stuck"


def binomial(rng: random.Random, n: int, p: float) -> int:
    """Inversion sampling: cheap for the small n * p of one evaluation interval."""
    if n == 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    q = 1.0 - p
    prob = q**n
    cdf = prob
    u = rng.random()
    k = 0
    while u > cdf and k < n:
        prob *= (n - k) / (k + 1) * p / q
        k += 1
        cdf += prob
    return k


@dataclass(frozen=True)
class Outcome:
    result: str  # "rollback", "complete" or "stuck"
    step_index: int  # the step the rollout was on when it ended
    evaluations: int


def simulate(
    rng: random.Random, plan: RolloutPlan, legacy_failure: float, new_failure: float
) -> Outcome:
    step_index = 0
    evaluations = 0
    while True:
        share = float(plan.step_values[step_index]) / 100
        has_next = step_index + 1 < len(plan.step_values)
        new_runs = new_ok = legacy_runs = legacy_ok = 0
        streak = 0
        ticks = 0
        while True:
            ticks += 1
            evaluations += 1
            arrived_new = binomial(rng, RUNS_PER_EVALUATION, share)
            arrived_legacy = RUNS_PER_EVALUATION - arrived_new
            new_runs += arrived_new
            new_ok += arrived_new - binomial(rng, arrived_new, new_failure)
            legacy_runs += arrived_legacy
            legacy_ok += arrived_legacy - binomial(rng, arrived_legacy, legacy_failure)
            result = evaluate(
                plan,
                ArmCounts(finished=new_runs, completed=new_ok, started=new_runs, queue_p95=1.0),
                ArmCounts(finished=legacy_runs, completed=legacy_ok, started=legacy_runs),
                elapsed=ticks * INTERVAL,
            )
            action, streak = decide(result.verdict, streak, failures=FAILURES, can_advance=has_next)
            if action is Action.ROLLBACK:
                return Outcome("rollback", step_index, evaluations)
            if action is Action.ADVANCE:
                step_index += 1
                break
            if not has_next:  # at 100 %: the rollout is complete
                return Outcome("complete", step_index, evaluations)
            if evaluations >= MAX_EVALUATIONS:
                return Outcome("stuck", step_index, evaluations)


def run_many(new_failure: float, seed: int) -> list[Outcome]:
    rng = random.Random(seed)
    plan = RolloutPlan()
    return [simulate(rng, plan, LEGACY_FAILURE_RATE, new_failure) for _ in range(ROLLOUTS)]


def test_identical_backends_roll_back_in_under_one_percent() -> None:
    outcomes = run_many(LEGACY_FAILURE_RATE, seed=20261130)
    rollbacks = sum(o.result == "rollback" for o in outcomes)
    complete = sum(o.result == "complete" for o in outcomes)
    figures = f"{rollbacks}/{ROLLOUTS} rolled back, {complete}/{ROLLOUTS} reached 100%"
    assert rollbacks < ROLLOUTS * 0.01, figures
    # ...and not by never deciding: good backends do get through the plan.
    assert complete >= ROLLOUTS * 0.95, figures


def test_five_points_worse_is_rolled_back_at_the_first_step() -> None:
    outcomes = run_many(LEGACY_FAILURE_RATE + 0.05, seed=20261201)
    caught = sum(o.result == "rollback" and o.step_index == 0 for o in outcomes)
    figures = f"{caught}/{ROLLOUTS} rolled back before leaving the 10% step"
    assert caught >= ROLLOUTS * 0.95, figures


def test_inconclusive_never_rolls_back() -> None:
    streak = 0
    for _ in range(1_000):
        action, streak = decide(Verdict.INCONCLUSIVE, streak, failures=1, can_advance=True)
        assert action is Action.HOLD and streak == 0


def test_rollback_needs_consecutive_failures() -> None:
    streak = 0
    actions = []
    for verdict in (Verdict.FAIL, Verdict.INCONCLUSIVE, Verdict.FAIL, Verdict.PASS, Verdict.FAIL):
        action, streak = decide(verdict, streak, failures=2, can_advance=False)
        actions.append(action)
    assert Action.ROLLBACK not in actions
    action, streak = decide(Verdict.FAIL, streak, failures=2, can_advance=False)
    assert action is Action.ROLLBACK and streak == 2


def test_pass_advances_only_when_allowed() -> None:
    assert decide(Verdict.PASS, 1, failures=2, can_advance=True) == (Action.ADVANCE, 0)
    assert decide(Verdict.PASS, 1, failures=2, can_advance=False) == (Action.HOLD, 0)
