from __future__ import annotations

import click

from toolkit.cli.context import CliContext, pass_ctx
from toolkit.cli.render import console, emit_json


@click.group("db")
def group() -> None:
    """Database schema."""


@group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@pass_ctx
def upgrade(obj: CliContext, revision: str) -> None:
    """Apply the toolkit's migrations (tables prefixed toolkit_)."""
    tk = obj.toolkit
    tk.db.migrate(revision)
    console().print(f"[green]database at {revision}[/] ({tk.db.sql.name})")


@group.command("current")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def current(obj: CliContext, as_json: bool) -> None:
    """Show the applied migration revision."""
    from alembic.runtime.migration import MigrationContext

    from toolkit.store.engine import VERSION_TABLE

    tk = obj.toolkit
    with tk.db.engine.connect() as conn:
        rev = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()
    if as_json:
        emit_json({"revision": rev, "dialect": tk.db.sql.name})
    else:
        console().print(f"revision: {rev or '[yellow]none (run toolkit db upgrade)[/]'}")
