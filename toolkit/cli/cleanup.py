"""``toolkit cleanup``: fail what recovery gave up on."""

from __future__ import annotations

from typing import Any

import click

from toolkit.cli.context import CliContext, pass_ctx
from toolkit.cli.maintenance import execute, stale_options, sweep_options


@click.group("cleanup")
def group() -> None:
    """Clean up runs that cannot finish."""


@group.command("orphans")
@stale_options
@sweep_options
@pass_ctx
def orphans(obj: CliContext, /, **options: Any) -> None:
    """Mark stuck runs that recovery gave up on FAILED, with a dead letter and a refund.

    Stuck: QUEUED without a start, or RUNNING without a heartbeat, for --older-than, after
    --max-recoveries re-dispatches (run `toolkit recover` first). Dry run by default.
    """
    execute(obj, "cleanup", **options)
