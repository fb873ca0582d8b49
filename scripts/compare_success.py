#!/usr/bin/env python3
"""Old-vs-new comparison in the terminal: runs ``toolkit report`` with the same options."""

import sys

from toolkit.cli.scripts import compare_success

if __name__ == "__main__":
    sys.exit(compare_success())
