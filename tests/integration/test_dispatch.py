"""Dispatch through the flag: recording, idempotency, credits, fallback, replaceable provider."""

from __future__ import annotations

import threading
import time
from typing import NoReturn

import pytest
from openfeature.evaluation_context import EvaluationContext
from openfeature.provider import AbstractProvider, Metadata
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider
from sqlalchemy import event as sa_event
from sqlalchemy import func, select

from tests.conftest import make_toolkit
from tests.jobs_fixture import SESSION, Calls, ParkedBackend, register_session_job
from toolkit import DispatchRequest, InsufficientCredits, RunStatus, Toolkit, UnknownJob
from toolkit.errors import InvalidInput, InvalidPayload
from toolkit.store.models import CreditEntry, Run


@pytest.fixture
def parked(tk: Toolkit) -> ParkedBackend:
    backend = ParkedBackend(tk)
    tk.use_backend("parked", backend)
    return backend


@pytest.fixture
def calls(tk: Toolkit) -> Calls:
    c = Calls()
    register_session_job(tk, c, target="parked")
    tk.credits.grant("u1", 100)
    return c


def run_count(tk: Toolkit) -> int:
    with tk.db.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(Run)) or 0)


def test_zero_percent_changes_nothing_everything_runs_inline(
    tk: Toolkit, calls: Calls, parked: ParkedBackend
) -> None:
    handles = [
        tk.dispatch("prediction-session", SESSION, key=f"user-{i}", account="u1") for i in range(10)
    ]
    assert {h.backend for h in handles} == {"legacy"}
    assert {h.status for h in handles} == {RunStatus.COMPLETED}
    assert parked.submitted == []
    assert all(h.route_reason == "DEFAULT" for h in handles)  # no rollout row yet


def test_hundred_percent_routes_to_target_and_returns_queued(
    tk: Toolkit, calls: Calls, parked: ParkedBackend
) -> None:
    tk.set_rollout("prediction-session", 100, reason="full rollout")
    handle = tk.dispatch("prediction-session", SESSION, key="u1", account="u1")
    assert (handle.backend, handle.status) == ("parked", RunStatus.QUEUED)
    assert parked.submitted == [handle.run_id]
    run = tk.runs.get(handle.run_id)
    assert run.status == RunStatus.QUEUED and run.route_reason == "SPLIT"
    assert calls.log == []  # the parked backend has not run anything


def test_route_is_sticky_per_key_and_matches_dispatch(
    tk: Toolkit, calls: Calls, parked: ParkedBackend
) -> None:
    tk.set_rollout("prediction-session", 50, reason="half")
    for i in range(20):
        key = f"user-{i}"
        route = tk.route("prediction-session", key)
        assert all(tk.route("prediction-session", key) == route for _ in range(3))
        handle = tk.dispatch("prediction-session", SESSION, key=key, account="u1")
        assert handle.backend == route.backend


def test_allow_deny_and_kill(tk: Toolkit, calls: Calls, parked: ParkedBackend) -> None:
    tk.set_listed("prediction-session", "beta-user", which="allow", reason="beta")
    tk.set_listed("prediction-session", "vip", which="deny", reason="keep safe")
    assert tk.route("prediction-session", "beta-user").backend == "parked"
    tk.set_rollout("prediction-session", 100, reason="all")
    assert tk.route("prediction-session", "vip").backend == "legacy"
    assert tk.route("prediction-session", "someone").backend == "parked"
    tk.set_killed("prediction-session", True, reason="incident")
    assert tk.route("prediction-session", "beta-user").backend == "legacy"
    assert tk.route("prediction-session", "someone").reason == "DISABLED"
    tk.set_killed("prediction-session", False, reason="resolved")
    assert tk.route("prediction-session", "someone").backend == "parked"
    actions = [e.action for e in tk.audit.entries(target="prediction-session")]
    assert actions == [
        "rollout.active",
        "rollout.killed",
        "rollout.set",
        "rollout.deny",
        "rollout.allow",
    ]


def test_keyless_batch_work_buckets_on_run_id(tk: Toolkit, parked: ParkedBackend) -> None:
    @tk.job("daily-batch", target="parked")
    def batch(ctx: object, payload: object) -> None:
        return None

    tk.set_rollout("daily-batch", 50, reason="half of batches")
    handles = [tk.dispatch("daily-batch", {"day": i}) for i in range(200)]
    backends = [h.backend for h in handles]
    assert 60 < backends.count("parked") < 140  # split on run ids, not one fixed bucket
    run = tk.runs.get(handles[0].run_id)
    assert run.targeting_key == str(run.id)


def test_idempotency_key_returns_existing_run(tk: Toolkit, calls: Calls) -> None:
    first = tk.dispatch(
        "prediction-session", SESSION, key="u1", idempotency_key="s-1", account="u1"
    )
    again = tk.dispatch(
        "prediction-session", SESSION, key="u1", idempotency_key="s-1", account="u1"
    )
    assert again.run_id == first.run_id and not again.created
    assert run_count(tk) == 1
    assert tk.credits.balance("u1") == 95  # debited once


def test_insufficient_credits_queues_nothing(tk: Toolkit, calls: Calls) -> None:
    tk.credits.grant("poor", 4)
    with pytest.raises(InsufficientCredits, match="has 4 credits, the job costs 5"):
        tk.dispatch("prediction-session", SESSION, key="poor", account="poor")
    assert run_count(tk) == 0
    assert tk.credits.balance("poor") == 4
    with pytest.raises(InsufficientCredits):
        tk.dispatch("prediction-session", SESSION, key="ghost", account="ghost")


def test_bad_input_changes_nothing(tk: Toolkit, calls: Calls) -> None:
    with pytest.raises(UnknownJob):
        tk.dispatch("no-such-job", {})
    with pytest.raises(InvalidPayload):
        tk.dispatch("prediction-session", {"when": object()}, account="u1")
    with pytest.raises(InvalidInput, match="pass account="):
        tk.dispatch("prediction-session", SESSION)
    with pytest.raises(InvalidInput):
        tk.dispatch("prediction-session", SESSION, key="", account="u1")
    with pytest.raises(InvalidPayload):
        tk.dispatch("prediction-session", {"x": float("nan")}, account="u1")
    assert run_count(tk) == 0 and tk.credits.balance("u1") == 100


def test_dispatch_many_one_transaction(tk: Toolkit, calls: Calls, parked: ParkedBackend) -> None:
    tk.set_rollout("prediction-session", 100, reason="all")
    requests = [
        DispatchRequest(SESSION, key=f"k{i}", idempotency_key=f"b-{i}", account="u1")
        for i in range(10)
    ]
    handles = tk.dispatch_many("prediction-session", requests)
    assert len(handles) == 10 and len(set(h.run_id for h in handles)) == 10
    assert tk.credits.balance("u1") == 50
    assert parked.submitted == [h.run_id for h in handles]
    # the same batch again: every run already exists; nothing new, nothing debited
    again = tk.dispatch_many("prediction-session", requests)
    assert [h.run_id for h in again] == [h.run_id for h in handles]
    assert not any(h.created for h in again)
    assert tk.credits.balance("u1") == 50 and run_count(tk) == 10
    # a batch the account cannot pay for inserts nothing at all
    too_many = [DispatchRequest(SESSION, account="u1") for _ in range(11)]
    with pytest.raises(InsufficientCredits):
        tk.dispatch_many("prediction-session", too_many)
    assert run_count(tk) == 10 and tk.credits.balance("u1") == 50
    with tk.db.transaction() as s:
        debits = s.scalar(
            select(func.count()).select_from(CreditEntry).where(CreditEntry.kind == "DEBIT")
        )
    assert debits == 10


def test_refused_submission_falls_back_to_legacy(
    tk: Toolkit, calls: Calls, parked: ParkedBackend
) -> None:
    tk.set_rollout("prediction-session", 100, reason="all")
    parked.refuse = "event API unreachable"
    handle = tk.dispatch("prediction-session", SESSION, key="u1", account="u1")
    assert handle.backend == "legacy" and handle.fallback_from == "parked"
    assert handle.status == RunStatus.COMPLETED
    run = tk.runs.get(handle.run_id)
    assert run.fallback_from == "parked" and "event API unreachable" in (run.route_reason or "")
    assert calls.count("predict-gpt") == 1 and tk.credits.balance("u1") == 95


def test_refused_submission_fail_policy_refunds(tk: Toolkit, parked: ParkedBackend) -> None:
    calls = Calls()
    register_session_job(tk, calls, name="strict", target="parked", fallback="fail")
    tk.credits.grant("u1", 10)
    tk.set_rollout("strict", 100, reason="all")
    parked.refuse = "broker down"
    handle = tk.dispatch("strict", SESSION, key="u1", account="u1")
    assert handle.status == RunStatus.FAILED and "broker down" in (handle.error or "")
    detail = tk.runs.detail(handle.run_id)
    assert detail.run.status == RunStatus.FAILED and detail.dead_letter
    assert [e.kind for e in detail.ledger] == ["DEBIT", "REFUND"]
    assert tk.credits.balance("u1") == 10 and calls.log == []


class ExplodingProvider(AbstractProvider):
    def get_metadata(self) -> Metadata:
        return Metadata(name="exploding")

    # One body for every flag type: ``default_value: object`` and ``NoReturn`` fit each signature.
    def resolve_string_details(
        self,
        flag_key: str,
        default_value: object,
        evaluation_context: EvaluationContext | None = None,
    ) -> NoReturn:
        raise RuntimeError("flag service timeout")

    resolve_boolean_details = resolve_integer_details = resolve_float_details = (
        resolve_object_details
    ) = resolve_string_details


def test_flag_errors_route_to_legacy_and_are_recorded(db_url: str) -> None:
    tk = make_toolkit(db_url, flag_provider=ExplodingProvider())
    try:
        calls = Calls()
        register_session_job(tk, calls, cost=0)
        handle = tk.dispatch("prediction-session", SESSION, key="u1")
        assert handle.backend == "legacy" and handle.status == RunStatus.COMPLETED
        reason = tk.runs.get(handle.run_id).route_reason or ""
        assert "flag error" in reason and "flag service timeout" in reason
    finally:
        tk.close()


def test_any_openfeature_provider_can_replace_ours(db_url: str) -> None:
    provider = InMemoryProvider(
        {
            "prediction-session": InMemoryFlag("on", {"on": "parked", "off": "legacy"}),
            "other": InMemoryFlag("on", {"on": "not-a-backend", "off": "legacy"}),
        }
    )
    tk = make_toolkit(db_url, flag_provider=provider)
    try:
        parked = ParkedBackend(tk)
        tk.use_backend("parked", parked)
        register_session_job(tk, Calls(), cost=0, target="parked")
        register_session_job(tk, Calls(), name="other", cost=0)
        register_session_job(tk, Calls(), name="missing", cost=0)
        assert tk.dispatch("prediction-session", SESSION, key="u1").backend == "parked"
        other = tk.route("other", "u1")
        assert other.backend == "legacy" and "not configured" in other.reason
        missing = tk.route("missing", "u1")
        assert missing.backend == "legacy" and "FLAG_NOT_FOUND" in (missing.error or "")
    finally:
        tk.close()


def test_flag_flip_mid_flight_keeps_run_on_its_backend(db_url: str) -> None:
    tk = make_toolkit(db_url, legacy_mode="thread")
    try:
        parked = ParkedBackend(tk)
        tk.use_backend("parked", parked)
        started, release = threading.Event(), threading.Event()

        @tk.job("slow-session", target="parked")
        def slow(ctx: object, payload: object) -> str:
            started.set()
            release.wait(5)
            return "done"

        legacy_run = tk.dispatch("slow-session", None, key="u1")
        assert legacy_run.backend == "legacy" and legacy_run.status == RunStatus.QUEUED
        assert started.wait(5)
        tk.set_rollout("slow-session", 100, reason="flip while the legacy run is in flight")
        new_run = tk.dispatch("slow-session", None, key="u1")
        assert new_run.backend == "parked"
        release.set()
        deadline = time.monotonic() + 5
        while tk.runs.get(legacy_run.run_id).status != RunStatus.COMPLETED:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert tk.runs.get(legacy_run.run_id).backend == "legacy"
        assert parked.submitted == [new_run.run_id]  # the in-flight run was never handed over
    finally:
        tk.close()


def test_thread_mode_returns_at_once_and_close_drains(db_url: str) -> None:
    tk = make_toolkit(db_url, legacy_mode="thread")
    release = threading.Event()

    @tk.job("fire-and-forget", target="inngest")
    def job(ctx: object, payload: object) -> str:
        release.wait(5)
        return "ok"

    handles = [tk.dispatch("fire-and-forget", None) for _ in range(3)]
    assert {h.status for h in handles} == {RunStatus.QUEUED}
    release.set()
    tk.close(wait=True)  # drains in-flight work before returning
    check = make_toolkit(db_url)
    try:
        assert {check.runs.get(h.run_id).status for h in handles} == {RunStatus.COMPLETED}
    finally:
        check.close()


def test_dispatch_makes_no_flag_query(tk: Toolkit, parked: ParkedBackend) -> None:
    @tk.job("hot", target="parked")
    def hot(ctx: object, payload: object) -> None:
        return None

    tk.set_rollout("hot", 50, reason="half")
    tk.route("hot", "warm-up")  # the snapshot is loaded once here
    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    sa_event.listen(tk.db.engine, "before_cursor_execute", record)
    started = time.monotonic()
    try:
        for i in range(50):
            tk.dispatch("hot", None, key=f"user-{i}")
    finally:
        sa_event.remove(tk.db.engine, "before_cursor_execute", record)
    elapsed = time.monotonic() - started
    rollout_reads = [s for s in statements if "toolkit_rollouts" in s]
    # One refresh per elapsed second of the 1 s window at most, not one per dispatch (50).
    assert len(rollout_reads) <= 1 + int(elapsed), (len(rollout_reads), elapsed)


def test_a_change_reaches_another_process_within_a_second(db_url: str) -> None:
    writer, reader = make_toolkit(db_url), make_toolkit(db_url)
    try:
        for tk in (writer, reader):
            tk.use_backend("parked", ParkedBackend(tk))
            register_session_job(tk, Calls(), cost=0, target="parked")
        writer.set_rollout("prediction-session", 100, reason="all")
        time.sleep(1.05)
        assert reader.route("prediction-session", "u1").backend == "parked"
        writer.rollback("prediction-session", reason="incident")
        changed_at = time.monotonic()
        while reader.route("prediction-session", "u1").backend != "legacy":
            assert time.monotonic() - changed_at < 1.1, "rollback not visible within a second"
            time.sleep(0.01)
    finally:
        writer.close()
        reader.close()
