"""``toolkit recover``: hand stuck runs over again, routed by the current flag."""

from __future__ import annotations

from typing import Any

import click

from toolkit.cli.context import CliContext, pass_ctx
from toolkit.cli.maintenance import execute, stale_options, sweep_options


@click.command("recover")
@stale_options
@sweep_options
@pass_ctx
def group(obj: CliContext, /, **options: Any) -> None:
    """Re-dispatch stuck runs under the same run id, at most --max-recoveries times each.

    Stuck: QUEUED without a start, or RUNNING without a heartbeat, for --older-than. The
    backend is chosen again by the flag as it is now (after a rollback: legacy). Runs
    recovered onto the legacy executor run inside this process. Needs --app. Dry run by
    default.
    """
    execute(obj, "recover", **options)
