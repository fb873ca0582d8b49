#!/usr/bin/env python3
"""Old-vs-new comparison in the terminal: runs ``toolkit report`` with the same options.

Until the report command ships, it says so in one line and exits 2.
"""

import sys

from toolkit.cli.scripts import compare_success

if __name__ == "__main__":
    sys.exit(compare_success())
