"""The Inngest side that is not the executor: signatures, keys, and a fake Inngest API.

``FakeInngestApi`` is a real HTTP/1.1 keep-alive server on 127.0.0.1 standing in for Inngest's
event API (``POST /e/<event key>``, recorded, handed to ``on_events``) and for the endpoint the
SDK registers its functions with at sync (``POST /fn/register``). ``sign`` and
``response_signature_ok`` implement Inngest's signature scheme from the protocol, not from the
SDK, so the tests check the SDK against an independent implementation.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import re
import socket
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jcs

APP_ID = "toolkit-test"
SIGNING_KEY = "signkey-test-" + hashlib.sha256(b"toolkit test signing key").hexdigest()
OTHER_SIGNING_KEY = "signkey-test-" + hashlib.sha256(b"somebody else").hexdigest()
EVENT_KEY = "test-event-key"
CRON_SECRET = "test-cron-secret"
SERVE_PATH = "/api/inngest"


class HarnessError(AssertionError):
    """The app did something the real Inngest would reject, or the harness cannot model."""


# --- signatures (Inngest's scheme, written from the protocol, not imported from the SDK) -----


def _key(signing_key: str) -> bytes:
    return re.sub(r"^signkey-\w+-", "", signing_key).encode()


def sign(body: bytes, signing_key: str = SIGNING_KEY, timestamp: int | None = None) -> str:
    """``X-Inngest-Signature`` for a request body: HMAC-SHA256 over JCS(body) + timestamp."""
    ts = int(time.time()) if timestamp is None else timestamp
    canonical = jcs.canonicalize(json.loads(body)) if body else b""
    mac = hmac.new(_key(signing_key), canonical + str(ts).encode(), hashlib.sha256)
    return f"t={ts}&s={mac.hexdigest()}"


def response_signature_ok(response: httpx.Response, signing_key: str = SIGNING_KEY) -> bool:
    """Responses are signed over their raw bytes (no canonicalization)."""
    header = response.headers.get("x-inngest-signature", "")
    parts = dict(p.split("=", 1) for p in header.split("&") if "=" in p)
    if "t" not in parts or "s" not in parts:
        return False
    mac = hmac.new(_key(signing_key), response.content + parts["t"].encode(), hashlib.sha256)
    return hmac.compare_digest(mac.hexdigest(), parts["s"])


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()  # loading the CA bundle costs ~0.1 s: do it once


def client() -> httpx.Client:
    # TCP_NODELAY: httpx writes headers and body separately; with Nagle's algorithm and the
    # peer's delayed ACK every request would wait ~40 ms on loopback.
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    transport = httpx.HTTPTransport(verify=_tls(), socket_options=nodelay)
    return httpx.Client(timeout=30, transport=transport)


# --- the fake Inngest API: event API and sync endpoint -------------------------------------


class FakeInngestApi:
    """A real HTTP server on 127.0.0.1 standing in for Inngest's event API and REST API."""

    def __init__(self, *, event_key: str = EVENT_KEY, signing_key: str = SIGNING_KEY) -> None:
        self.event_key = event_key
        self.signing_key = signing_key
        self.posts: list[list[dict[str, Any]]] = []  # one entry per accepted POST /e/<key>
        self.rejected_keys: list[str] = []
        self.registrations: list[dict[str, Any]] = []
        self.down = False  # while True, every connection is dropped without an answer
        self.on_events: Any = None  # callable(list[event]) - the executor's inbox
        self.on_register: Any = None
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server = _ApiServer(("127.0.0.1", 0), _ApiHandler)
        self._server.api = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e for post in self.posts for e in post]

    def start(self) -> FakeInngestApi:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        with self._lock:
            for conn in self._connections:  # keep-alive connections of clients still open
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._thread.join(5)

    # called from the handler threads
    def _track(self, conn: socket.socket, alive: bool) -> None:
        with self._lock:
            (self._connections.add if alive else self._connections.discard)(conn)

    def _events_posted(self, key: str, events: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        if key != self.event_key:
            with self._lock:
                self.rejected_keys.append(key)
            return 401, {"error": "event key not found", "status": 401}
        with self._lock:
            self.posts.append(events)
        if self.on_events is not None:
            self.on_events(events)
        ids = [e.get("id") or uuid.uuid4().hex for e in events]
        return 200, {"ids": ids, "status": 200}

    def _registered(self, body: dict[str, Any], authorization: str | None) -> tuple[int, Any]:
        # The SDK authenticates with the SHA-256 of the signing key's bytes, never the key.
        hashed = hashlib.sha256(bytes.fromhex(_key(self.signing_key).decode())).hexdigest()
        if authorization != f"Bearer {hashed}":
            return 401, {"error": "missing or wrong signing key hash"}
        with self._lock:
            self.registrations.append(body)
        if self.on_register is not None:
            self.on_register(body)
        return 200, {"ok": True, "modified": True}


class _ApiServer(ThreadingHTTPServer):
    """The HTTP server, holding the fake API its handlers answer for."""

    api: FakeInngestApi


class _ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API: clients reuse connections
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall

    def setup(self) -> None:
        super().setup()
        self.api._track(self.connection, True)

    def finish(self) -> None:
        self.api._track(self.connection, False)
        super().finish()

    @property
    def api(self) -> FakeInngestApi:
        assert isinstance(self.server, _ApiServer)
        return self.server.api

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.api.down:
            self.close_connection = True  # an outage: the client sees no answer at all
            return
        try:
            data = json.loads(body or b"null")
        except ValueError:
            self._answer(400, {"error": "body is not JSON"})
            return
        if self.path.startswith("/e/") and isinstance(data, list):
            self._answer(*self.api._events_posted(self.path[3:], data))
        elif self.path.split("?")[0] == "/fn/register" and isinstance(data, dict):
            self._answer(*self.api._registered(data, self.headers.get("authorization")))
        else:
            self._answer(404, {"error": f"no route {self.path}"})

    def _answer(self, status: int, body: Any) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        pass
