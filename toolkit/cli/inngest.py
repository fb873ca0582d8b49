"""``toolkit inngest check``: the function config the app would register, checked for drift.

Nothing here imports the Inngest SDK until the command runs, so ``toolkit --help`` stays fast
and works without the extra installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from toolkit.cli.context import CliContext, pass_ctx
from toolkit.cli.render import Col, console, emit_json, fit
from toolkit.errors import ConfigError, InngestDrift

if TYPE_CHECKING:
    from toolkit.backends.inngest.backend import InngestBackend

KIND_STYLE = {"code": "bold red", "snapshot": "red", "new": "yellow", "removed": "yellow"}


@click.group("inngest")
def group() -> None:
    """Inngest functions built from the jobs."""


@group.command("check")
@click.option(
    "--snapshot",
    "snapshot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="inngest-functions.json",
    show_default=True,
    help="Saved registration to compare with (commit it with the code).",
)
@click.option("--write-snapshot", is_flag=True, help="Save the current registration there.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def check(obj: CliContext, snapshot_path: Path, write_snapshot: bool, as_json: bool) -> None:
    """Compare what the app registers with the jobs' declarations and the snapshot.

    Exit 1 on any drift: a field the code declares that the registration does not carry, or
    a registration that differs from the snapshot (new, removed or changed functions).
    """
    from toolkit.backends.inngest import check as cfg

    backend = _backend(obj)
    registered = cfg.registered(backend)
    declared = cfg.declared(backend)
    notes = cfg.notes(backend)
    app_id = backend.client.app_id
    if write_snapshot:
        cfg.write_snapshot(snapshot_path, app_id, registered)
        snapshot = registered
    else:
        saved_app, snapshot = cfg.read_snapshot(snapshot_path)
        if saved_app not in (None, app_id):
            notes.append(f"the snapshot was written for app {saved_app!r}, this app is {app_id!r}")
    diffs = cfg.compare(declared, registered, snapshot)

    if as_json:
        emit_json(
            {
                "app_id": app_id,
                "snapshot": str(snapshot_path),
                "snapshot_written": write_snapshot,
                "ok": not diffs,
                "functions": registered,
                "drift": [d.as_dict() for d in diffs],
                "notes": notes,
            }
        )
    else:
        _render(app_id, registered, diffs, notes, snapshot_path, write_snapshot)
    if diffs:
        kinds = sorted({d.kind for d in diffs})
        raise InngestDrift(
            f"{len(diffs)} difference(s) ({', '.join(kinds)}) in the Inngest functions of app "
            f"{app_id!r}; if intended, review and run with --write-snapshot"
        )


def _backend(obj: CliContext) -> InngestBackend:
    if not obj.app_spec:
        raise ConfigError("pass --app (or set TOOLKIT_APP): the functions come from your jobs")
    from toolkit.backends.inngest.backend import InngestBackend

    backend = obj.toolkit.backends.get("inngest")
    if not isinstance(backend, InngestBackend):
        raise ConfigError("the app does not enable Inngest: call tk.use_backend('inngest') in it")
    return backend


def _short(value: Any) -> str:
    if value is None:
        return "[dim]-[/]"
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)


def _render(
    app_id: str,
    registered: dict[str, dict[str, Any]],
    diffs: list[Any],
    notes: list[str],
    snapshot_path: Path,
    written: bool,
) -> None:
    out = console()
    out.print(
        fit(
            f"Inngest functions of app {app_id} ({len(registered)})",
            [
                Col("function"),
                Col("trigger", fold=True, width=20),
                Col("retries", justify="right"),
                Col("timeout", justify="right", drop=1),
                Col("flow control", fold=True, width=20, drop=2),
            ],
            [
                (
                    fn_id,
                    ", ".join(t.get("event", "?") for t in fields.get("triggers", [])),
                    fields.get("retries"),
                    f"{fields['timeouts.finish']:g}s" if "timeouts.finish" in fields else None,
                    "; ".join(
                        f"{k}={_short(v)}"
                        for k, v in fields.items()
                        if k.split(".")[0] in ("throttle", "concurrency", "priority", "cancel")
                    ),
                )
                for fn_id, fields in sorted(registered.items())
            ],
        )
    )
    if written:
        out.print(f"[green]snapshot written[/] to {snapshot_path}")
    if diffs:
        out.print(
            fit(
                "Drift",
                [
                    Col("function"),
                    Col("field", fold=True, width=16),
                    Col("kind"),
                    Col("declared", fold=True, width=12),
                    Col("registered", fold=True, width=12),
                    Col("snapshot", fold=True, width=12, drop=1),
                ],
                [
                    (
                        d.function,
                        d.field,
                        f"[{KIND_STYLE.get(d.kind, 'red')}]{d.kind}[/]",
                        _short(d.declared),
                        _short(d.registered),
                        _short(d.snapshot),
                    )
                    for d in diffs
                ],
            )
        )
    elif not written:
        out.print(f"[green]no drift[/]: code, registration and {snapshot_path} agree")
    for note in notes:
        out.print(f"[yellow]note:[/] {note}")
