"""``toolkit audit``: the append-only record of every change."""

from __future__ import annotations

import json

import click

from toolkit.cli.context import CliContext, parse_since, pass_ctx
from toolkit.cli.render import Col, console, emit_json, fit, when


def _change(before: object, after: object) -> str:
    if isinstance(before, dict) and isinstance(after, dict):
        diff = [
            f"{k}: {before.get(k)} → {after.get(k)}"
            for k in after
            if k not in ("version", "updated_at", "updated_by") and before.get(k) != after.get(k)
        ]
        return "; ".join(diff)
    return json.dumps(after, default=str)[:80] if after is not None else ""


@click.command("audit")
@click.option("--since", help="24h, 15m, 7d, or an ISO timestamp.")
@click.option("--target", help="Only entries about this job / flag.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def group(
    obj: CliContext, since: str | None, target: str | None, limit: int, as_json: bool
) -> None:
    """Who changed what, when, and why (newest first)."""
    entries = obj.toolkit.audit.entries(since=parse_since(since), target=target, limit=limit)
    if as_json:
        emit_json([e.as_dict() for e in entries])
        return
    out = console()
    narrow = out.width < 120  # date above time: the column is 10 cells wide, not 19
    out.print(
        fit(
            "Audit",
            [
                Col("at"),
                Col("actor", fold=True, width=10),
                Col("action"),
                Col("target", fold=True, width=10, drop=1),
                Col("change", fold=True, width=14),
                Col("reason", fold=True, width=10),
            ],
            [
                (
                    when(e.at).replace(" ", "\n") if narrow else when(e.at),
                    e.actor,
                    e.action,
                    e.target,
                    _change(e.before, e.after),
                    e.reason or "",
                )
                for e in entries
            ],
            width=out.width,
        )
    )
