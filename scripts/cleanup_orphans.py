#!/usr/bin/env python3
"""Fail, dead-letter and refund the stuck runs recovery gave up on (dry run without --apply).

Same options as ``toolkit cleanup orphans``, plus ``--app`` / ``--database-url``; e.g. from cron:
``scripts/cleanup_orphans.py --app myapp.jobs:tk --older-than 15m --apply --json``.
"""

import sys

from toolkit.cli.scripts import run_command

if __name__ == "__main__":
    sys.exit(run_command(["cleanup", "orphans"]))
