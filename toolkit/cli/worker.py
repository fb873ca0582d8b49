"""``toolkit worker``: a Celery worker for the app's jobs (the celery import stays lazy)."""

from __future__ import annotations

import click

from toolkit.cli.context import CliContext, pass_ctx
from toolkit.errors import AppLoadError, ConfigError

POOLS = ("prefork", "threads", "solo")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@click.command("worker")
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes (threads with --pool threads); default: one per CPU.",
)
@click.option(
    "--queues",
    "-Q",
    default=None,
    metavar="Q1,Q2",
    help="Comma-separated queues to consume; default: every queue the app's jobs use.",
)
@click.option(
    "--pool",
    "-P",
    type=click.Choice(POOLS),
    default="prefork",
    show_default=True,
    help="prefork enforces time limits and survives a crashed child; solo is for debugging.",
)
@click.option(
    "--loglevel",
    "-l",
    type=click.Choice(LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
)
@click.option("--hostname", "-n", default=None, help="Node name, e.g. worker1@%h.")
@pass_ctx
def group(
    obj: CliContext,
    concurrency: int | None,
    queues: str | None,
    pool: str,
    loglevel: str,
    hostname: str | None,
) -> None:
    """Run a Celery worker for the jobs of --app (broker: $TOOLKIT_BROKER_URL)."""
    selected = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    if queues is not None and not selected:
        raise click.BadParameter("give at least one queue name", param_hint="--queues")
    if not obj.app_spec:
        raise AppLoadError("toolkit worker needs your app: pass --app module:attr or TOOLKIT_APP")
    tk = obj.toolkit
    if not len(tk.jobs):
        raise ConfigError(f"the app {obj.app_spec!r} declares no jobs: nothing to run")
    backend = tk.backends.get("celery")
    if backend is None:
        backend = tk.use_backend("celery")  # configured from TOOLKIT_BROKER_URL

    from toolkit.backends.celery.backend import CeleryBackend  # lazy: only the worker needs celery

    if not isinstance(backend, CeleryBackend):
        raise ConfigError(
            f"the app's 'celery' backend is a {type(backend).__name__}, not a CeleryBackend"
        )
    code = backend.run_worker(
        concurrency=concurrency,
        queues=selected,
        pool=pool,
        loglevel=loglevel.upper(),
        hostname=hostname,
    )
    if code:
        raise click.exceptions.Exit(code)
