"""Dispatch: choose a backend by flag, record the run (with its debit) atomically, hand it over.

Flag evaluation never raises: any error routes the run to legacy and the reason is stored on
the run. The backend is chosen once, at dispatch, and recorded, so a flag flip never moves a
run that is already in flight.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from toolkit.backends.base import BaseBackend
from toolkit.config import LEGACY
from toolkit.dispatch.handles import (
    DispatchRequest,
    Reroute,
    Route,
    RunHandle,
    as_request,
    check_payload,
    check_str,
)
from toolkit.errors import BackendUnavailable, InvalidInput
from toolkit.jobs import JobSpec, SubmittedRun
from toolkit.runtime.lifecycle import AttemptResult, Outcome
from toolkit.store.models import CreditEntry, LedgerKind, Run, RunStatus, utcnow

if TYPE_CHECKING:
    from toolkit.app import Toolkit

__all__ = ["DispatchRequest", "Dispatcher", "Reroute", "Route", "RunHandle"]

log = logging.getLogger("toolkit.dispatcher")


class Dispatcher:
    def __init__(self, toolkit: Toolkit, client: OpenFeatureClient) -> None:
        self._tk = toolkit
        self._client = client
        # Built once: statement construction costs more CPU than a dispatch's own work.
        self._insert_run = insert(Run)
        self._insert_run_once = (
            toolkit.db.insert(Run)
            .on_conflict_do_nothing(index_elements=["job", "idempotency_key"])
            .returning(Run.id)
        )

    # --- routing ---------------------------------------------------------------------------

    def route(self, job: JobSpec, key: str) -> Route:
        """Ask the flag which backend ``key`` gets; never raises, errors route to legacy."""
        try:
            details = self._client.get_string_details(
                job.flag_key, LEGACY, EvaluationContext(targeting_key=key)
            )
        except Exception as exc:  # noqa: BLE001 - the client should not raise; if it does, legacy
            return Route(job.name, key, LEGACY, "flag error", error=f"{type(exc).__name__}: {exc}")
        reason = str(details.reason or "UNKNOWN")
        if details.error_code is not None:
            error = f"{details.error_code}: {details.error_message or ''}".strip()
            return Route(job.name, key, LEGACY, f"flag error ({reason})", details.variant, error)
        backend = details.value
        if backend != LEGACY and backend not in self._tk.backends:
            return Route(
                job.name,
                key,
                LEGACY,
                f"{reason}: backend {backend!r} is not configured",
                details.variant,
                f"backend {backend!r} not configured",
            )
        rule = details.flag_metadata.get("rule") if details.flag_metadata else None
        return Route(
            job.name, key, backend, f"{reason} ({rule})" if rule else reason, details.variant
        )

    # --- dispatch --------------------------------------------------------------------------

    def dispatch(
        self,
        job_name: str,
        payload: Any,
        *,
        key: str | None = None,
        idempotency_key: str | None = None,
        account: str | None = None,
    ) -> RunHandle:
        job = self._tk.jobs.get(job_name)
        request = self._validate(job, DispatchRequest(payload, key, idempotency_key, account))
        run_id = uuid.uuid4()
        route = self.route(job, request.key or str(run_id))
        row = self._row(job, request, run_id, route)
        existing = self._record_with_debit(job, row) if job.cost else self._record(row)
        if existing is not None:
            return existing
        return self._submit(job, [(run_id, request, route)])[0]

    def _record(self, row: dict[str, Any]) -> RunHandle | None:
        """Insert the run: one statement, committed by itself (no debit to commit with it).

        With an idempotency key, the insert does nothing on a duplicate and the existing run is
        returned; a concurrent dispatch with the same key cannot win in between.
        """
        with self._tk.db.autocommit() as conn:
            if row["idempotency_key"] is None:
                conn.execute(self._insert_run, row)
                return None
            if conn.execute(self._insert_run_once, row).first() is not None:
                return None
            existing = self._existing(conn, row["job"], [row["idempotency_key"]])
        return self._handle(existing[row["idempotency_key"]], created=False)

    def _record_with_debit(self, job: JobSpec, row: dict[str, Any]) -> RunHandle | None:
        """Insert the run and debit its account in one transaction: both or neither."""
        ikey = row["idempotency_key"]
        try:
            with self._tk.db.connect() as conn:
                if ikey is not None:
                    existing = self._existing(conn, job.name, [ikey])
                    if existing:
                        return self._handle(existing[ikey], created=False)
                conn.execute(self._insert_run, row)
                self._tk.credits.debit_in(conn, row["account"], row["id"], job.cost)
        except IntegrityError:
            # A concurrent dispatch with the same idempotency key won the insert.
            with self._tk.db.connect() as conn:
                existing = self._existing(conn, job.name, [ikey or ""])
            if not existing:
                raise
            return self._handle(existing[ikey or ""], created=False)
        return None

    def dispatch_many(
        self, job_name: str, requests: Iterable[DispatchRequest | Mapping[str, Any] | Any]
    ) -> list[RunHandle]:
        """A batch fan-out: every run and every debit in one transaction, then hand-over."""
        job = self._tk.jobs.get(job_name)
        batch = [self._validate(job, as_request(r)) for r in requests]
        if not batch:
            return []
        planned: list[tuple[uuid.UUID, DispatchRequest, Route]] = []
        for request in batch:
            run_id = uuid.uuid4()
            planned.append((run_id, request, self.route(job, request.key or str(run_id))))
        keys = [r.idempotency_key for r in batch if r.idempotency_key is not None]
        try:
            handles, fresh = self._insert_batch(job, planned, keys)
        except IntegrityError:  # lost a race on an idempotency key: the winners' runs exist now
            handles, fresh = self._insert_batch(job, planned, keys)
        submitted = iter(self._submit(job, fresh))
        return [h if h is not None else next(submitted) for h in handles]

    def _insert_batch(
        self, job: JobSpec, planned: list[tuple[uuid.UUID, DispatchRequest, Route]], keys: list[str]
    ) -> tuple[list[RunHandle | None], list[tuple[uuid.UUID, DispatchRequest, Route]]]:
        handles: list[RunHandle | None] = []
        fresh: list[tuple[uuid.UUID, DispatchRequest, Route]] = []
        with self._tk.db.connect() as s:
            existing = self._existing(s, job.name, keys) if keys else {}
            first_in_batch: dict[str, uuid.UUID] = {}
            for run_id, request, route in planned:
                ikey = request.idempotency_key
                if ikey is not None and ikey in existing:
                    handles.append(self._handle(existing[ikey], created=False))
                    continue
                if ikey is not None and ikey in first_in_batch:
                    raise InvalidInput(f"idempotency key {ikey!r} appears twice in one batch")
                if ikey is not None:
                    first_in_batch[ikey] = run_id
                handles.append(None)
                fresh.append((run_id, request, route))
            if fresh:
                # Insert in idempotency-key order: two batches sharing keys then take the unique
                # index's locks in the same order, so they wait on each other, never deadlock.
                rows = [self._row(job, r, i, ro) for i, r, ro in fresh]
                rows.sort(
                    key=lambda row: (row["idempotency_key"] is None, row["idempotency_key"] or "")
                )
                s.execute(insert(Run), rows)
                if job.cost:
                    self._debit_batch(s, job, fresh)
        return handles, fresh

    def _debit_batch(
        self, s: Connection, job: JobSpec, fresh: list[tuple[uuid.UUID, DispatchRequest, Route]]
    ) -> None:
        per_account: dict[str, list[uuid.UUID]] = defaultdict(list)
        for run_id, request, _ in fresh:
            assert request.account is not None
            per_account[request.account].append(run_id)
        for account, run_ids in sorted(per_account.items()):  # fixed lock order
            self._tk.credits.spend_in(s, account, job.cost * len(run_ids))
            s.execute(
                insert(CreditEntry),
                [
                    {
                        "account": account,
                        "run_id": rid,
                        "kind": LedgerKind.DEBIT.value,
                        "amount": job.cost,
                        "created_at": utcnow(),
                    }
                    for rid in run_ids
                ],
            )

    # --- hand-over and fallback ------------------------------------------------------------

    def _submit(
        self, job: JobSpec, runs: Sequence[tuple[uuid.UUID, DispatchRequest, Route]]
    ) -> list[RunHandle]:
        handles: list[RunHandle] = []
        for run_id, request, route in runs:
            handle = RunHandle(
                run_id,
                job.name,
                route.backend,
                RunStatus.QUEUED.value,
                route_reason=route.reason,
                _reader=self._tk.runs.get,
            )
            submitted = SubmittedRun(run_id, job, request.payload, request.key or str(run_id))
            self._hand_over(job, submitted, handle)
            handles.append(handle)
        return handles

    def _hand_over(self, job: JobSpec, submitted: SubmittedRun, handle: RunHandle) -> None:
        """Submit (falling back per the job's policy); a run the backend executed in this
        thread (blocking legacy) reports where it ended from the result, not a re-read."""
        backend = self._backend(handle.backend)
        try:
            result = backend.submit(submitted)
        except BackendUnavailable as exc:
            result = self._fallback(job, submitted, handle, exc)
        if result is None or handle.status != RunStatus.QUEUED.value:
            return  # handed over (still QUEUED for all we know), or the fallback failed it
        if result.outcome is Outcome.COMPLETED:
            handle.status, handle.error = RunStatus.COMPLETED.value, None
        elif result.outcome is Outcome.FAILED:
            handle.status, handle.error = RunStatus.FAILED.value, result.error
        else:  # SKIPPED: someone else moved it meanwhile (a cancel, a sweep): read where to
            handle.refresh()

    def _fallback(
        self, job: JobSpec, run: SubmittedRun, handle: RunHandle, exc: BackendUnavailable
    ) -> AttemptResult | None:
        reason = str(exc)
        log.warning("backend %s refused run %s: %s", handle.backend, run.run_id, reason)
        if job.fallback == "legacy" and handle.backend != LEGACY:
            with self._tk.db.transaction() as s:
                moved = s.execute(
                    update(Run)
                    .where(Run.id == run.run_id, Run.status == RunStatus.QUEUED)
                    .values(
                        backend=LEGACY,
                        fallback_from=handle.backend,
                        route_reason=f"fallback: {reason}"[:500],
                    )
                ).rowcount  # type: ignore[attr-defined]
            if moved == 1:
                handle.fallback_from, handle.backend = handle.backend, LEGACY
                handle.route_reason = f"fallback: {reason}"
                try:
                    return self._tk.legacy.submit(run)
                except BackendUnavailable as again:
                    reason = f"{reason}; legacy fallback also failed: {again}"
        self._tk.runtime.fail(run.run_id, f"not submitted: {reason}", expected=(RunStatus.QUEUED,))
        handle.status, handle.error = RunStatus.FAILED.value, f"not submitted: {reason}"
        return None

    # --- recovery: the same run, submitted again ----------------------------------------------

    def reroute_in(
        self,
        s: Session,
        run_id: uuid.UUID,
        *,
        status: str,
        recoveries: int,
        attempts: int,
        route: Route | None = None,
    ) -> Reroute | None:
        """Recovery, in the caller's transaction: route a stuck run again, under the same id.

        The backend is chosen by the flag *now*, for the run's targeting key (after a rollback
        the orphans of the new backend go to legacy). One conditional UPDATE, matching the
        status, recovery count and attempt the caller saw, moves the run to QUEUED on that
        backend and counts the recovery; None if the run moved meanwhile. A RUNNING run's old
        attempt, if it is alive after all, is fenced out at its next step. Submit the result
        with :meth:`resubmit` after the transaction commits.

        Pass ``route`` (from :meth:`route`, evaluated before the transaction) when the flag
        provider may read the database: on SQLite that read would wait for this transaction's
        write lock.
        """
        row = s.execute(
            select(Run.job, Run.payload, Run.targeting_key, Run.backend).where(Run.id == run_id)
        ).one_or_none()
        if row is None:
            return None
        job = self._tk.jobs.get(row.job)
        if route is None:
            route = self.route(job, row.targeting_key)
        reason = route.reason if route.error is None else f"{route.reason}: {route.error}"
        moved = s.execute(
            update(Run)
            .where(
                Run.id == run_id,
                Run.status == status,
                Run.recoveries == recoveries,
                Run.attempts == attempts,
            )
            .values(
                status=RunStatus.QUEUED.value,
                backend=route.backend,
                recoveries=recoveries + 1,
                next_attempt_at=utcnow(),
                route_reason=f"recovery {recoveries + 1}: {reason}"[:500],
            )
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            return None
        submitted = SubmittedRun(run_id, job, row.payload, row.targeting_key)
        return Reroute(submitted, route, row.backend, recoveries + 1)

    def resubmit(self, reroute: Reroute) -> RunHandle:
        """Hand a rerouted run over again; the job's fallback policy applies as at dispatch."""
        run, route = reroute.run, reroute.route
        handle = RunHandle(
            run.run_id,
            run.job.name,
            route.backend,
            RunStatus.QUEUED.value,
            route_reason=f"recovery {reroute.recovery}: {route.reason}",
            _reader=self._tk.runs.get,
        )
        self._hand_over(run.job, run, handle)
        return handle

    def redispatch(
        self, run_id: uuid.UUID, *, status: str, recoveries: int, attempts: int
    ) -> RunHandle | None:
        """:meth:`reroute_in` in a transaction of its own, then :meth:`resubmit`."""
        with self._tk.db.transaction() as s:
            row = s.execute(
                select(Run.job, Run.targeting_key).where(Run.id == run_id)
            ).one_or_none()
        if row is None:
            return None
        route = self.route(self._tk.jobs.get(row.job), row.targeting_key)
        with self._tk.db.transaction() as s:
            reroute = self.reroute_in(
                s, run_id, status=status, recoveries=recoveries, attempts=attempts, route=route
            )
        return None if reroute is None else self.resubmit(reroute)

    # --- helpers ---------------------------------------------------------------------------

    def _backend(self, name: str) -> BaseBackend:
        return self._tk.legacy if name == LEGACY else self._tk.backends[name]

    def _validate(self, job: JobSpec, request: DispatchRequest) -> DispatchRequest:
        key = check_str("key", request.key)
        ikey = check_str("idempotency_key", request.idempotency_key)
        account = check_str("account", request.account)
        if job.cost and account is None:
            raise InvalidInput(f"job {job.name!r} costs {job.cost} credits: pass account=")
        return DispatchRequest(check_payload(job.name, request.payload), key, ikey, account)

    @staticmethod
    def _row(
        job: JobSpec, request: DispatchRequest, run_id: uuid.UUID, route: Route
    ) -> dict[str, Any]:
        reason = route.reason if route.error is None else f"{route.reason}: {route.error}"
        return {
            "id": run_id,
            "job": job.name,
            "idempotency_key": request.idempotency_key,
            "targeting_key": request.key or str(run_id),
            "backend": route.backend,
            "status": RunStatus.QUEUED.value,
            "payload": request.payload,
            "attempts": 0,
            "account": request.account if job.cost else None,
            "cost": job.cost,
            "route_reason": reason[:500],
            "recoveries": 0,
            "created_at": utcnow(),
        }

    @staticmethod
    def _existing(s: Session | Connection, job: str, keys: list[str]) -> dict[str, Any]:
        rows = s.execute(
            select(
                Run.id,
                Run.job,
                Run.backend,
                Run.status,
                Run.route_reason,
                Run.fallback_from,
                Run.error,
                Run.idempotency_key,
            ).where(Run.job == job, Run.idempotency_key.in_(keys))
        ).all()
        return {r.idempotency_key: r for r in rows}

    def _handle(self, run: Any, *, created: bool) -> RunHandle:
        return RunHandle(
            run.id,
            run.job,
            run.backend,
            run.status,
            created=created,
            route_reason=run.route_reason,
            fallback_from=run.fallback_from,
            error=run.error,
            _reader=self._tk.runs.get,
        )
