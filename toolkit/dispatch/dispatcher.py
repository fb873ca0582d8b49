"""Dispatch: choose a backend by flag, record the run (with its debit) atomically, hand it over.

Flag evaluation never raises: any error routes the run to legacy and the reason is stored on
the run. The backend is chosen once, at dispatch, and recorded, so a flag flip never moves a
run that is already in flight.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from sqlalchemy import Row, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from toolkit.backends.base import BaseBackend
from toolkit.backends.legacy import LegacyBackend
from toolkit.config import LEGACY
from toolkit.dispatch.handles import (
    DispatchRequest,
    PayloadLimits,
    Reroute,
    Route,
    RunHandle,
    as_request,
    check_payload,
    check_str,
)
from toolkit.errors import BackendUnavailable, InvalidInput
from toolkit.jobs import JobRegistry, JobSpec, SubmittedRun
from toolkit.runtime.claims import AttemptResult, Outcome
from toolkit.store.lifecycle import RunStore
from toolkit.store.models import Run, RunStatus, utcnow
from toolkit.store.records import RunRecords
from toolkit.store.runs import RunQueries

__all__ = ["DispatchRequest", "Dispatcher", "Reroute", "Route", "RunHandle"]

Planned = tuple[uuid.UUID, DispatchRequest, Route]


class Dispatcher:
    """Routes, records and hands over runs; the writes are the store's (``records``, ``runs``).

    ``backends`` is the live mapping of enabled backends (legacy included); ``reads`` gives
    the handles their ``refresh``; ``payload_limits`` bound what a payload may be.
    """

    def __init__(
        self,
        *,
        jobs: JobRegistry,
        client: OpenFeatureClient,
        records: RunRecords,
        runs: RunStore,
        reads: RunQueries,
        backends: Mapping[str, BaseBackend],
        legacy: LegacyBackend,
        payload_limits: PayloadLimits | None = None,
    ) -> None:
        self._jobs = jobs
        self._payload_limits = payload_limits or PayloadLimits()
        self._client = client
        self._records = records
        self._runs = runs
        self._reads = reads
        self._backends = backends
        self._legacy = legacy

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
        if backend != LEGACY and backend not in self._backends:
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
        """One run: validate, route, record (a seen idempotency key returns the existing run,
        ``created=False``), then hand over under the job's fallback policy."""
        job = self._jobs.get(job_name)
        request = self._validate(job, DispatchRequest(payload, key, idempotency_key, account))
        run_id = uuid.uuid4()
        route = self.route(job, request.key or str(run_id))
        row = self._row(job, request, run_id, route)
        records = self._records
        existing = records.record_with_debit(row, job.cost) if job.cost else records.record(row)
        if existing is not None:
            return self._handle(existing, created=False)
        return self._submit(job, [(run_id, request, route)])[0]

    def dispatch_many(
        self, job_name: str, requests: Iterable[DispatchRequest | Mapping[str, Any] | Any]
    ) -> list[RunHandle]:
        """A batch fan-out: every run and every debit in one transaction, then hand-over."""
        job = self._jobs.get(job_name)
        batch = [self._validate(job, as_request(r)) for r in requests]
        if not batch:
            return []
        planned: list[Planned] = []
        for request in batch:
            run_id = uuid.uuid4()
            planned.append((run_id, request, self.route(job, request.key or str(run_id))))
        keys = [r.idempotency_key for r in batch if r.idempotency_key is not None]
        rows = [self._row(job, request, run_id, route) for run_id, request, route in planned]
        try:
            existing, fresh = self._records.record_many(job.name, rows, keys, job.cost)
        except IntegrityError:  # lost a race on an idempotency key: the winners' runs exist now
            existing, fresh = self._records.record_many(job.name, rows, keys, job.cost)
        inserted = {row["id"] for row in fresh}
        submitted = iter(self._submit(job, [p for p in planned if p[0] in inserted]))
        handles: list[RunHandle] = []
        for run_id, request, _ in planned:
            ikey = request.idempotency_key
            if run_id in inserted:
                handles.append(next(submitted))
            else:
                assert ikey is not None
                handles.append(self._handle(existing[ikey], created=False))
        return handles

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
                _reader=self._reads.get,
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
        if not isinstance(result, AttemptResult) or handle.status != RunStatus.QUEUED.value:
            # Handed over (still QUEUED for all we know; a custom backend may return anything
            # from its transport), or the fallback failed it.
            return
        if result.outcome is Outcome.COMPLETED:
            handle.status, handle.error = RunStatus.COMPLETED.value, None
        elif result.outcome is Outcome.FAILED:
            handle.status, handle.error = RunStatus.FAILED.value, result.error
        else:  # SKIPPED: someone else moved it meanwhile (a cancel, a sweep): read where to
            handle.refresh()

    def _fallback(
        self, job: JobSpec, run: SubmittedRun, handle: RunHandle, exc: BackendUnavailable
    ) -> AttemptResult | None:
        """The backend refused the run: to legacy if the job allows it (and legacy takes it,
        whose result is returned), otherwise the run fails ("not submitted") and its debit is
        refunded."""
        reason = str(exc)
        fallback = job.fallback == "legacy" and handle.backend != LEGACY
        if fallback and self._runs.fall_back(
            run.run_id, from_backend=handle.backend, to=LEGACY, reason=reason
        ):
            handle.fallback_from, handle.backend = handle.backend, LEGACY
            handle.route_reason = f"fallback: {reason}"
            try:
                return self._legacy.submit(run)
            except BackendUnavailable as again:
                reason = f"{reason}; legacy fallback also failed: {again}"
        self._runs.fail(run.run_id, f"not submitted: {reason}", expected=(RunStatus.QUEUED,))
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
        row = self._runs.recovery_row(s, run_id)
        if row is None:
            return None
        job = self._jobs.get(row.job)
        if route is None:
            route = self.route(job, row.targeting_key)
        reason = route.reason if route.error is None else f"{route.reason}: {route.error}"
        if not self._runs.reroute_in(
            s,
            run_id,
            seen=(status, recoveries, attempts),
            backend=route.backend,
            route_reason=f"recovery {recoveries + 1}: {reason}",
            job=row.job,
            previous_backend=row.backend,
        ):
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
            _reader=self._reads.get,
        )
        self._hand_over(run.job, run, handle)
        return handle

    def redispatch(
        self, run_id: uuid.UUID, *, status: str, recoveries: int, attempts: int
    ) -> RunHandle | None:
        """:meth:`reroute_in` in a transaction of its own, then :meth:`resubmit`."""
        with self._runs.db.transaction() as s:
            row = s.execute(
                select(Run.job, Run.targeting_key).where(Run.id == run_id)
            ).one_or_none()
        if row is None:
            return None
        route = self.route(self._jobs.get(row.job), row.targeting_key)
        with self._runs.db.transaction() as s:
            reroute = self.reroute_in(
                s, run_id, status=status, recoveries=recoveries, attempts=attempts, route=route
            )
        return None if reroute is None else self.resubmit(reroute)

    # --- helpers ---------------------------------------------------------------------------

    def _backend(self, name: str) -> BaseBackend:
        return self._legacy if name == LEGACY else self._backends[name]

    def _validate(self, job: JobSpec, request: DispatchRequest) -> DispatchRequest:
        key = check_str("key", request.key)
        ikey = check_str("idempotency_key", request.idempotency_key)
        account = check_str("account", request.account)
        if job.cost and account is None:
            raise InvalidInput(f"job {job.name!r} costs {job.cost} credits: pass account=")
        payload = check_payload(job.name, request.payload, self._payload_limits)
        return DispatchRequest(payload, key, ikey, account)

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
            "arm": route.backend,  # the flag's assignment: fallback/recovery never change it
            "status": RunStatus.QUEUED.value,
            "payload": request.payload,
            "attempts": 0,
            "account": request.account if job.cost else None,
            "cost": job.cost,
            "route_reason": reason[:500],
            "recoveries": 0,
            "created_at": utcnow(),
        }

    def _handle(self, run: Row[Any], *, created: bool) -> RunHandle:
        return RunHandle(
            run.id,
            run.job,
            run.backend,
            run.status,
            created=created,
            route_reason=run.route_reason,
            fallback_from=run.fallback_from,
            error=run.error,
            _reader=self._reads.get,
        )
