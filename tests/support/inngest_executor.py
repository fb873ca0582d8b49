"""A stand-in for Inngest's executor, driving the app's real serve route over HTTP.

It learns the functions from the app's sync, matches events to triggers (``event.data.x ==
'y'`` expressions), drops repeated event ids and idempotency keys, and drives each Inngest run
with signed POSTs: it stores step data on 206 and calls again, retries a step on StepError and
the function on a 500 (attempts counted per step, as Inngest does), honours
``X-Inngest-No-Retry``, stops on 200, checks the signature of every response, emits
``inngest/function.failed`` (running the on_failure function) once a run failed for good, and
cancels a run that outlives ``timeouts.finish`` (emitting ``inngest/function.cancelled``).
Not modelled: parallel steps, sleeps, waits, invokes, backoff delays.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.inngest_fakes import (
    SIGNING_KEY,
    HarnessError,
    client,
    response_signature_ok,
    sign,
)

FUNCTION_FAILED = "inngest/function.failed"
FUNCTION_CANCELLED = "inngest/function.cancelled"
_EQUALS = re.compile(r"^event\.data\.(\w+) == '([^']*)'$")
_PATH = re.compile(r"^event\.data\.(\w+)$")
_DURATION = re.compile(r"^(\d+)([wdhms])$")
_UNIT = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def _seconds(value: Any) -> float | None:
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return int(m.group(1)) * _UNIT[m.group(2)]
    return None


# --- the executor stand-in -------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request the executor made to the serve route."""

    function: str
    inngest_run: str
    attempt: int
    status: int
    ops: tuple[str, ...] = ()
    steps: tuple[str, ...] = ()  # display names of the step ops in a 206 answer


@dataclass
class Outcome:
    function: str
    inngest_run: str
    event_id: str
    status: str  # completed | failed | cancelled | rejected
    output: Any = None
    error: Any = None


@dataclass
class Executor:
    serve_base: str
    signing_key: str = SIGNING_KEY
    functions: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    system_events: list[dict[str, Any]] = field(default_factory=list)
    deduped: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    # An unsigned 5xx is the app process dying mid-request (no SDK answered). Off: a harness
    # error (responses must be signed). On: retried as Inngest retries a failed request.
    retry_crashes: bool = False

    def __post_init__(self) -> None:
        self._inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._received: set[str] = set()
        self._pending = 0
        self._finished: set[str] = set()
        self._seen_ids: set[str] = set()
        self._idempotency: set[tuple[str, str]] = set()
        self._progress = threading.Condition()
        self._open = threading.Event()
        self._open.set()
        self._http = client()
        self._thread = threading.Thread(target=self._work, name="fake-inngest-executor")

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> Executor:
        self._thread.start()
        return self

    def close(self) -> None:
        self._open.set()
        self._inbox.put(None)
        self._thread.join(10)
        self._http.close()

    def sync(self) -> httpx.Response:
        """What Inngest Cloud does on "sync": a signed PUT; the SDK registers its functions."""
        headers = {"x-inngest-signature": sign(b"", self.signing_key)}
        return self._http.put(self.serve_base, headers=headers)

    def registered(self, body: dict[str, Any]) -> None:
        self.functions = {fn["id"]: fn for fn in body.get("functions", [])}

    # --- the inbox ----------------------------------------------------------------------------

    def submit(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            with self._progress:
                self._pending += 1
                if event.get("id"):
                    self._received.add(event["id"])
            self._inbox.put(event)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Events are accepted and queued, but no function runs until the block ends."""
        self._open.clear()
        try:
            yield
        finally:
            self._open.set()

    def received(self, event_id: str) -> bool:
        with self._progress:
            return event_id in self._received

    def finished(self, event_id: str) -> bool:
        with self._progress:
            return event_id in self._finished

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until every event received so far has been processed."""
        with self._progress:
            if not self._progress.wait_for(lambda: self._pending == 0, timeout):
                raise HarnessError(f"executor still busy after {timeout}s")

    def wait_for_progress(self, timeout: float) -> None:
        with self._progress:
            self._progress.wait(timeout)

    def calls_for(self, function: str) -> list[Call]:
        return [c for c in list(self.calls) if c.function == function]

    def _notify(self) -> None:
        with self._progress:
            self._progress.notify_all()

    def _work(self) -> None:
        while True:
            event = self._inbox.get()
            if event is None:
                return
            self._open.wait()
            try:
                self._process(event)
            except Exception as exc:  # noqa: BLE001 - surfaced by InngestHarness.wait
                self.errors.append(exc)
            finally:
                with self._progress:
                    self._pending -= 1
                    if event.get("id"):
                        self._finished.add(event["id"])
                    self._progress.notify_all()

    # --- Inngest's side of the protocol ------------------------------------------------------

    def _process(self, event: dict[str, Any]) -> None:
        event_id = event.get("id")
        if event_id:
            if event_id in self._seen_ids:  # Inngest starts nothing for a repeated event id
                self.deduped.append(event_id)
                return
            self._seen_ids.add(event_id)
        for fn in self._triggered(event):
            expression = fn.get("idempotency")
            if expression:
                key = (fn["id"], str(self._value(expression, event)))
                if key in self._idempotency:
                    self.deduped.append(f"{fn['id']}:{key[1]}")
                    continue
                self._idempotency.add(key)
            self._run(fn, event)

    def _triggered(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        matched = []
        for fn in self.functions.values():
            for trigger in fn.get("triggers", []):
                if trigger.get("event") != event.get("name"):
                    continue
                expression = trigger.get("expression")
                if expression:
                    m = _EQUALS.match(expression)
                    if m is None:
                        raise HarnessError(f"expression not modelled: {expression!r}")
                    if str(event.get("data", {}).get(m.group(1))) != m.group(2):
                        continue
                matched.append(fn)
        return matched

    @staticmethod
    def _value(expression: str, event: dict[str, Any]) -> Any:
        m = _PATH.match(expression)
        if m is None:
            raise HarnessError(f"idempotency expression not modelled: {expression!r}")
        return event.get("data", {}).get(m.group(1))

    def _run(self, fn: dict[str, Any], event: dict[str, Any]) -> Outcome:
        step = fn["steps"]["step"]
        url = step["runtime"]["url"]
        retries = (step.get("retries") or {}).get("attempts")
        max_attempts = (4 if retries is None else retries) + 1  # Inngest's default: 4 retries
        finish = _seconds((fn.get("timeouts") or {}).get("finish"))
        run = uuid.uuid4().hex.upper()[:26]
        steps: dict[str, Any] = {}
        stack: list[str] = []
        attempt = 0
        started = time.monotonic()
        while True:
            if finish is not None and time.monotonic() - started > finish:
                return self._end(fn, run, event, "cancelled", FUNCTION_CANCELLED, cancelled=True)
            body = {
                "event": event,
                "events": [event],
                "steps": steps,
                "use_api": False,
                "ctx": {
                    "run_id": run,
                    "attempt": attempt,
                    "max_attempts": max_attempts,
                    "disable_immediate_execution": False,
                    "stack": {"stack": list(stack)},
                },
            }
            raw = json.dumps(body).encode()
            response = self._http.post(
                url,
                content=raw,
                headers={
                    "content-type": "application/json",
                    "x-inngest-signature": sign(raw, self.signing_key),
                    "x-inngest-server-kind": "cloud",
                },
            )
            if not response_signature_ok(response, self.signing_key):
                if not (self.retry_crashes and response.status_code >= 500):
                    raise HarnessError(f"{fn['id']}: response {response.status_code} is not signed")
                self.calls.append(Call(fn["id"], run, attempt, response.status_code))
                if attempt + 1 < max_attempts:
                    attempt += 1
                    continue
                return self._end(fn, run, event, "failed", FUNCTION_FAILED, error=response.text)
            ops = response.json() if response.status_code == 206 else []
            self.calls.append(
                Call(
                    fn["id"],
                    run,
                    attempt,
                    response.status_code,
                    tuple(op.get("op", "?") for op in ops),
                    tuple(op.get("displayName") or op.get("name") or "?" for op in ops),
                )
            )
            self._notify()
            if response.status_code == 200:
                return self._record(fn, run, event, "completed", output=response.json())
            if response.status_code == 206:
                if len(ops) != 1:
                    raise HarnessError(f"{fn['id']}: {len(ops)} ops in one answer not modelled")
                op = ops[0]
                kind = op.get("op")
                if kind == "StepRun":
                    steps[op["id"]] = {"data": op.get("data")}
                    stack.append(op["id"])
                    attempt = 0  # Inngest counts attempts per step
                elif kind == "StepError" and attempt + 1 < max_attempts:
                    attempt += 1  # retry the step; the steps before it stay memoized
                elif kind in ("StepError", "StepFailed"):
                    error = op.get("error") or {}
                    steps[op["id"]] = {
                        "error": {k: error.get(k) for k in ("name", "message", "stack")}
                    }
                    stack.append(op["id"])
                    attempt = 0
                else:
                    raise HarnessError(f"{fn['id']}: op {kind!r} not modelled")
                continue
            if response.status_code >= 500:
                no_retry = response.headers.get("x-inngest-no-retry") == "true"
                if not no_retry and attempt + 1 < max_attempts:
                    attempt += 1
                    continue
                return self._end(fn, run, event, "failed", FUNCTION_FAILED, error=response.json())
            return self._record(fn, run, event, "rejected", error=response.text)

    def _end(
        self,
        fn: dict[str, Any],
        run: str,
        event: dict[str, Any],
        status: str,
        system_event: str,
        *,
        error: Any = None,
        cancelled: bool = False,
    ) -> Outcome:
        outcome = self._record(fn, run, event, status, error=error)
        if cancelled:
            error = {"message": "function cancelled", "name": "Error"}
        notice = {
            "name": system_event,
            "data": {"function_id": fn["id"], "run_id": run, "error": error, "event": event},
            "id": "",
            "ts": int(time.time() * 1000),
        }
        self.system_events.append(notice)
        for handler in self._triggered(notice):
            self._run(handler, notice)
        return outcome

    def _record(
        self,
        fn: dict[str, Any],
        run: str,
        event: dict[str, Any],
        status: str,
        *,
        output: Any = None,
        error: Any = None,
    ) -> Outcome:
        outcome = Outcome(fn["id"], run, event.get("id", ""), status, output, error)
        self.outcomes.append(outcome)
        return outcome
