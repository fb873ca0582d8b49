"""Lifecycle events on both databases: each transition is heard once, after its commit (a
listener that reads the run sees the new state), never for a lost race or a rolled-back
transaction, one per run for the maintenance batches, and a listener that raises is logged
without breaking the run."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pytest

from tests.jobs_fixture import SESSION, Calls, ParkedBackend, register_session_job
from tests.maintenance_fixture import age, dispatch, owe, setup_jobs, start
from toolkit import Toolkit
from toolkit.events import (
    RunCancelled,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunFellBack,
    RunQueued,
    RunRefunded,
    RunRetried,
    RunStarted,
    StepFinished,
)
from toolkit.maintenance import operations as maintenance_ops
from toolkit.store import lifecycle, records, steps
from toolkit.store.models import RunStatus


@dataclass
class Heard:
    """Every event, with the run's status as a listener reads it from the database."""

    tk: Toolkit
    events: list[RunEvent] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)

    def __call__(self, event: RunEvent) -> None:
        self.events.append(event)
        self.seen.append(self.tk.runs.get(event.run_id).status)

    def kinds(self, run_id: uuid.UUID | None = None) -> list[str]:
        return [type(e).__name__ for e in self.events if run_id in (None, e.run_id)]

    def of(self, kind: type[RunEvent]) -> list[RunEvent]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def heard(tk: Toolkit) -> Heard:
    listener = Heard(tk)
    tk.on(listener)
    return listener


@pytest.fixture
def parked(tk: Toolkit) -> ParkedBackend:
    backend = ParkedBackend(tk)
    tk.use_backend("parked", backend)
    return backend


@pytest.fixture
def job(tk: Toolkit, parked: ParkedBackend) -> Calls:
    calls = Calls()
    register_session_job(tk, calls, target="parked")
    tk.set_rollout("prediction-session", 100, reason="test")
    tk.credits.grant("u1", 100)
    return calls


def committed(heard: Heard) -> None:
    """The state each listener read is the state its event announces: it ran after commit."""
    for event, status in zip(heard.events, heard.seen, strict=True):
        if not isinstance(event, (RunRefunded, StepFinished)):
            assert status == event.status, event
        else:  # a refund follows the final transition; a step happens while running
            assert status in {"FAILED", "CANCELLED", "RUNNING"}, event


def test_a_run_from_dispatch_to_completion(tk: Toolkit, job: Calls, heard: Heard) -> None:
    handle = tk.dispatch("prediction-session", SESSION, key="u1", account="u1")
    assert tk.runtime.run_attempt(handle.run_id).outcome.value == "completed"
    assert heard.kinds() == ["RunQueued", "RunStarted", *["StepFinished"] * 3, "RunCompleted"]
    committed(heard)
    queued, started = heard.events[0], heard.events[1]
    assert isinstance(queued, RunQueued) and queued.backend == "parked" and queued.attempt == 0
    assert isinstance(started, RunStarted) and not started.taken_over
    assert (started.job, started.backend, started.attempt) == ("prediction-session", "parked", 1)
    steps = heard.of(StepFinished)
    assert [e.step for e in steps] == ["predict-gpt", "predict-claude", "predict-llama"]  # type: ignore[attr-defined]
    done = heard.events[-1]
    assert isinstance(done, RunCompleted) and (done.job, done.attempt) == ("prediction-session", 1)


def test_retry_failure_and_refund(tk: Toolkit, job: Calls, heard: Heard) -> None:
    job.fail_next("predict-claude", 1)
    handle = tk.dispatch("prediction-session", SESSION, key="u1", account="u1")
    assert tk.runtime.execute(handle.run_id, sleep=lambda _: None).outcome == "completed"
    retried = heard.of(RunRetried)
    assert len(retried) == 1 and "flaked" in (retried[0].error or "")  # type: ignore[attr-defined]
    assert [e.attempt for e in heard.of(RunStarted)] == [1, 2]
    committed(heard)

    fatal = tk.dispatch("prediction-session", {"fatal": True}, key="u1", account="u1")
    tk.runtime.execute(fatal.run_id)
    assert heard.kinds(fatal.run_id) == ["RunQueued", "RunStarted", "RunFailed", "RunRefunded"]
    refund = heard.events[-1]
    assert isinstance(refund, RunRefunded) and (refund.account, refund.amount) == ("u1", 5)
    assert tk.credits.refund(fatal.run_id) is False  # refunded once: no second event
    assert len(heard.of(RunRefunded)) == 1
    committed(heard)


def test_cancel_emits_cancelled_and_refunded_once(tk: Toolkit, job: Calls, heard: Heard) -> None:
    handle = tk.dispatch("prediction-session", SESSION, key="u1", account="u1")
    assert tk.cancel(handle.run_id, reason="user left")
    assert not tk.cancel(handle.run_id, reason="again")  # terminal: nothing moves, no event
    assert heard.kinds() == ["RunQueued", "RunCancelled", "RunRefunded"]
    cancelled = heard.events[1]
    assert isinstance(cancelled, RunCancelled) and cancelled.reason == "user left"
    committed(heard)


def test_a_lost_race_emits_nothing(tk: Toolkit, job: Calls, heard: Heard) -> None:
    run_id = tk.dispatch("prediction-session", SESSION, key="u1", account="u1").run_id
    claims = [tk.runtime.claim(run_id), tk.runtime.claim(run_id)]
    assert claims[0] is not None and claims[1] is None
    assert tk.runtime.complete(run_id, 1, {"ok": True})
    assert not tk.runtime.complete(run_id, 1, {"ok": True})
    assert not tk.runtime.fail(run_id, "late", expected=list(RunStatus))
    assert heard.kinds() == ["RunQueued", "RunStarted", "RunCompleted"]


def test_a_take_over_says_so(tk: Toolkit, job: Calls, heard: Heard) -> None:
    run_id = tk.dispatch("prediction-session", SESSION, key="u1", account="u1").run_id
    assert tk.runtime.claim(run_id, take_over=True) is not None  # a QUEUED run: a plain start
    assert tk.runtime.claim(run_id, take_over=True) is not None  # the holder is presumed dead
    started = heard.of(RunStarted)
    assert [(e.attempt, e.taken_over) for e in started] == [(1, False), (2, True)]  # type: ignore[attr-defined]


def test_a_rolled_back_transaction_emits_nothing(tk: Toolkit, job: Calls, heard: Heard) -> None:
    run_id = tk.dispatch("prediction-session", SESSION, key="u1", account="u1").run_id
    with pytest.raises(RuntimeError), tk.db.transaction() as s:
        assert tk.store.fail_many_in(s, [run_id], "boom", expected=[RunStatus.QUEUED])
        raise RuntimeError("the caller's transaction fails after the move")
    assert heard.kinds() == ["RunQueued"]
    assert tk.runs.get(run_id).status == "QUEUED"


def test_a_raising_listener_is_logged_and_never_breaks_the_run(
    tk: Toolkit, job: Calls, heard: Heard, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: RunEvent) -> None:
        raise ValueError("listener bug")

    tk.on(RunStarted, broken)
    with caplog.at_level(logging.ERROR, logger="toolkit.events"):
        handle = tk.dispatch("prediction-session", SESSION, key="u1", account="u1")
        assert tk.runtime.run_attempt(handle.run_id).outcome.value == "completed"
    assert tk.runs.get(handle.run_id).status == "COMPLETED"
    failures = [r for r in caplog.records if "listener" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert "RunCompleted" in heard.kinds()  # the other listeners still heard everything
    tk.events.off(broken)
    assert all(fn is not broken for _, fn in tk.events.listeners)


def test_typed_registration_hears_only_its_type(tk: Toolkit, job: Calls) -> None:
    failed: list[RunEvent] = []
    tk.on(RunFailed)(failed.append)
    handle = tk.dispatch("prediction-session", {"fatal": True}, key="u1", account="u1")
    tk.runtime.execute(handle.run_id)
    assert [type(e) for e in failed] == [RunFailed]
    assert failed[0].error == "NonRetriableError: market closed"  # type: ignore[attr-defined]


def test_fallback_emits_fell_back(
    tk: Toolkit, job: Calls, parked: ParkedBackend, heard: Heard
) -> None:
    parked.refuse = "broker down"
    handle = tk.dispatch("prediction-session", SESSION, key="u1", account="u1")
    assert handle.backend == "legacy" and handle.status == "COMPLETED"
    fell = heard.of(RunFellBack)
    assert len(fell) == 1 and fell[0].run_id == handle.run_id
    assert (fell[0].from_backend, fell[0].backend) == ("parked", "legacy")  # type: ignore[attr-defined]
    assert heard.kinds()[:2] == ["RunQueued", "RunFellBack"]
    assert heard.kinds()[-1] == "RunCompleted"
    committed(heard)


# --- maintenance batches: one event per run (both implementations: SQLite runs the generic
# batch, PostgreSQL the one-statement batch) --------------------------------------------------


def test_refund_sweep_emits_one_refund_per_run(tk: Toolkit) -> None:
    setup_jobs(tk)
    run_ids = dispatch(tk, 7)
    owe(tk, run_ids[:5])
    heard = Heard(tk)
    tk.on(heard)
    report = maintenance_ops.refund(tk.maintenance, apply=True, **{})
    assert report.changed == 5
    refunds = heard.of(RunRefunded)
    assert sorted(e.run_id for e in refunds) == sorted(run_ids[:5])
    assert {(e.amount, e.account is not None) for e in refunds} == {(5, True)}  # type: ignore[attr-defined]
    assert heard.kinds() == ["RunRefunded"] * 5
    maintenance_ops.refund(tk.maintenance, apply=True)  # nothing left to refund: nothing heard
    assert len(heard.events) == 5


def test_cleanup_sweep_emits_failed_then_refunded_per_run(tk: Toolkit) -> None:
    setup_jobs(tk)
    run_ids = dispatch(tk, 6)
    start(tk, run_ids[:2])
    age(tk, run_ids[:4], recoveries=3)  # two RUNNING and two QUEUED orphans
    heard = Heard(tk)
    tk.on(heard)
    report = maintenance_ops.cleanup_orphans(tk.maintenance, apply=True, older_than="15m")
    assert report.changed == 4
    per_run = Counter((e.run_id, type(e).__name__) for e in heard.events)
    assert per_run == Counter(
        {(rid, kind): 1 for rid in run_ids[:4] for kind in ("RunFailed", "RunRefunded")}
    )
    for rid in run_ids[:4]:
        kinds = heard.kinds(rid)
        assert kinds == ["RunFailed", "RunRefunded"]
    failed = heard.of(RunFailed)
    assert all("orphaned" in (e.error or "") for e in failed)  # type: ignore[attr-defined]
    assert {e.job for e in failed} == {"prediction-session"}
    committed(heard)


def test_with_no_listener_no_event_is_built(
    tk: Toolkit, job: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot paths test for listeners before building an event: none is built here."""

    def built(**_: object) -> RunEvent:
        raise AssertionError("an event was built with no listener registered")

    for module, names in (
        (lifecycle, ("RunStarted", "RunCompleted", "RunRetried", "RunFailed")),
        (records, ("RunQueued",)),
        (steps, ("StepFinished",)),
    ):
        for name in names:
            monkeypatch.setattr(module, name, built)
    job.fail_next("predict-gpt", 1)
    handle = tk.dispatch("prediction-session", SESSION, key="u1", account="u1")
    assert tk.runtime.execute(handle.run_id, sleep=lambda _: None).outcome == "completed"
    assert not tk.events.listeners


def test_off_removes_a_bound_method_listener(tk: Toolkit) -> None:
    """``on(obj.method)`` then ``off(obj.method)``: each attribute access makes a new bound
    method object, so removal must compare by equality, not identity."""

    class Sink:
        def __init__(self) -> None:
            self.heard: list[RunEvent] = []

        def hear(self, event: RunEvent) -> None:
            self.heard.append(event)

    sink = Sink()
    tk.on(RunCompleted, sink.hear)
    tk.events.off(sink.hear)
    assert tk.events.listeners == ()


def test_a_passthrough_exception_is_not_swallowed_by_the_emitter(tk: Toolkit) -> None:
    """A transport's time limit raised while a listener runs must still stop the job, so the
    emitter lets the passthrough types through instead of logging them."""

    class SoftLimit(Exception):
        pass

    def slow(_: RunEvent) -> None:
        raise SoftLimit

    tk.on(slow)
    tk.events.passthrough = (SoftLimit,)
    with pytest.raises(SoftLimit):
        tk.events.emit(RunCompleted(run_id=uuid.uuid4()))
