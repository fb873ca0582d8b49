"""A refund or cleanup batch on PostgreSQL as one statement: lock the page, act, say what was done.

The generic batch (:meth:`toolkit.maintenance.sweep.Sweep.take`) is a locking SELECT, then one
statement per step that finds the same runs again by id and re-reads their debits; at a million
runs the round trips and the re-reading cost about as much as the work. Here the locking SELECT
is a CTE (``FOR NO KEY UPDATE SKIP LOCKED``, as before) that also reads each run's debit, each
step is a data-modifying CTE fed by the one before, and one result says what was done. The
rules do not change: the lock re-checks the page's condition, the UPDATE re-checks the status,
a refund is ``INSERT ... ON CONFLICT (run_id, kind) DO NOTHING RETURNING`` and only what it
returns is credited, to accounts locked in account order (:func:`.postgres.credited`).

Only the store runs these (:mod:`toolkit.store.sweeps`), and only where the dialect says a
batch is one statement.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    CTE,
    Boolean,
    DateTime,
    Row,
    Select,
    bindparam,
    func,
    literal,
    literal_column,
    null,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from toolkit.store.credits import Credits
from toolkit.store.engine import Database
from toolkit.store.models import CreditEntry, Run, RunStatus, utcnow
from toolkit.store.postgres import DEBIT_COLUMNS, credited
from toolkit.store.transitions import dead_letters, failing

__all__ = ["DEBIT_COLUMNS", "Batch", "BatchStatement", "cleanup_batch", "refund_batch"]

# The parts of a batch's result, one result for one round trip: the page (every run locked, in
# page order, with its debit), then one row saying whether every run moved (cleanup) and every
# debit was refunded. Only if not (a concurrent invocation got there first), the runs moved and
# the refunds made follow, so the usual batch sends one row per run and Python reads nothing
# twice.
PAGE, DONE, MOVED, REFUNDED = 0, 1, 2, 3
_COLUMNS = (
    "job", "backend", "status", "created_at", "amount", "all_moved", "all_refunded", "account"
)  # fmt: skip
_NOW = bindparam("now", type_=CreditEntry.created_at.type)
_AWARE = DateTime(timezone=True)  # psycopg's values are aware already: no per-row conversion


class Batch:
    """What one statement did to a locked page."""

    __slots__ = ("moved", "refunded", "rows")

    def __init__(self, result: Sequence[Any]) -> None:  # rows, by index: the hot loop
        self.rows: list[Row[Any]] = []  # id, job, backend, status, created_at, amount, account
        self.moved: set[uuid.UUID] | None = None  # None: every run of the page
        self.refunded: dict[uuid.UUID, int] = {}  # run id: credits refunded
        moved: set[uuid.UUID] = set()
        refunded: dict[uuid.UUID, int] = {}
        every_refund, page = False, self.rows.append
        for row in result:
            part = row[0]
            if part == PAGE:
                page(row)
            elif part == DONE:
                if not row[7]:
                    self.moved = moved
                every_refund = row[8]
            elif part == MOVED:
                moved.add(row[1])
            else:
                refunded[row[1]] = row[6]
        if not every_refund:
            self.refunded = refunded
        elif self.moved is None:
            self.refunded = {r.id: r.amount for r in self.rows if r.amount is not None}
        else:
            self.refunded = {r.id: r.amount for r in self.rows if r.id in moved and r.amount}


def _part(part: int, run_id: Any, **columns: Any) -> Select[Any]:
    return select(
        literal_column(str(part)).label("part"),
        run_id.label("id"),
        *(columns.get(name, null()).label(name) for name in _COLUMNS),
    )


def _count(cte: CTE, *where: ColumnElement[bool]) -> Any:
    return select(func.count()).select_from(cte).where(*where).scalar_subquery()


class BatchStatement:
    """One batch as one statement, built once per invocation around its page query: the page,
    whether every run ``moved`` (if the batch moves runs) and every debit was ``refunded``,
    credited to their accounts. The CTEs in ``also`` are not read: PostgreSQL runs every
    data-modifying CTE."""

    def __init__(
        self,
        page: CTE,
        refunded: CTE,
        *,
        source: CTE,
        moved: CTE | None = None,
        also: Sequence[CTE] = (),
    ) -> None:
        c = page.c
        every_refund = _count(refunded) == _count(source, source.c.amount.is_not(None))
        every_move = _count(moved) == _count(page) if moved is not None else literal(True)
        parts: list[Select[Any]] = [
            _part(PAGE, c.id, job=c.job, backend=c.backend, status=c.status,
                  created_at=type_coerce(c.created_at, _AWARE), amount=c.amount,
                  account=c.account),
            _part(DONE, null(), all_moved=type_coerce(every_move, Boolean),
                  all_refunded=type_coerce(every_refund, Boolean)),
            _part(REFUNDED, refunded.c.run_id, amount=refunded.c.amount).where(~every_refund),
        ]  # fmt: skip
        if moved is not None:
            parts.append(_part(MOVED, moved.c.id).where(~every_move))
        order: list[Any] = [literal_column(c) for c in ("part", "created_at", "id")]
        query = union_all(*parts).order_by(*order)
        self.query = query.add_cte(*also, credited(refunded, _NOW))

    def execute(self, s: Session, keys: Mapping[str, Any]) -> Batch:
        """Run it in ``s`` with the page's parameters ``keys``."""
        return Batch(s.connection().execute(self.query, {**keys, "now": utcnow()}).all())


def refund_batch(credits: Credits, page: Select[Any], *, reason: str) -> BatchStatement:
    """Lock the page and refund each of its runs' debits, once."""
    locked = page.cte("page")
    c = locked.c
    refunds = credits.refunds_of(c.id, c.account, c.amount, c.status, reason=reason, now=_NOW)
    return BatchStatement(locked, refunds.cte("refunded"), source=locked)


def cleanup_batch(
    db: Database,
    credits: Credits,
    page: Select[Any],
    errors: Mapping[RunStatus, str],
    *,
    reason: str,
) -> BatchStatement:
    """Lock the page and fail its runs as ``RunStore.fail_many_in`` does (both build on
    :func:`.transitions.failing` and :func:`.transitions.dead_letters`): FAILED
    with the error for the status each was in, a dead letter each, and their refunds."""
    locked = page.cte("page")
    failed = (
        failing(Run.id == locked.c.id, errors, _NOW)
        .returning(*(getattr(Run, k) for k in ("id", "job", "payload", "error", "attempts")))
        .returning(Run.status, locked.c.account, locked.c.amount)  # the debit, as paged
        .cte("failed")
    )
    dead = dead_letters(
        db.insert,
        select(*(failed.c[k] for k in ("id", "job", "payload", "error", "attempts")), _NOW),
    ).cte("dead")
    f = failed.c
    refunds = credits.refunds_of(f.id, f.account, f.amount, f.status, reason=reason, now=_NOW)
    return BatchStatement(locked, refunds.cte("refunded"), source=failed, moved=failed, also=[dead])
