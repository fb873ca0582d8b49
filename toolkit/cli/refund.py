"""``toolkit refund``: refund every FAILED or CANCELLED run that was debited and not refunded."""

from __future__ import annotations

from typing import Any

import click

from toolkit.cli.context import CliContext, pass_ctx
from toolkit.cli.maintenance import execute, sweep_options


@click.command("refund")
@sweep_options
@pass_ctx
def group(obj: CliContext, /, **options: Any) -> None:
    """Refund the credits that failed and cancelled runs are still owed.

    Dry run by default: shows what would be refunded. Safe to run twice or on two machines at
    once: a run is refunded at most once.
    """
    execute(obj, "refund", **options)
