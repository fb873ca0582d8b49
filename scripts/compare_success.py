#!/usr/bin/env python3
"""Old-vs-new comparison in the terminal: runs ``toolkit report`` with the same options."""

import sys

try:
    from toolkit.cli.scripts import compare_success
except ModuleNotFoundError as exc:  # run by a Python the toolkit is not installed in
    print(
        f"{sys.argv[0]}: {exc.name!r} is not installed for {sys.executable}; run this"
        " with the toolkit's virtualenv (.venv/bin/python scripts/compare_success.py)"
        " or use .venv/bin/toolkit report",
        file=sys.stderr,
    )
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(compare_success())
