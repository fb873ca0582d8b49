"""One consistent read on several connections: the report's heavy statements run side by side.

On PostgreSQL the lead transaction is REPEATABLE READ and exports its snapshot
(``pg_export_snapshot``); work handed to :meth:`Snapshot.submit` runs in a worker thread on
another connection that imports it (``SET TRANSACTION SNAPSHOT``), so every statement sees
exactly the same rows while several server processes do the sorting. On SQLite ``submit`` runs
the work inline in the one transaction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.orm import Session

from toolkit.errors import DatabaseError
from toolkit.store.engine import Database

T = TypeVar("T")
_SNAPSHOT_ID = re.compile(r"^[0-9A-F]+-[0-9A-F]+(-[0-9]+)?$")
WORK_MEM = "64MB"  # SET LOCAL: each percentile sort of this read stays in memory


class Snapshot:
    def __init__(
        self,
        session: Session,
        db: Database | None = None,
        snapshot_id: str | None = None,
        pool: ThreadPoolExecutor | None = None,
    ) -> None:
        self.session = session
        self._db = db
        self._id = snapshot_id
        self._pool = pool

    @property
    def parallel(self) -> bool:
        """Whether :meth:`submit` runs work on another connection at the same time (so a
        caller splits a heavy scan in two), rather than inline in this transaction."""
        return self._pool is not None

    def submit(self, work: Callable[[Session], T]) -> Future[T]:
        """Run ``work`` on the snapshot: in a worker on its own connection (PostgreSQL), else
        inline, already done."""
        if self._pool is None:
            done: Future[T] = Future()
            done.set_result(work(self.session))
            return done
        return self._pool.submit(self._imported, work)

    def _imported(self, work: Callable[[Session], T]) -> T:
        assert self._db is not None and self._id is not None
        with self._db.transaction() as s:
            s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            s.execute(text(f"SET TRANSACTION SNAPSHOT '{self._id}'"))  # must come first
            s.execute(text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
            return work(s)


@contextmanager
def snapshot(db: Database, *, workers: int = 1) -> Iterator[Snapshot]:
    """One consistent read for the block; on PostgreSQL, up to ``workers`` extra connections
    share it, and the block waits for their work before it ends."""
    with db.transaction() as s:
        if not db.is_postgres:
            yield Snapshot(s)
            return
        s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        s.execute(text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
        snapshot_id = str(s.execute(text("SELECT pg_export_snapshot()")).scalar_one())
        if not _SNAPSHOT_ID.match(snapshot_id):
            raise DatabaseError(f"unexpected snapshot id {snapshot_id!r} from PostgreSQL")
        # The pool is shut down (waiting for its work) before the exporting transaction ends.
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="toolkit-read") as pool:
            yield Snapshot(s, db, snapshot_id, pool)
