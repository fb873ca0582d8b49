"""examples/predictions.py works as documented: loaded by the CLI, its demo runs the seed
scenario on the legacy executor, the failed session is refunded, the batch completes."""

from __future__ import annotations

import json

from click.testing import CliRunner

from examples.predictions import SESSION_COST, build, demo
from toolkit.cli import cli
from toolkit.errors import BackendNotEnabled


def test_the_example_app_runs_its_demo_and_the_cli_loads_it(cli_env: str) -> None:
    """A rollout above 0 % needs its target enabled (TOOLKIT_BACKENDS), as the module says."""
    tk = build()
    try:
        demo(tk, users=3)
        runs = {r.job + ":" + (r.idempotency_key or ""): r for r in tk.runs.list(limit=10)}
        sessions = [runs[f"prediction-session:session-{n}"] for n in range(3)]
        assert [s.status for s in sessions] == ["COMPLETED", "COMPLETED", "FAILED"]
        assert "closed" in (sessions[2].error or "")
        assert [tk.credits.balance(f"user-{n}") for n in range(3)] == [
            20 - SESSION_COST,
            20 - SESSION_COST,
            20,  # the failed session's credits came back
        ]
        batch = runs["daily-batch:daily-batch:demo"]
        assert (batch.status, batch.backend, batch.result) == ("COMPLETED", "legacy", 3)
    finally:
        tk.close()

    app = ["--app", "examples.predictions:build"]
    listed = CliRunner().invoke(cli, [*app, "runs", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert len(json.loads(listed.output)) == 4
    canary = [*app, "rollout", "set", "prediction-session", "10", "--reason", "canary"]
    refused = CliRunner().invoke(cli, canary)  # the target (inngest) is not enabled
    assert isinstance(refused.exception, BackendNotEnabled), refused.output
    enabled = {"TOOLKIT_BACKENDS": "inngest", "INNGEST_DEV": "1"}
    moved = CliRunner(env=enabled).invoke(cli, canary)
    assert moved.exit_code == 0, moved.output
