"""The app the CLI tests load with ``--app tests.cli_app:build``."""

from __future__ import annotations

from tests.jobs_fixture import Calls, register_session_job
from tests.support.stub_backend import enable
from toolkit import Toolkit


def build() -> Toolkit:
    tk = Toolkit(legacy_mode="blocking")  # TOOLKIT_DATABASE_URL from the test's environment
    register_session_job(tk, Calls())

    @tk.job("daily-batch", target="celery")
    def daily(ctx: object, payload: object) -> None:
        return None

    return tk


def build_enabled() -> Toolkit:
    """The same app with its targets (inngest, celery) enabled as stubs: rollouts can be set."""
    return enable(build(), "inngest", "celery")


not_a_toolkit = 42
