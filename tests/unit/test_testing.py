"""toolkit.testing, as an application's own tests use it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from toolkit import JobContext, RunStatus, Toolkit
from toolkit.testing import Outcome, StubBackend, toolkit_for_tests

REPO = Path(__file__).resolve().parents[2]


def _app(tmp_path: Path, **options: Any) -> tuple[Toolkit, StubBackend, list[str]]:
    """A Toolkit with a flaky two-step job on a stub standing in for Inngest, at 100 %."""
    tk = toolkit_for_tests(tmp_path, **options)
    stub = StubBackend(tk, name="inngest")
    tk.use_backend("inngest", stub)
    calls: list[str] = []

    def call(name: str) -> str:
        calls.append(name)
        if name == "b" and calls.count("b") == 1:
            raise RuntimeError("b flaked")
        return name

    for job, fallback in (("session", "legacy"), ("strict", "fail")):

        @tk.job(job, target="inngest", cost=2, retries=2, fallback=fallback)
        def session(ctx: JobContext, payload: Any) -> list[str]:
            return [ctx.step(name, call, name) for name in ("a", "b")]

        tk.set_rollout(job, 100, reason="test")
    tk.credits.grant("u1", 10)
    return tk, stub, calls


def test_stub_keeps_runs_until_the_test_runs_them_through_the_lifecycle(tmp_path: Path) -> None:
    tk, stub, calls = _app(tmp_path)
    with tk:
        first = tk.dispatch("session", None, account="u1")
        second = tk.dispatch("session", None, account="u1")
        assert (first.backend, first.status) == ("inngest", RunStatus.QUEUED)
        assert stub.submitted == stub.pending == [first.run_id, second.run_id]
        assert calls == [] and tk.credits.balance("u1") == 6

        assert stub.run(first.run_id) is Outcome.COMPLETED
        assert calls == ["a", "b", "b"]  # b retried; a, finished before, was not run again
        run = tk.runs.get(first.run_id)
        assert (run.status, run.attempts, run.result) == ("COMPLETED", 2, ["a", "b"])

        assert stub.run_all() == {second.run_id: Outcome.COMPLETED}
        assert stub.pending == [] and stub.submitted == [first.run_id, second.run_id]
        assert stub.run_all() == {}


def test_a_cancelled_run_is_skipped_and_refunded(tmp_path: Path) -> None:
    tk, stub, calls = _app(tmp_path)
    with tk:
        handle = tk.dispatch("session", None, account="u1")
        assert tk.cancel(handle.run_id)
        assert stub.run_all() == {handle.run_id: Outcome.SKIPPED}
        assert calls == [] and tk.runs.get(handle.run_id).status == RunStatus.CANCELLED
        assert tk.credits.balance("u1") == 10


def test_refusing_stub_exercises_the_fallback_policy(tmp_path: Path) -> None:
    tk, stub, calls = _app(tmp_path)
    with tk:
        stub.refuse = "event API down"
        moved = tk.dispatch("session", None, account="u1")
        failed = tk.dispatch("strict", None, account="u1")
        assert stub.submitted == []
        # blocking legacy: the fallback ran inline, so the handle is already final
        assert (moved.backend, moved.fallback_from, moved.status) == (
            "legacy",
            "inngest",
            "COMPLETED",
        )
        assert "event API down" in (moved.route_reason or "") and calls == ["a", "b", "b"]
        assert failed.status == RunStatus.FAILED and "not submitted" in (failed.error or "")
        assert tk.runs.detail(failed.run_id).dead_letter
        assert tk.credits.balance("u1") == 8  # the failed run's 2 credits came back


def test_toolkit_for_tests_is_migrated_and_runs_legacy_inline(tmp_path: Path) -> None:
    with toolkit_for_tests(tmp_path) as tk:
        assert tk.legacy.mode == "blocking"

        @tk.job("hello")
        def hello(ctx: JobContext, payload: Any) -> str:
            return f"hello {payload}"

        handle = tk.dispatch("hello", "world")
        assert (handle.backend, handle.status) == ("legacy", "COMPLETED")
        assert tk.runs.get(handle.run_id).result == "hello world"
    assert (tmp_path / "toolkit.db").exists()
    (tmp_path / "other").mkdir()
    with toolkit_for_tests(tmp_path / "other", legacy_mode="thread") as other:
        assert other.legacy.mode == "thread"  # any Toolkit option can be overridden


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, *code.split("\0")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_fixture_works_from_a_users_conftest(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["toolkit.testing"]\n')
    (tmp_path / "test_user_job.py").write_text(
        textwrap.dedent(
            """
            def test_job(toolkit_app):
                @toolkit_app.job("greet", target="celery")
                def greet(ctx, payload):
                    return ctx.step("say", lambda: f"hi {payload}")

                handle = toolkit_app.dispatch("greet", "ann")
                assert handle.status == "COMPLETED"
                assert toolkit_app.runs.get(handle.run_id).result == "hi ann"
            """
        )
    )
    done = _run_python("-m\0pytest\0-q\0-p\0no:cacheprovider\0test_user_job.py", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_importing_it_without_pytest_installed_works_and_has_no_fixture(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['pytest'] = None; import toolkit.testing as t; "
        "print(hasattr(t, 'toolkit_app'), hasattr(t, 'StubBackend'), 'toolkit_app' in t.__all__)"
    )
    done = _run_python(f"-c\0{code}", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "False"]
