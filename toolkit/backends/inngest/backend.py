"""The Inngest backend: the client configuration, one event per run, and the serve route.

Dispatch sends the job's event with the run id as event id (Inngest starts nothing for an id
it has seen in the last 24 hours) and ``data = {"run_id", "job"}``; the payload stays in the
database and reaches the function through its memoized start step. If the event API cannot
take the event, ``_send`` raises and the dispatcher applies the job's fallback policy.

Enable it with ``tk.use_backend("inngest")`` (settings from the ``INNGEST_*`` environment
variables) or with explicit arguments, or pass a ready ``client=``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import inngest

from toolkit.backends.base import BaseBackend
from toolkit.backends.inngest.functions import (
    JobFunctions,
    function_id,
)
from toolkit.backends.inngest.replay import DEFAULT_MAX_AGE, guard_fastapi, guard_flask
from toolkit.config import SERVE_PATH
from toolkit.errors import InngestConfigError, InngestSendError
from toolkit.jobs import JobRegistry, SubmittedRun
from toolkit.runtime.lifecycle import Runtime
from toolkit.runtime.serialization import describe

if TYPE_CHECKING:
    from fastapi import FastAPI

APP_ID_ENV = "TOOLKIT_INNGEST_APP_ID"
DEFAULT_APP_ID = "toolkit"
UNSIGNED_SYNC_ENV = "INNGEST_ENABLE_UNAUTHED_SYNC"


class InngestBackend(BaseBackend):
    name = "inngest"

    def __init__(
        self,
        runtime: Runtime,
        jobs: JobRegistry,
        *,
        client: inngest.Inngest | None = None,
        app_id: str | None = None,
        is_production: bool | None = None,
        event_key: str | None = None,
        signing_key: str | None = None,
        event_api_base_url: str | None = None,
        api_base_url: str | None = None,
        env: str | None = None,
        unsigned_sync: bool | None = None,
        signature_max_age: float | None = DEFAULT_MAX_AGE,
    ) -> None:
        """``jobs``: the registry the served functions are built from (rebuilt as it grows)."""
        super().__init__(runtime)
        self.jobs = jobs
        if signature_max_age is not None and (
            isinstance(signature_max_age, bool)
            or not isinstance(signature_max_age, int | float)
            or not signature_max_age > 0
        ):
            raise InngestConfigError(
                f"signature_max_age must be a positive number of seconds (or None to disable "
                f"the replay window), not {signature_max_age!r}"
            )
        self.signature_max_age = signature_max_age
        # An unsigned PUT makes the SDK re-register the app at the URL the request names
        # (its Host header): opt-in only, unless INNGEST_ENABLE_UNAUTHED_SYNC says otherwise.
        if unsigned_sync is None and UNSIGNED_SYNC_ENV not in os.environ:
            unsigned_sync = False
        self.unsigned_sync = unsigned_sync
        settings = (app_id, is_production, event_key, signing_key, event_api_base_url)
        if client is not None and any(v is not None for v in (*settings, api_base_url, env)):
            raise InngestConfigError("pass either client= or the client settings, not both")
        if client is None:
            # Anything not given here comes from INNGEST_DEV, INNGEST_EVENT_KEY,
            # INNGEST_SIGNING_KEY, INNGEST_BASE_URL, ... exactly as the SDK reads them.
            client = inngest.Inngest(
                app_id=app_id or os.environ.get(APP_ID_ENV) or DEFAULT_APP_ID,
                is_production=is_production,
                event_key=event_key,
                signing_key=signing_key,
                event_api_base_url=event_api_base_url,
                api_base_url=api_base_url,
                env=env,
            )
        self.client = client
        self._builder = JobFunctions(self.runtime, client, self.name)
        self._functions: list[inngest.Function[Any]] = []
        self._built_for: tuple[str, ...] | None = None

    # --- functions -----------------------------------------------------------------------

    def functions(self) -> list[inngest.Function[Any]]:
        """The functions to serve, built from the jobs registered so far (rebuilt on change)."""
        names = tuple(job.name for job in self.jobs if job.target == self.name)
        if names != self._built_for:
            self._functions = self._builder.build(self.jobs)
            self._built_for = names
        return list(self._functions)

    def event(self, run: SubmittedRun) -> inngest.Event:
        """The event that starts ``run``: the run id is the event id, so Inngest dedupes it."""
        rid = str(run.run_id)
        return inngest.Event(name=run.job.event, id=rid, data={"run_id": rid, "job": run.job.name})

    # --- transport -------------------------------------------------------------------------

    def _send(self, run: SubmittedRun) -> None:
        if run.job.target != self.name:
            # The flag may name any backend; only jobs targeting Inngest have a function there.
            raise InngestSendError(
                f"job {run.job.name!r} targets {run.job.target!r}: it has no Inngest function"
            )
        self.functions()  # a job Inngest cannot register fails here, before any event is sent
        missing = self.problem()
        if missing is not None:  # the SDK would raise EventKeyUnspecifiedError with no message
            raise InngestSendError(f"run {run.run_id} not sent to Inngest: {missing}")
        try:
            self.client.send_sync(self.event(run))
        except Exception as exc:  # any failure to hand over triggers the fallback
            raise InngestSendError(
                f"the Inngest event API at {self.client.event_api_origin} did not take run "
                f"{run.run_id}: {self._redact(describe(exc))}"
            ) from exc

    def problem(self) -> str | None:
        """Production mode (the SDK's default) sends events with the event key: without one,
        every send fails. The dev server needs none."""
        if self.client.is_production and not self.client.event_key:
            return (
                "no Inngest event key: set INNGEST_EVENT_KEY (or pass event_key=), "
                "or INNGEST_DEV=1 to send to the dev server"
            )
        return None

    def _redact(self, text: str) -> str:
        for secret in (self.client.event_key, self.client.signing_key):
            if secret:
                text = text.replace(secret, "***")
        return text

    # --- serving ---------------------------------------------------------------------------

    def function_id(self, job: str) -> str:
        """The id Inngest knows a job's function by: ``<app_id>-<job>``."""
        return function_id(self.client, self.jobs.get(job))

    def serve_fastapi(self, app: FastAPI, *, serve_path: str = SERVE_PATH) -> None:
        """Add the serve route (GET inspect, PUT sync, POST run) to a FastAPI app."""
        with _sdk_import():
            import inngest.fast_api

        self._serve(inngest.fast_api.serve, guard_fastapi, app, serve_path)

    def serve_flask(self, app: Any, *, serve_path: str = SERVE_PATH) -> None:
        """The same route on a Flask app (needs ``flask``)."""
        with _sdk_import():
            import inngest.flask

        self._serve(inngest.flask.serve, guard_flask, app, serve_path)

    def _serve(self, serve: Any, guard: Any, app: Any, serve_path: str) -> None:
        self._check_signing_key()
        serve(
            app,
            self.client,
            self.functions(),
            serve_path=serve_path,
            enable_unauthed_sync=self.unsigned_sync,
        )
        if self._replay_window is not None:
            guard(app, serve_path, self._replay_window)

    @property
    def _replay_window(self) -> float | None:
        """Signatures are checked in production mode only; so is their age."""
        return self.signature_max_age if self.client.is_production else None

    def close(self, *, wait: bool = True) -> None:
        """Close the SDK's pooled HTTP connections (the SDK has no close of its own)."""
        http = getattr(self.client, "_http_client", None)
        sync_client = getattr(http, "_http_client_sync", None)
        if isinstance(sync_client, httpx.Client):
            sync_client.close()

    def _check_signing_key(self) -> None:
        if self.client.is_production and not self.client.signing_key:
            raise InngestConfigError(
                "Inngest production mode verifies every request with the signing key: set "
                "INNGEST_SIGNING_KEY (or INNGEST_DEV=1 to use the dev server)"
            )


@contextlib.contextmanager
def _sdk_import() -> Iterator[None]:
    """inngest 0.5 still declares one pydantic v1-style ``Config`` class in its serve module:
    harmless, not ours, and fatal under ``-W error``. Silence exactly that warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Support for class-based `config`", category=DeprecationWarning
        )
        yield


__all__ = ["InngestBackend", "InngestConfigError", "InngestSendError"]
