"""Entry points of the thin executables in ``scripts/`` (cron jobs and runbooks call them).

A script takes the root options (``--app``, ``--database-url``) anywhere among its own, so
``scripts/refund_credits.py --app myapp:tk --apply`` works; it then runs the same command as
``toolkit ...`` with the same exit codes (0 success, 1 failure, 2 bad input).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from toolkit.cli import main

ROOT_OPTIONS = ("--app", "--database-url")


def split_root_options(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(root options, the rest): ``--app X`` and ``--app=X`` move in front of the command."""
    root: list[str] = []
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in ROOT_OPTIONS:
            root.append(arg)
            if "=" not in arg:
                root.append(next(args, ""))
        else:
            rest.append(arg)
    return root, rest


def run_command(command: Sequence[str], argv: Sequence[str] | None = None) -> int:
    """Run ``toolkit <command> <argv>`` with the root options moved first; returns the exit code."""
    root, rest = split_root_options(sys.argv[1:] if argv is None else argv)
    return main([*root, *command, *rest])


def compare_success(argv: Sequence[str] | None = None) -> int:
    """``toolkit report``, for cron jobs and runbooks calling ``scripts/compare_success.py``."""
    return run_command(["report"], argv)
