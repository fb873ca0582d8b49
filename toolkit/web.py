"""The web routes for an application's Toolkit: ``create_app(tk)`` and friends.

The routes themselves (:mod:`toolkit.backends.inngest.web`) take only the parts they use (a
dispatch callable, the job registry, the Inngest backend); this module, at the application
level, wires them from a :class:`~toolkit.app.Toolkit`::

    from toolkit.web import create_app
    app = create_app(tk)                      # /api/inngest (when enabled) and /api/cron/<job>
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter, FastAPI

from toolkit.app import Toolkit
from toolkit.backends.inngest import web
from toolkit.backends.inngest.web import CRON_PREFIX, CRON_SECRET_ENV
from toolkit.config import SERVE_PATH


def create_app(
    tk: Toolkit,
    *,
    cron_secret: str | None = None,
    cron_jobs: Iterable[str] | None = None,
    serve_path: str = SERVE_PATH,
) -> FastAPI:
    """A FastAPI app with the cron routes, and Inngest's serve route if the app enabled it."""
    return web.create_app(
        tk.dispatch,
        tk.jobs,
        inngest=tk.backends.get("inngest"),
        cron_secret=cron_secret,
        cron_jobs=cron_jobs,
        serve_path=serve_path,
    )


def serve_inngest(app: FastAPI, tk: Toolkit, *, serve_path: str = SERVE_PATH) -> None:
    """Mount Inngest's serve route for the app's Inngest backend on an existing FastAPI app."""
    web.serve_inngest(app, tk.backends.get("inngest"), serve_path=serve_path)


def cron_router(
    tk: Toolkit,
    *,
    secret: str | None = None,
    jobs: Iterable[str] | None = None,
    prefix: str = CRON_PREFIX,
) -> APIRouter:
    """``/api/cron/<job>`` for the app's batch jobs (or ``jobs``), behind ``CRON_SECRET``."""
    return web.cron_router(tk.dispatch, tk.jobs, secret=secret, jobs=jobs, prefix=prefix)


__all__ = ["CRON_SECRET_ENV", "create_app", "cron_router", "serve_inngest"]
