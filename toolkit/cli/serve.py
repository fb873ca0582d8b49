"""``toolkit serve``: the app's HTTP routes (Inngest serve route, cron routes) under uvicorn."""

from __future__ import annotations

import click

from toolkit.cli.context import CliContext, pass_ctx
from toolkit.errors import ConfigError


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@pass_ctx
def group(obj: CliContext, host: str, port: int, log_level: str) -> None:
    """Serve /api/inngest and /api/cron/<job> (secret from $CRON_SECRET).

    Point the Inngest dev server at it with
    ``npx inngest-cli dev -u http://127.0.0.1:8000/api/inngest``.
    """
    if not obj.app_spec:
        raise ConfigError("pass --app (or set TOOLKIT_APP): serve needs your jobs")
    try:
        import uvicorn

        from toolkit.web import create_app
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"toolkit serve needs the {exc.name!r} package: pip install 'flagshift-toolkit[web]'"
        ) from exc
    tk = obj.toolkit
    app = create_app(tk)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
