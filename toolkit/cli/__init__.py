"""``toolkit`` command line. Errors map to exit codes here, and only here.

Exit codes: 0 success, 1 the operation failed, 2 bad usage or input (nothing changed).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Iterable, Iterator, MutableMapping

import click

from toolkit.cli.context import CliContext
from toolkit.cli.render import print_error
from toolkit.config import APP_ENV, DATABASE_URL_ENV
from toolkit.errors import EXIT_FAILURE, EXIT_USAGE, ToolkitError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    None,
    "--version",
    "-V",
    package_name="flagshift-toolkit",  # the distribution name (pyproject), not the import name
    prog_name="toolkit",
    message="%(prog)s %(version)s",
)
@click.option(
    "--app",
    "app_spec",
    envvar=APP_ENV,
    metavar="MODULE:ATTR",
    help=f"Your Toolkit object (or a factory); default ${APP_ENV}.",
)
@click.option(
    "--database-url",
    envvar=DATABASE_URL_ENV,
    metavar="URL",
    help=f"Default ${DATABASE_URL_ENV} or ./toolkit.db; with an app, must name the app's "
    "database (else refused).",
)
@click.pass_context
def cli(ctx: click.Context, app_spec: str | None, database_url: str | None) -> None:
    """Move inline background work onto durable backends behind a percentage flag."""
    obj = CliContext(app_spec=app_spec, database_url=database_url)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


# One module per command group, each exposing ``group``, named as its command; add new ones here.
COMMAND_MODULES = (
    "db",
    "rollout",
    "runs",
    "audit",
    "credits",
    "inngest",
    "serve",
    "worker",
    "recover",
    "cleanup",
    "refund",
    "report",
)


class LazyCommands(MutableMapping[str, click.Command]):
    """The root group's commands, each module imported when its command is first looked up.

    ``toolkit refund`` then imports neither the report nor the rollout controller, nor the
    Celery or Inngest commands: less start-up time, and one command's broken import does not
    break the others. ``--help`` lists every name; looking a name up loads that module only.
    """

    def __init__(self, modules: Iterable[str]) -> None:
        self._pending = {name: f"toolkit.cli.{name}" for name in modules}
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded and name in self._pending:
            command = importlib.import_module(self._pending.pop(name)).group
            self._loaded[name] = command
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:  # without importing anything
        return name in self._loaded or name in self._pending

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._pending.pop(name, None)
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        if self._pending.pop(name, None) is None:
            del self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter([*self._loaded, *self._pending])

    def __len__(self) -> int:
        return len(self._loaded) + len(self._pending)


cli.commands = LazyCommands(COMMAND_MODULES)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one place that turns exceptions into a line and an exit code."""
    try:
        # Not standalone, click *returns* the code of a ``click.exceptions.Exit`` (``toolkit
        # worker`` when Celery dies): dropping it would exit 0 and defeat Restart=on-failure.
        result = cli.main(args=argv, prog_name="toolkit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        print_error(f"{exc.format_message()}{hint}")
        return EXIT_USAGE
    except click.Abort:
        print_error("aborted")
        return EXIT_FAILURE
    except click.ClickException as exc:
        print_error(exc.format_message())
        return exc.exit_code
    except ToolkitError as exc:
        print_error(exc.message.splitlines()[0] if exc.message else exc.code)
        return exc.exit_code
    except KeyboardInterrupt:
        print_error("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: a line, not a traceback
        if os.environ.get("TOOLKIT_DEBUG"):
            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        print_error(
            f"internal error: {type(exc).__name__}: {first} (TOOLKIT_DEBUG=1 for a traceback)"
        )
        return EXIT_FAILURE
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def run() -> None:
    """The ``toolkit`` console script: exit with :func:`main`'s code, so scripts can rely on it."""
    sys.exit(main())


__all__ = ["cli", "main", "run"]
