"""``python -m tests.maintenance_kill <toolkit args>``: the toolkit CLI, stopped inside a batch.

Batch number ``$MAINT_STOP_AT_BATCH`` writes its changes and its audit entry, then, before its
transaction commits, prints ``IN-BATCH`` and sleeps: the test SIGKILLs the process right there.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from toolkit.cli import main
from toolkit.maintenance.sweep import Change, Sweeper

STOP_AT = int(os.environ.get("MAINT_STOP_AT_BATCH", "1"))
_real_audit = Sweeper._audit
_batches = 0


def _audit_then_hang(self: Sweeper, s: Session, done: Sequence[Change]) -> Any:
    global _batches
    _real_audit(self, s, done)
    _batches += 1
    if _batches == STOP_AT:
        s.flush()  # everything of this batch is written, nothing of it committed
        print("IN-BATCH", flush=True)
        time.sleep(600)


# the module's purpose: this process's sweeps hang inside the chosen batch
Sweeper._audit = _audit_then_hang  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
