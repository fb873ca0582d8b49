from __future__ import annotations

import click

from toolkit.cli.context import CliContext, pass_ctx
from toolkit.cli.render import console, emit_json
from toolkit.errors import InvalidInput


@click.group("db")
def group() -> None:
    """Database schema."""


@group.command("upgrade")
@click.option(
    "--revision", default="head", show_default=True, help="Target revision id, or 'head'."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@pass_ctx
def upgrade(obj: CliContext, revision: str, as_json: bool) -> None:
    """Apply the toolkit's migrations (tables prefixed toolkit_); creates a SQLite file."""
    tk = obj.open(create=True)
    _check_revision(tk.db.alembic_config(), revision)
    tk.db.migrate(revision)
    if as_json:
        emit_json({"revision": revision, "dialect": tk.db.sql.name})
        return
    console().print(f"[green]database at {revision}[/] ({tk.db.sql.name})")


def _check_revision(config: object, revision: str) -> None:
    """Refuse (exit 2) a revision the packaged migrations do not have, before connecting."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    if not revision.strip():
        raise InvalidInput("--revision is empty: give a revision id or 'head'")
    try:
        found = ScriptDirectory.from_config(config).get_revisions(revision)  # type: ignore[arg-type]
    except CommandError as exc:
        raise InvalidInput(f"unknown --revision {revision!r}: {exc}") from None
    if not found:
        raise InvalidInput(f"unknown --revision {revision!r}")


@group.command("current")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@pass_ctx
def current(obj: CliContext, as_json: bool) -> None:
    """Show the applied migration revision.

    Through ``Database.connect``: a server that is down is "database unavailable" (exit 1),
    not an internal error.
    """
    from alembic.runtime.migration import MigrationContext

    from toolkit.store.engine import VERSION_TABLE

    tk = obj.toolkit
    with tk.db.connect() as conn:
        rev = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()
    if as_json:
        emit_json({"revision": rev, "dialect": tk.db.sql.name})
    else:
        console().print(f"revision: {rev or '[yellow]none (run toolkit db upgrade)[/]'}")
