"""The maintenance sweeps' writes: refund or fail a locked page of runs, in the sweep's
transaction, the way this database does it best.

A sweep hands over its locking page query and gets a :class:`PageAction` back, built once per
invocation. Where the dialect runs a batch as one statement (PostgreSQL), the action is that
statement (:mod:`toolkit.store.batches`); elsewhere it is the locking SELECT and then
:meth:`Credits.refund_many_in` or :meth:`RunStore.fail_many_in`. Both leave the same rows; both
emit one event per run failed or refunded, after the sweep's transaction commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Row, Select
from sqlalchemy.orm import Session

from toolkit.events import RunEvent, RunFailed, RunRefunded
from toolkit.store.batches import Batch, BatchStatement, cleanup_batch, refund_batch
from toolkit.store.lifecycle import RunStore
from toolkit.store.models import RunStatus, utcnow

#: What a page action did: the rows it locked (page order), and ``{run id: credits}`` for
#: each run it refunded (refund) or failed (cleanup).
Taken = tuple[Sequence[Row[Any]], dict[uuid.UUID, int]]


class PageAction:
    """Lock a page (``page`` with its parameters ``keys``) and act on it, in ``s``."""

    def take(self, s: Session, keys: Mapping[str, Any]) -> Taken:
        """Lock the page (``keys`` set its parameters) and act on it in ``s``: the rows locked,
        in page order, and the credits per run acted on."""
        raise NotImplementedError


class SweepStore:
    """Builds the page actions of the refund and cleanup sweeps."""

    def __init__(self, runs: RunStore) -> None:
        self.runs = runs
        self.db = runs.db
        self.credits = runs.credits

    def page_columns(self) -> Sequence[Any]:
        """Columns the sweep's applied page must read beside the run's own."""
        return self.db.sql.page_columns()

    def refunds(self, page: Select[Any], *, reason: str) -> PageAction:
        """Refund each run of the page its debit, once (only FAILED or CANCELLED runs)."""
        if self.db.sql.one_statement_batches:
            statement = refund_batch(self.credits, page, reason=reason)
            return _OneStatement(self, statement, None, reason)
        return _Refunds(self, page, reason)

    def failures(
        self, page: Select[Any], errors: Mapping[RunStatus, str], *, reason: str
    ) -> PageAction:
        """Fail each run of the page still in one of ``errors``' statuses, with that error, a
        dead letter and its refund (``reason``)."""
        if self.db.sql.one_statement_batches:
            statement = cleanup_batch(self.db, self.credits, page, errors, reason=reason)
            return _OneStatement(self, statement, dict(errors), reason)
        return _Failures(self, page, errors, reason)


class _Refunds(PageAction):
    def __init__(self, store: SweepStore, page: Select[Any], reason: str) -> None:
        self.store, self.page, self.reason = store, page, reason

    def take(self, s: Session, keys: Mapping[str, Any]) -> Taken:
        rows = s.connection().execute(self.page, keys).all()
        # One call for the whole batch: its accounts are locked together, in order.
        ids = [r.id for r in rows]
        return rows, self.store.credits.refund_many_in(s, ids, reason=self.reason)


class _Failures(PageAction):
    def __init__(
        self, store: SweepStore, page: Select[Any], errors: Mapping[RunStatus, str], reason: str
    ) -> None:
        self.store, self.page, self.errors, self.reason = store, page, errors, reason

    def take(self, s: Session, keys: Mapping[str, Any]) -> Taken:
        rows = s.connection().execute(self.page, keys).all()
        ids = [r.id for r in rows]
        return rows, self.store.runs.fail_many_in(s, ids, self.errors, reason=self.reason)


class _OneStatement(PageAction):
    """The PostgreSQL batch; ``errors`` when it fails runs (cleanup), None when it refunds."""

    def __init__(
        self,
        store: SweepStore,
        statement: BatchStatement,
        errors: dict[RunStatus, str] | None,
        reason: str,
    ) -> None:
        self.store, self.statement, self.errors, self.reason = store, statement, errors, reason

    def take(self, s: Session, keys: Mapping[str, Any]) -> Taken:
        batch = self.statement.execute(s, keys)
        if self.errors is None:
            done = batch.refunded
        else:
            moved, credits = batch.moved, batch.refunded
            done = {
                r.id: credits.get(r.id, 0) for r in batch.rows if moved is None or r.id in moved
            }
        if self.store.db.events.listeners:
            self.store.db.after_commit(s, self._events(batch, done))
        return batch.rows, done

    def _events(self, batch: Batch, done: dict[uuid.UUID, int]) -> list[RunEvent]:
        now, out = utcnow(), list[RunEvent]()
        for r in batch.rows:
            if r.id not in done:
                continue
            if self.errors is not None:
                error = self.errors.get(RunStatus(r.status))
                out.append(RunFailed(run_id=r.id, job=r.job, backend=r.backend, at=now,
                                     error=error))  # fmt: skip
            if r.id in batch.refunded:
                out.append(
                    RunRefunded(
                        run_id=r.id, job=r.job, backend=r.backend, at=now, account=r.account,
                        amount=batch.refunded[r.id], reason=self.reason,
                        status=RunStatus.FAILED.value if self.errors is not None else r.status,
                    )
                )  # fmt: skip
        return out
