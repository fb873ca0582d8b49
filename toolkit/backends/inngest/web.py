"""HTTP entry points: the Inngest serve route and an authenticated cron route per batch job.

``create_app(tk.dispatch, tk.jobs, inngest=tk.backends.get("inngest"))`` builds a FastAPI app
with both. To add them to an app you already have:
``app.include_router(cron_router(tk.dispatch, tk.jobs))`` and
``serve_inngest(app, tk.backends["inngest"])``. They take the parts they use (a dispatch
callable, the job registry, the backend), not the application object.

The cron route (``GET`` or ``POST /api/cron/<job>``, what Vercel Cron and friends call)
requires ``Authorization: Bearer <CRON_SECRET>``, compared in constant time; without a
configured secret it refuses everything with 503. It dispatches through ``dispatch``, so
the job's flag decides whether this cron tick runs inline (legacy) or sends an Inngest event.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import uuid
from collections.abc import Iterable
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from toolkit.backends.base import BaseBackend
from toolkit.config import SERVE_PATH
from toolkit.errors import ConfigError, InvalidInput, ToolkitError
from toolkit.jobs import JobRegistry
from toolkit.store.models import RunStatus

log = logging.getLogger("toolkit.web")

CRON_SECRET_ENV = "CRON_SECRET"
CRON_PREFIX = "/api/cron"


class Handle(Protocol):
    """What the cron route reports of a dispatched run (a ``RunHandle`` has all of it)."""

    run_id: uuid.UUID
    job: str
    backend: str
    status: str
    created: bool
    route_reason: str | None
    fallback_from: str | None
    error: str | None


class Dispatch(Protocol):
    """``Toolkit.dispatch``: the route dispatches through the flag like any other caller."""

    def __call__(
        self, job: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> Handle: ...


def create_app(
    dispatch: Dispatch,
    registry: JobRegistry,
    *,
    inngest: BaseBackend | None = None,
    cron_secret: str | None = None,
    cron_jobs: Iterable[str] | None = None,
    serve_path: str = SERVE_PATH,
) -> FastAPI:
    """The cron routes, and the serve route when ``inngest`` (the Inngest backend) is given."""
    app = FastAPI(title="toolkit", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(cron_router(dispatch, registry, secret=cron_secret, jobs=cron_jobs))
    if inngest is not None:
        serve_inngest(app, inngest, serve_path=serve_path)
    return app


def serve_inngest(
    app: FastAPI, backend: BaseBackend | None, *, serve_path: str = SERVE_PATH
) -> None:
    """Add Inngest's serve route for ``backend`` (signatures verified in production mode).

    Only the Inngest backend can serve; it is not imported here, so the cron routes work in an
    install without the Inngest SDK."""
    serve = getattr(backend, "serve_fastapi", None)
    if serve is None:
        raise ConfigError("no Inngest backend: call tk.use_backend('inngest') first")
    serve(app, serve_path=serve_path)


def cron_router(
    dispatch: Dispatch,
    registry: JobRegistry,
    *,
    secret: str | None = None,
    jobs: Iterable[str] | None = None,
    prefix: str = CRON_PREFIX,
) -> APIRouter:
    """``/api/cron/<job>`` for ``jobs`` of ``registry`` (default: every job without a cost,
    i.e. batch work), each request dispatched through ``dispatch``.

    ``secret`` defaults to the ``CRON_SECRET`` environment variable, read per request.
    """
    exposed = frozenset(jobs) if jobs is not None else None
    router = APIRouter(prefix=prefix)

    def expected_secret() -> str:
        return secret if secret is not None else os.environ.get(CRON_SECRET_ENV, "")

    def is_cron_job(name: str) -> bool:
        if name not in registry:
            return False
        return name in exposed if exposed is not None else registry.get(name).cost == 0

    # A plain ``def``: FastAPI runs it on its thread pool, so a legacy run that executes
    # inline (blocking mode) does not stall the event loop.
    @router.api_route("/{job}", methods=["GET", "POST"])
    def cron(job: str, request: Request, idempotency_key: str | None = None) -> JSONResponse:
        refused = _authorize(request, expected_secret())
        if refused is not None:
            log.warning("cron %s: refused (%s)", job, refused.status_code)
            return refused
        if not is_cron_job(job):
            return _error(404, "unknown_job", f"no cron route for job {job!r}")
        try:
            handle = dispatch(job, None, idempotency_key=idempotency_key)
        except InvalidInput as exc:
            return _error(400, exc.code, exc.message)
        except ToolkitError as exc:
            log.error("cron %s: dispatch failed: %s", job, exc)
            return _error(500, exc.code, exc.message)
        status = (
            200
            if handle.status == RunStatus.COMPLETED
            else 500
            if handle.status in (RunStatus.FAILED, RunStatus.CANCELLED)
            else 202
        )
        return JSONResponse(
            {
                "run_id": str(handle.run_id),
                "job": handle.job,
                "backend": handle.backend,
                "status": handle.status,
                "created": handle.created,
                "route_reason": handle.route_reason,
                "fallback_from": handle.fallback_from,
                "error": handle.error,
            },
            status_code=status,
        )

    return router


def _authorize(request: Request, expected: str) -> JSONResponse | None:
    """None if the bearer token matches; otherwise the response to send (no secret in it)."""
    if not expected:
        return _error(
            503,
            "cron_secret_missing",
            f"{CRON_SECRET_ENV} is not configured: the cron route refuses every request",
        )
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # Digests of equal length: the comparison time says nothing about the secret, not even
    # its length.
    given = hashlib.sha256(token.strip().encode()).digest()
    wanted = hashlib.sha256(expected.encode()).digest()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given, wanted):
        response = _error(401, "unauthorized", "missing or wrong bearer token")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    return None


def _error(status: int, code: str, message: str) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "message": message}
    return JSONResponse(body, status_code=status)


__all__ = ["CRON_SECRET_ENV", "create_app", "cron_router", "serve_inngest"]
