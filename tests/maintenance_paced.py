"""``python -m tests.maintenance_paced <toolkit args>``: the toolkit CLI, started in step.

Once loaded and about to sweep it prints ``READY`` on stderr and waits for the file
``$MAINT_GO`` to exist; each batch then holds its locks ``$MAINT_BATCH_PAUSE`` seconds before
it commits. Processes that start together therefore overlap for certain, whatever their start-up
times, and the test of ``FOR UPDATE SKIP LOCKED`` splitting the work cannot pass or fail by luck.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from toolkit.cli import main
from toolkit.maintenance.sweep import Change, Sweeper

GO = Path(os.environ["MAINT_GO"])
PAUSE = float(os.environ.get("MAINT_BATCH_PAUSE", "0.02"))
_real_run = Sweeper.run
_real_audit = Sweeper._audit


def _run_in_step(self: Sweeper, *args: Any, **kwargs: Any) -> Any:
    print("READY", file=sys.stderr, flush=True)
    deadline = time.monotonic() + 120
    while not GO.exists():
        if time.monotonic() > deadline:
            raise SystemExit("no go signal within 120 s")
        time.sleep(0.005)
    return _real_run(self, *args, **kwargs)


def _audit_then_pause(self: Sweeper, s: Session, done: Sequence[Change]) -> Any:
    result = _real_audit(self, s, done)
    time.sleep(PAUSE)  # the batch's rows stay locked: the sibling must skip them
    return result


# the module's purpose: this process's sweeps wait for the go signal and pause per batch
Sweeper.run = _run_in_step  # type: ignore[method-assign]
Sweeper._audit = _audit_then_pause  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
