"""Inngest without an Inngest server: a fake event API, an executor stand-in, the real route.

``inngest_harness(tk)`` starts, on loopback, and stops again on exit:

* the app's real serve route (``inngest.web.create_app``) under uvicorn in a thread, in
  production mode with a test signing key, so every request must carry a valid signature;
* a fake Inngest API (a real HTTP server thread) that records ``POST /e/<event key>`` and
  accepts the SDK's sync (``POST /fn/register``);
* an executor that plays Inngest's side of the HTTP protocol. It learns the functions from
  the sync, matches events to triggers, drops repeated event ids and idempotency keys, and
  drives each Inngest run with signed POSTs: it stores step data on 206 and calls again,
  retries on step errors and 500s, honours ``X-Inngest-No-Retry``, stops on 200, checks the
  signature of every response, calls the on_failure function once a run failed for good,
  and cancels a run that outlives ``timeouts.finish`` (emitting ``inngest/function.cancelled``).

Usage::

    with inngest_harness(tk) as h:
        tk.set_rollout("job", 100, reason="test")
        run = h.dispatch_and_wait("job", payload)   # a RunView, terminal

``h.wait(run_id)`` works for a run on any backend: it returns once the run is terminal and,
for a run whose event reached the fake API, once the executor has finished with it.

The pieces live in ``inngest_fakes`` (signatures, the fake API) and ``inngest_executor``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from tests.support.inngest_executor import Executor
from tests.support.inngest_fakes import (
    APP_ID,
    CRON_SECRET,
    EVENT_KEY,
    OTHER_SIGNING_KEY,
    SERVE_PATH,
    SIGNING_KEY,
    FakeInngestApi,
    HarnessError,
    client,
    response_signature_ok,
    sign,
)
from toolkit import RunHandle, Toolkit
from toolkit.backends.inngest.backend import InngestBackend
from toolkit.backends.inngest.web import create_app
from toolkit.store.runs import RunView

__all__ = [
    "APP_ID", "CRON_SECRET", "EVENT_KEY", "OTHER_SIGNING_KEY", "SIGNING_KEY", "Executor",
    "FakeInngestApi", "HarnessError", "InngestHarness", "ServeThread", "inngest_harness",
    "response_signature_ok", "sign",
]  # fmt: skip

# --- the app's route under uvicorn -----------------------------------------------------------


class ServeThread:
    """uvicorn serving ``app`` on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says
        # TCP, and without it every keep-alive request waits ~40 ms for a delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="uvicorn"
        )

    def start(self) -> ServeThread:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise HarnessError("uvicorn did not start")
            time.sleep(0.005)
        return self

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


class WsgiServeThread:
    """werkzeug serving a WSGI (Flask) ``app`` on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        from werkzeug.serving import make_server

        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="werkzeug")

    def start(self) -> WsgiServeThread:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(10)
        self._server.server_close()


def flask_app(tk: Toolkit) -> Any:
    """A Flask app with nothing but the Inngest serve route (the cron routes are FastAPI's)."""
    from flask import Flask

    app = Flask("toolkit-test")
    backend = tk.backends["inngest"]
    assert isinstance(backend, InngestBackend)
    backend.serve_flask(app, serve_path=SERVE_PATH)
    return app


# --- the harness -----------------------------------------------------------------------------


@dataclass
class InngestHarness:
    tk: Toolkit
    backend: InngestBackend
    api: FakeInngestApi
    executor: Executor
    base_url: str
    http: httpx.Client

    @property
    def serve_url(self) -> str:
        return self.base_url + SERVE_PATH

    def function_id(self, job: str) -> str:
        return self.backend.function_id(job)

    # --- running work ---------------------------------------------------------------------

    def dispatch(self, job: str, payload: Any = None, **options: Any) -> RunHandle:
        return self.tk.dispatch(job, payload, **options)

    def dispatch_and_wait(
        self, job: str, payload: Any = None, *, timeout: float = 10.0, **options: Any
    ) -> RunView:
        return self.wait(self.dispatch(job, payload, **options).run_id, timeout=timeout)

    def wait(self, run_id: uuid.UUID, *, timeout: float = 10.0) -> RunView:
        """The run once terminal and, if its event reached Inngest, once Inngest is done."""
        deadline = time.monotonic() + timeout
        while True:
            if self.executor.errors:
                raise self.executor.errors[0]
            view = self.tk.runs.get(run_id)
            event_id = str(run_id)
            if view.terminal and (
                not self.executor.received(event_id) or self.executor.finished(event_id)
            ):
                return view
            if time.monotonic() > deadline:
                raise HarnessError(f"run {run_id} is {view.status} after {timeout}s")
            self.executor.wait_for_progress(0.02)

    # --- raw HTTP, for the security tests ---------------------------------------------------

    def first_request(self, job: str, run_id: uuid.UUID) -> bytes:
        """The body Inngest would POST to start ``run_id``'s function."""
        rid = str(run_id)
        event = {
            "name": self.tk.jobs.get(job).event,
            "id": rid,
            "data": {"run_id": rid, "job": job},
        }
        body = {
            "event": event,
            "events": [event],
            "steps": {},
            "use_api": False,
            "ctx": {
                "run_id": "01TESTRUN",
                "attempt": 0,
                "max_attempts": 4,
                "disable_immediate_execution": False,
                "stack": {"stack": []},
            },
        }
        return json.dumps(body).encode()

    def post_to_serve(self, job: str, body: bytes, *, signature: str | None) -> httpx.Response:
        headers = {"content-type": "application/json"}
        if signature is not None:
            headers["x-inngest-signature"] = signature
        params = {"fnId": self.function_id(job), "stepId": "step"}
        return self.http.post(self.serve_url, content=body, headers=headers, params=params)

    def cron(self, job: str, *, token: str | None = CRON_SECRET, **params: str) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}".strip()} if token is not None else {}
        return self.http.get(f"{self.base_url}/api/cron/{job}", headers=headers, params=params)

    @contextlib.contextmanager
    def event_api_down(self) -> Iterator[None]:
        """The event API drops every connection: what the SDK sees when Inngest is unreachable."""
        self.api.down = True
        try:
            yield
        finally:
            self.api.down = False


@contextlib.contextmanager
def inngest_harness(
    tk: Toolkit,
    *,
    cron_secret: str | None = CRON_SECRET,
    app_id: str = APP_ID,
    framework: str = "fastapi",
) -> Iterator[InngestHarness]:
    """Enable the Inngest backend on ``tk`` against the fakes and serve the app for real.

    Register the jobs first: the functions are synced when the harness starts.
    ``framework="flask"`` serves the route from a Flask app under werkzeug instead.
    """
    api = FakeInngestApi().start()
    stack = contextlib.ExitStack()
    stack.callback(api.close)
    try:
        backend = tk.use_backend(
            "inngest",
            app_id=app_id,
            is_production=True,
            event_key=EVENT_KEY,
            signing_key=SIGNING_KEY,
            event_api_base_url=api.url,
            api_base_url=api.url,
        )
        assert isinstance(backend, InngestBackend)
        server: ServeThread | WsgiServeThread
        if framework == "flask":
            server = WsgiServeThread(flask_app(tk)).start()
        else:
            app = create_app(tk.dispatch, tk.jobs, inngest=backend, cron_secret=cron_secret)
            server = ServeThread(app).start()
        stack.callback(server.close)
        executor = Executor(server.url + SERVE_PATH).start()
        stack.callback(executor.close)
        api.on_events = executor.submit
        api.on_register = executor.registered
        synced = executor.sync()
        if synced.status_code != 200 or not executor.functions:
            raise HarnessError(f"sync failed: {synced.status_code} {synced.text}")
        http = stack.enter_context(client())
        yield InngestHarness(tk, backend, api, executor, server.url, http)
    finally:
        stack.close()
