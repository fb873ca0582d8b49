"""The app the maintenance CLI tests and subprocesses load with ``--app``: the parked backend
and the test jobs (the rollouts, runs and credits live in the database)."""

from __future__ import annotations

from tests.maintenance_fixture import register_jobs
from toolkit import Toolkit


def build() -> Toolkit:
    tk = Toolkit(legacy_mode="blocking")  # TOOLKIT_DATABASE_URL from the environment
    register_jobs(tk)
    return tk
