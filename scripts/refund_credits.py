#!/usr/bin/env python3
"""Refund every failed or cancelled run that was debited and never refunded (dry run without
--apply). Same options as ``toolkit refund``, plus ``--app`` / ``--database-url``.
"""

import sys

try:
    from toolkit.cli.scripts import run_command
except ModuleNotFoundError as exc:  # run by a Python the toolkit is not installed in
    print(
        f"{sys.argv[0]}: {exc.name!r} is not installed for {sys.executable}; run this"
        " with the toolkit's virtualenv (.venv/bin/python scripts/refund_credits.py)"
        " or use .venv/bin/toolkit refund",
        file=sys.stderr,
    )
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(run_command(["refund"]))
