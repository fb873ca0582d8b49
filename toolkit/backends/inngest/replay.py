"""A replay window for Inngest's request signatures.

The SDK (0.5.19) checks that ``X-Inngest-Signature`` signs the body and its timestamp, but not
how old the timestamp is, so a captured request would verify forever. Inngest signs every
request afresh; this refuses, before the SDK sees it, a signed request whose timestamp is
further than ``max_age`` seconds from now, in either direction (clock skew counts both ways).
The HMAC covers the timestamp, so it cannot be moved without breaking the signature.

The header is read exactly as the SDK's verifier reads it (``urllib.parse.parse_qs``, first
value of ``t`` and ``s``): a check that read it any other way could be handed a fresh timestamp
the verifier never looks at (``…&t=<now>`` appended to a captured header). A header sent twice,
or a ``t`` or ``s`` field given twice, is refused outright: which copy counts is exactly what an
attacker would play with.
"""

from __future__ import annotations

import importlib
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.requests import Request
    from starlette.responses import Response

SIGNATURE_HEADER = "x-inngest-signature"
DEFAULT_MAX_AGE = 300.0


def stale_signature(header: str | None, max_age: float, now: float | None = None) -> str | None:
    """Why a signature header falls outside the window or is ambiguous, or None (also when there
    is none: the SDK refuses an unsigned request in production mode, and that answer stays its
    own). Parsed with the SDK's own call, so the timestamp checked is the one it verifies."""
    if not header:
        return None
    names = [name for name, _ in urllib.parse.parse_qsl(header, keep_blank_values=True)]
    for name in ("t", "s"):
        if names.count(name) > 1:
            return f"signature header gives the field {name!r} more than once"
    fields = urllib.parse.parse_qs(header)  # inngest._internal.net._validate_sig, verbatim
    try:
        signed_at = int(fields.get("t", [""])[0])
    except ValueError:
        return "signature timestamp is not an integer"
    age = (time.time() if now is None else now) - signed_at
    if age > max_age:
        return f"signature is {age:.0f}s old, older than the {max_age:g}s replay window"
    if -age > max_age:
        return f"signature is dated {-age:.0f}s in the future, beyond the {max_age:g}s window"
    return None


def refused_headers(values: list[str], max_age: float) -> str | None:
    """Why a request's ``X-Inngest-Signature`` headers are refused, or None: the web frameworks
    return the first copy of a repeated header while the SDK (``dict(headers.items())``) keeps
    the last, so a repeated header is refused rather than checked on the wrong copy."""
    if len(values) > 1:
        return "the signature header is sent more than once"
    return stale_signature(values[0] if values else None, max_age)


def guard_fastapi(app: FastAPI, serve_path: str, max_age: float) -> None:
    """Answer 401 to a stale signature on ``serve_path``; everything else passes through."""
    from fastapi.responses import JSONResponse

    async def replay_window(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Any:
        if request.url.path.rstrip("/") == serve_path.rstrip("/"):
            why = refused_headers(request.headers.getlist(SIGNATURE_HEADER), max_age)
            if why is not None:
                return JSONResponse({"error": "signature_expired", "message": why}, status_code=401)
        return await call_next(request)

    app.middleware("http")(replay_window)


def guard_flask(app: Any, serve_path: str, max_age: float) -> None:
    """The same check as a Flask ``before_request`` hook."""
    flask = importlib.import_module("flask")  # an optional dependency, present with the app

    def replay_window() -> Any:
        request = flask.request
        if request.path.rstrip("/") == serve_path.rstrip("/"):
            why = refused_headers(request.headers.getlist(SIGNATURE_HEADER), max_age)
            if why is not None:
                return flask.jsonify({"error": "signature_expired", "message": why}), 401
        return None

    app.before_request(replay_window)
