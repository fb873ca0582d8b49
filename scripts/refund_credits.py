#!/usr/bin/env python3
"""Refund every failed or cancelled run that was debited and never refunded (dry run without
--apply). Same options as ``toolkit refund``, plus ``--app`` / ``--database-url``.
"""

import sys

from toolkit.cli.scripts import run_command

if __name__ == "__main__":
    sys.exit(run_command(["refund"]))
