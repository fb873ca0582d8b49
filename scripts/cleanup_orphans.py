#!/usr/bin/env python3
"""Fail, dead-letter and refund the stuck runs recovery gave up on (dry run without --apply).

Same options as ``toolkit cleanup orphans``, plus ``--app`` / ``--database-url``; e.g. from cron:
``scripts/cleanup_orphans.py --app myapp.jobs:tk --older-than 15m --apply --json``.
"""

import sys

try:
    from toolkit.cli.scripts import run_command
except ModuleNotFoundError as exc:  # run by a Python the toolkit is not installed in
    print(
        f"{sys.argv[0]}: {exc.name!r} is not installed for {sys.executable}; run this"
        " with the toolkit's virtualenv (.venv/bin/python scripts/cleanup_orphans.py)"
        " or use .venv/bin/toolkit cleanup orphans",
        file=sys.stderr,
    )
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(run_command(["cleanup", "orphans"]))
