"""The Toolkit object: one per application, holding every piece; no module-level state."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from openfeature import api as openfeature_api
from openfeature.provider import FeatureProvider
from openfeature.provider.no_op_provider import NoOpProvider

from toolkit import config
from toolkit.backends import load_backend
from toolkit.backends.base import BaseBackend
from toolkit.backends.legacy import LegacyBackend, LegacyMode
from toolkit.config import LEGACY
from toolkit.dispatch.dispatcher import Dispatcher, DispatchRequest, Route, RunHandle
from toolkit.dispatch.handles import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_MAX_PAYLOAD_DEPTH,
    PayloadLimits,
)
from toolkit.errors import ConfigError
from toolkit.events import Events, Listener, RunEvent
from toolkit.flags.changes import FlagChanges
from toolkit.flags.provider import RolloutProvider
from toolkit.jobs import JobFunction, JobRegistry, JobSpec, RateLimit, make_spec
from toolkit.maintenance.sweep import Parts
from toolkit.runtime.lifecycle import Runtime
from toolkit.store.audit import AuditLog
from toolkit.store.credits import Credits
from toolkit.store.engine import Database
from toolkit.store.lifecycle import RunStore
from toolkit.store.records import RunRecords
from toolkit.store.rollouts import RolloutStore, RolloutView, check_key
from toolkit.store.runs import RunQueries
from toolkit.store.sweeps import SweepStore


class Toolkit:
    """Declare jobs once, dispatch through the flag, and operate rollouts.

    ``flag_provider`` replaces the built-in rollouts-table provider with any OpenFeature
    provider (flagd, LaunchDarkly, ``InMemoryProvider`` in tests): the dispatcher only asks
    for a string variant naming a backend.

    ``max_payload_bytes`` (default 1 MiB of UTF-8 JSON) and ``max_payload_depth`` (default 64
    nested containers, at most 500) bound every dispatched payload: one past them is refused
    with InvalidPayload before any write, since a payload is stored, shipped to its backend
    and read back on every attempt. Bad values are ConfigError.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        legacy_mode: LegacyMode = "thread",
        legacy_workers: int = 4,
        flag_provider: FeatureProvider | None = None,
        flag_cache_ttl: float = 1.0,
        retry_base_delay: float = 1.0,
        retry_max_delay: float = 60.0,
        engine_options: Mapping[str, Any] | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_payload_depth: int = DEFAULT_MAX_PAYLOAD_DEPTH,
    ) -> None:
        # Validated first (ConfigError), before anything is opened.
        payload_limits = PayloadLimits(max_payload_bytes, max_payload_depth)
        if flag_cache_ttl < 0 or flag_cache_ttl > 1.0:
            raise ConfigError("flag_cache_ttl must be between 0 and 1 second")
        #: The lifecycle listeners (:meth:`on`).
        self.events = Events()
        url = config.database_url(database_url)
        self.db = Database(url, events=self.events, **dict(engine_options or {}))
        self.jobs = JobRegistry()
        # The store: every write to the toolkit's tables goes through these.
        self.credits = Credits(self.db)
        self.store = RunStore(self.db, self.credits)
        self.records = RunRecords(self.db, self.credits)
        self.sweeps = SweepStore(self.store)
        self.audit = AuditLog(self.db)
        self.rollouts = RolloutStore(self.db)
        self.runs = RunQueries(self.db)
        self.runtime = Runtime(
            self.store, self.jobs, base_delay=retry_base_delay, max_delay=retry_max_delay
        )
        self.legacy = LegacyBackend(self.runtime, mode=legacy_mode, max_workers=legacy_workers)
        self.backends: dict[str, BaseBackend] = {LEGACY: self.legacy}

        self.provider = flag_provider or RolloutProvider(self.rollouts.all, ttl=flag_cache_ttl)
        # A domain of our own: the global OpenFeature default provider stays the host app's.
        self.flag_domain = f"toolkit-{uuid.uuid4().hex[:12]}"
        openfeature_api.set_provider_and_wait(self.provider, self.flag_domain)
        self.flags = FlagChanges(self.jobs, self.rollouts, self.provider, self.backends)
        self.dispatcher = Dispatcher(
            jobs=self.jobs,
            client=openfeature_api.get_client(self.flag_domain),
            records=self.records,
            runs=self.store,
            reads=self.runs,
            backends=self.backends,
            legacy=self.legacy,
            payload_limits=payload_limits,
        )
        #: What the maintenance sweeps use (recover, cleanup, refund), and nothing else.
        self.maintenance = Parts(
            db=self.db,
            jobs=self.jobs,
            backends=self.backends,
            dispatcher=self.dispatcher,
            sweeps=self.sweeps,
        )

    # --- listening -----------------------------------------------------------------------------

    def on(self, kind: type[RunEvent] | Listener, listener: Listener | None = None) -> Any:
        """Listen to lifecycle events: each transition, once, after its commit.

        ``tk.on(fn)`` hears every event; ``tk.on(RunFailed, fn)`` one type (and its
        subclasses); ``@tk.on(RunFailed)`` decorates. A listener runs in the thread that made
        the transition; one that raises is logged and never breaks the run::

            from toolkit.events import RunFailed

            @tk.on(RunFailed)
            def alert(event: RunFailed) -> None:
                pager.send(f"{event.job} run {event.run_id} failed: {event.error}")

        Returns the listener; ``tk.events.off(listener)`` removes it.
        """
        return self.events.on(kind, listener)

    # --- declaring ---------------------------------------------------------------------------

    def job(
        self,
        name: str,
        *,
        event: str | None = None,
        retries: int = 3,
        timeout: str | float = "15m",
        target: str = "inngest",
        cost: int = 0,
        fallback: str = "legacy",
        rate_limit: RateLimit | None = None,
        concurrency: int | None = None,
        **options: Any,
    ) -> Callable[[JobFunction], JobFunction]:
        """Register ``fn(ctx, payload)`` as a job; the function itself is returned unchanged."""

        def register(fn: JobFunction) -> JobFunction:
            self.jobs.add(
                make_spec(
                    fn,
                    name,
                    event=event,
                    retries=retries,
                    timeout=timeout,
                    target=target,
                    cost=cost,
                    fallback=fallback,
                    rate_limit=rate_limit,
                    concurrency=concurrency,
                    options=options,
                )
            )
            return fn

        return register

    def use_backend(
        self, name: str, backend: BaseBackend | None = None, **options: Any
    ) -> BaseBackend:
        """Enable a backend by name (lazily imported) or register a ready instance."""
        if name == LEGACY:
            raise ConfigError("the legacy backend is always enabled")
        self.backends[name] = (
            backend
            if backend is not None
            else load_backend(name, self.runtime, self.jobs, **options)
        )
        return self.backends[name]

    # --- dispatching -------------------------------------------------------------------------

    def dispatch(
        self,
        job: str,
        payload: Any = None,
        *,
        key: str | None = None,
        idempotency_key: str | None = None,
        account: str | None = None,
    ) -> RunHandle:
        """Record the run (and its debit: both or neither) and hand it to the backend the flag picks
        for ``key`` (default: the run id). A seen ``idempotency_key`` returns that run's handle with
        ``created=False``; a refused hand-over falls back per the job."""
        return self.dispatcher.dispatch(
            job, payload, key=key, idempotency_key=idempotency_key, account=account
        )

    def dispatch_many(self, job: str, requests: Iterable[DispatchRequest | Any]) -> list[RunHandle]:
        """:meth:`dispatch` for a batch: every run and debit in one transaction, then each
        hand-over; handles in request order. An item that is not a DispatchRequest is a payload."""
        return self.dispatcher.dispatch_many(job, requests)

    def route(self, job: str, key: str) -> Route:
        """Which backend ``key`` would get now and why, without dispatching anything; a flag error
        routes to legacy rather than raising."""
        return self.dispatcher.route(self.jobs.get(job), check_key(key))

    def cancel(self, run_id: object, *, reason: str = "cancelled by operator") -> bool:
        """Cancel a QUEUED or RUNNING run and refund its debit; False if it is unknown or already
        finished. A running attempt stops at its next step. ``run_id`` may be a unique prefix
        (a short id as tables show it); an unknown or ambiguous prefix raises."""
        return self.runtime.cancel(self.runs.resolve(run_id), reason)

    # --- rollouts ------------------------------------------------------------------------------

    def rollout(self, job: str) -> RolloutView:
        """The job's rollout as stored now: percentage, state, lists, version."""
        return self.flags.view(job)

    def set_rollout(
        self,
        job: str,
        percentage: object,
        *,
        reason: str,
        actor: str | None = None,
        expected_version: int | None = None,
    ) -> RolloutView:
        """Route ``percentage`` of the job's keys (sticky per key) to its target backend.

        Audited with ``reason``; ``expected_version`` makes it an optimistic edit that fails
        with ``VersionConflict`` if the rollout changed since it was read (without it, a
        concurrent change is retried on). Above 0 % the job's target must be enabled here
        (``use_backend``), else ``BackendNotEnabled``. The percentage already in effect changes
        nothing: no new version, no audit entry, ``changed`` False on the returned view.
        """
        return self.flags.set_percentage(
            job, percentage, reason=reason, actor=actor, expected_version=expected_version
        )

    def rollback(self, job: str, *, reason: str, actor: str | None = None) -> RolloutView:
        """0% at once: new work goes to legacy; runs already in flight finish where they are.
        Always wins: a concurrent change is retried on, never reported as a conflict."""
        return self.flags.set_percentage(
            job, 0, reason=reason, actor=actor, action="rollout.rollback"
        )

    def set_listed(
        self,
        job: str,
        key: str,
        *,
        which: str,
        present: bool = True,
        reason: str,
        actor: str | None = None,
    ) -> RolloutView:
        """Put ``key`` on (or take it off) the allow or deny list, before the percentage."""
        return self.flags.set_listed(
            job, key, which=which, present=present, reason=reason, actor=actor
        )

    def set_killed(
        self, job: str, killed: bool, *, reason: str, actor: str | None = None
    ) -> RolloutView:
        """The kill switch: every key to legacy at once, whatever the percentage."""
        return self.flags.set_killed(job, killed, reason=reason, actor=actor)

    # --- lifecycle -----------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the toolkit's tables to the newest schema (Alembic upgrade to head); a no-op when
        they are current."""
        self.db.migrate()

    def close(self, *, wait: bool = True) -> None:
        """Drain in-flight local work (with ``wait``), then release connections.

        The flag domain gets a no-op provider: OpenFeature has no way to remove a domain, and
        this drops the registry's reference to our provider (and through it, the database).
        """
        for backend in self.backends.values():
            backend.close(wait=wait)
        openfeature_api.set_provider(NoOpProvider(), self.flag_domain)
        self.db.dispose()

    def __enter__(self) -> Toolkit:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


__all__ = ["DispatchRequest", "JobSpec", "RunHandle", "Toolkit"]
