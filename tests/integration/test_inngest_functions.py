"""Inngest functions built from jobs: their semantics under the SDK's own step memoization
(``inngest.experimental.mocked``), their registered configuration, and the runtime pieces
they use. The HTTP protocol, signatures and on_failure are in test_inngest_e2e.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import inngest
import pytest
from inngest.experimental import mocked
from sqlalchemy import update

from tests.conftest import make_toolkit
from tests.jobs_fixture import SESSION, Calls
from toolkit import (
    BackendUnavailable,
    JobContext,
    NonRetriableError,
    RateLimit,
    RunStatus,
    Toolkit,
)
from toolkit.backends.inngest.backend import InngestBackend
from toolkit.backends.inngest.functions import JobRunner, function_options
from toolkit.errors import InngestConfigError
from toolkit.jobs import JobSpec, SubmittedRun, make_spec
from toolkit.store.models import Run

JOB = "prediction-session"


@pytest.fixture
def config_tk(tmp_path: Path, sqlite_template: Path) -> Iterator[Toolkit]:
    """For tests of configuration only: the database plays no part, so SQLite alone."""
    shutil.copy(sqlite_template, tmp_path / "toolkit.db")
    toolkit = make_toolkit(f"sqlite:///{tmp_path / 'toolkit.db'}")
    yield toolkit
    toolkit.close()


def spec(**declared: Any) -> JobSpec:
    options = {"inngest": declared.pop("inngest")} if "inngest" in declared else {}
    defaults: dict[str, Any] = {
        "event": None, "retries": 3, "timeout": "15m", "target": "inngest", "cost": 0,
        "fallback": "legacy", "rate_limit": None, "concurrency": None,
    }  # fmt: skip
    return make_spec(lambda ctx, p: None, "bad", **{**defaults, **declared}, options=options)


@pytest.fixture
def backend(tk: Toolkit, calls: Calls) -> InngestBackend:
    client = mocked.Inngest(app_id="mock", is_production=False)
    backend = tk.use_backend("inngest", client=client)
    assert isinstance(backend, InngestBackend)
    tk.set_rollout(JOB, 100, reason="all on inngest")
    return backend


def function(backend: InngestBackend, job: str) -> inngest.Function[Any]:
    return next(f for f in backend.functions() if f.id == backend.function_id(job))


def trigger(backend: InngestBackend, job: str, run_id: uuid.UUID) -> Any:
    spec = backend.jobs.get(job)
    event = backend.event(SubmittedRun(run_id, spec, None, "k"))
    assert isinstance(backend.client, mocked.Inngest)
    return mocked.trigger(function(backend, job), event, backend.client)


def test_multi_step_run_completes_with_each_step_once(
    tk: Toolkit, calls: Calls, backend: InngestBackend
) -> None:
    handle = tk.dispatch(JOB, SESSION, key="u1", account="u1")
    assert (handle.backend, handle.status) == ("inngest", RunStatus.QUEUED)
    result = trigger(backend, JOB, handle.run_id)
    assert result.status is mocked.Status.COMPLETED, result.error
    assert calls.log == ["predict-gpt", "predict-claude", "predict-llama"]
    run = tk.runs.detail(handle.run_id)
    assert run.run.status == RunStatus.COMPLETED and run.run.result == result.output
    assert run.run.attempts == 1 and run.run.external_id == "test"  # Inngest's run id
    assert run.steps == []  # Inngest memoizes the steps; the steps table is not used
    assert tk.credits.balance("u1") == 95


def test_failed_step_retries_without_rerunning_earlier_steps(
    tk: Toolkit, calls: Calls, backend: InngestBackend
) -> None:
    calls.fail_next("predict-claude", 2)
    handle = tk.dispatch(JOB, SESSION, key="u1", account="u1")
    result = trigger(backend, JOB, handle.run_id)
    assert result.status is mocked.Status.COMPLETED, result.error
    assert calls.count("predict-gpt") == 1 and calls.count("predict-claude") == 1
    assert tk.runs.get(handle.run_id).status == RunStatus.COMPLETED


def test_cancel_between_steps_stops_the_run(tk: Toolkit, backend: InngestBackend) -> None:
    tk.credits.grant("u2", 10)
    ran: list[str] = []

    @tk.job("cancel-me", target="inngest", cost=4)
    def job(ctx: JobContext, payload: object) -> str:
        def one() -> bool:
            ran.append("one")
            return tk.cancel(ctx.run_id, reason="user left")

        ctx.step("one", one)
        ctx.step("two", lambda: ran.append("two"))
        return "done"

    tk.set_rollout("cancel-me", 100, reason="test")
    handle = tk.dispatch("cancel-me", None, account="u2")
    result = trigger(backend, "cancel-me", handle.run_id)
    assert (
        result.status is mocked.Status.COMPLETED and "no longer running" in result.output["skipped"]
    )
    assert ran == ["one"]  # the fence in step two's body stopped it before it ran
    run = tk.runs.get(handle.run_id)
    assert run.status == RunStatus.CANCELLED and run.result is None
    assert tk.credits.balance("u2") == 10  # refunded once


def test_a_run_moved_to_legacy_never_runs_on_inngest(
    tk: Toolkit, calls: Calls, backend: InngestBackend
) -> None:
    handle = tk.dispatch(JOB, SESSION, key="u1", account="u1")
    with tk.db.transaction() as s:  # what a fallback does after a send that timed out late
        s.execute(update(Run).where(Run.id == handle.run_id).values(backend="legacy"))
    result = trigger(backend, JOB, handle.run_id)
    assert result.status is mocked.Status.COMPLETED and "skipped" in result.output
    assert calls.log == []
    # Nor would Inngest's failure handler fail it, had the function failed.
    runner = JobRunner(tk.runtime, tk.jobs.get(JOB), "inngest")
    assert runner._fail(str(handle.run_id), "Inngest gave up") == {"failed": False}
    assert tk.runs.get(handle.run_id).status == RunStatus.QUEUED  # legacy's to run
    assert tk.credits.balance("u1") == 95  # no refund either


def test_toolkit_errors_map_to_inngest_non_retriable(tk: Toolkit, backend: InngestBackend) -> None:
    @tk.job("strict", target="inngest", retries=0)
    def strict(ctx: JobContext, payload: object) -> None:
        ctx.step("check", lambda: (_ for _ in ()).throw(NonRetriableError("bad market")))

    @tk.job("reserved", target="inngest", retries=0)
    def reserved(ctx: JobContext, payload: object) -> None:
        ctx.step("toolkit/mine", lambda: 1)

    for name, text in (("strict", "NonRetriableError: bad market"), ("reserved", "reserved")):
        tk.set_rollout(name, 100, reason="test")
        result = trigger(backend, name, tk.dispatch(name, None).run_id)
        assert result.status is mocked.Status.FAILED
        assert isinstance(result.error, inngest.NonRetriableError) and text in str(result.error)


def test_registered_config_follows_the_job(config_tk: Toolkit) -> None:
    tk = config_tk

    @tk.job(
        "limited",
        event="app/limited.requested",
        retries=5,
        timeout="2h",
        rate_limit=RateLimit("openrouter", 10, 60),
        concurrency=3,
        inngest={"priority": inngest.Priority(run="event.data.vip ? 60 : 0")},
    )
    def limited(ctx: JobContext, payload: object) -> None:
        return None

    backend = tk.use_backend("inngest", app_id="app", is_production=False)
    assert isinstance(backend, InngestBackend)
    fns = {f.id: f for f in backend.functions()}
    assert set(fns) == {"app-limited", "app-limited-cancelled"}
    config = fns["app-limited"].get_config("http://x/api/inngest")
    main = config.main.to_dict()
    assert isinstance(main, dict)
    assert main["triggers"] == [{"event": "app/limited.requested", "expression": None}]
    steps = main["steps"]
    assert isinstance(steps, dict)
    assert steps["step"]["retries"] == {"attempts": 5}
    assert main["timeouts"] == {"start": None, "finish": "2h"}
    assert main["throttle"] == {"key": None, "limit": 10, "period": "1m", "burst": 1}
    assert main["concurrency"] == [{"key": None, "limit": 3, "scope": None}]
    assert main["idempotency"] == "event.data.run_id"
    assert main["priority"] == {"run": "event.data.vip ? 60 : 0"}
    assert main["rateLimit"] is None  # lossy: never used
    assert config.on_failure is not None and config.on_failure.id == "app-limited-failure"
    cleanup = fns["app-limited-cancelled"].get_config("http://x").main.to_dict()
    assert isinstance(cleanup, dict)
    assert cleanup["triggers"] == [
        {
            "event": "inngest/function.cancelled",
            "expression": "event.data.function_id == 'app-limited'",
        }
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 1.5}, "whole seconds"),
        ({"retries": 21}, "0 to 20"),
        ({"rate_limit": RateLimit("x", 1, 0.5)}, "whole seconds"),
        ({"event": "inngest/function.failed"}, "Inngest's own"),
        ({"inngest": {"debounce": object()}}, "drops events"),
        ({"inngest": {"typo": 1}}, "unknown inngest option"),
        ({"inngest": {"throttle": "fast"}}, "must be Throttle"),
        (
            {
                "rate_limit": RateLimit("x", 1, 60),
                "inngest": {"throttle": inngest.Throttle(limit=1, period=timedelta(seconds=1))},
            },
            "not both",
        ),
    ],
)
def test_config_inngest_would_reject_fails_early(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InngestConfigError, match=message):
        function_options(spec(**options))


def test_two_jobs_on_one_event_are_refused(config_tk: Toolkit) -> None:
    tk = config_tk

    tk.job("a", event="same.event")(lambda ctx, payload: None)
    tk.job("b", event="same.event")(lambda ctx, payload: None)
    backend = tk.use_backend("inngest", app_id="app", is_production=False)
    assert isinstance(backend, InngestBackend)
    with pytest.raises(InngestConfigError, match="both use event"):
        backend.functions()


def test_client_or_settings_not_both(config_tk: Toolkit) -> None:
    with pytest.raises(InngestConfigError, match="not both"):
        config_tk.use_backend("inngest", client=mocked.Inngest(app_id="x"), app_id="y")


def test_a_job_without_an_inngest_function_is_refused(tk: Toolkit, backend: InngestBackend) -> None:
    @tk.job("celery-job", target="celery")
    def job(ctx: JobContext, payload: object) -> str:
        return "ran inline"

    # A flag provider may name any backend; this job has no Inngest function to run it.
    spec = tk.jobs.get("celery-job")
    run = SubmittedRun(tk.dispatch("celery-job", None).run_id, spec, None, "k")
    with pytest.raises(BackendUnavailable, match="no Inngest function"):
        backend.submit(run)


def test_runtime_start_is_idempotent_and_respects_the_backend(
    tk: Toolkit, calls: Calls, backend: InngestBackend
) -> None:
    rid = tk.dispatch(JOB, SESSION, key="u1", account="u1").run_id
    assert tk.runtime.start(rid, backend="celery") is None  # not that backend's run
    first = tk.runtime.start(rid, backend="inngest", external_id="01RUN")
    again = tk.runtime.start(rid, backend="inngest")  # the engine lost the first answer
    assert first is not None and again is not None and first.attempt == again.attempt == 1
    assert first.payload == SESSION
    assert tk.runtime.beat(rid, 3) and tk.runtime.beat(rid, 2)
    run = tk.runs.get(rid)
    assert run.attempts == 3 and run.external_id == "01RUN" and run.started_at is not None
    assert tk.cancel(rid, reason="stop")
    assert not tk.runtime.beat(rid, 4)
    assert tk.runtime.start(rid, backend="inngest") is None


def test_import_toolkit_does_not_import_inngest_or_fastapi() -> None:
    code = (
        "import sys, toolkit, toolkit.cli; "
        "assert not {'inngest', 'fastapi', 'uvicorn'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_production_mode_will_not_serve_without_a_signing_key(
    config_tk: Toolkit, monkeypatch: pytest.MonkeyPatch
) -> None:
    from toolkit.backends.inngest.web import create_app

    monkeypatch.delenv("INNGEST_SIGNING_KEY", raising=False)
    config_tk.use_backend("inngest", app_id="app", is_production=True)
    with pytest.raises(InngestConfigError, match="INNGEST_SIGNING_KEY"):
        create_app(config_tk.dispatch, config_tk.jobs, inngest=config_tk.backends["inngest"])
