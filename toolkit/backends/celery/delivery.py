"""What a Celery worker does with one delivered message: the run id → runtime calls.

1. A job with a shared rate limit asks the Redis bucket first. No token: the message is
   re-published with a countdown (a reserved slot, or "ask again"), the worker is not blocked.
2. Claim the run: QUEUED → RUNNING, or *take over* a RUNNING run whose heartbeat is stale.
   The staleness test is part of the conditional UPDATE (``Runtime.claim(stale_before=...)``).
3. Not claimed: finished or unknown → the message is a duplicate and is dropped; RUNNING with a
   fresh heartbeat → its holder is alive (a broker redelivery after a connection loss, a
   requeue after a child died a moment ago, a recovery re-dispatch), so the message is
   re-published to look again once that heartbeat would be stale.
4. Run one attempt through the runtime, with a heartbeat thread beating the run while it runs.
   Outcome RETRY → re-publish with the backoff as countdown; the run waits QUEUED.

Why the heartbeat and not the broker's ``redelivered`` flag decides a take-over: the flag is
set when RabbitMQ loses a connection to a worker that may still be running the attempt, and it
is absent on a recovery re-dispatch of a run whose worker really died. A heartbeat that stopped
for ``stale_after`` seconds says the holder is gone (or hung), and the fencing in the runtime
stops an old holder that comes back from publishing anything. Two live workers therefore never
run the same attempt.

Anything that goes wrong outside the job (database or Redis unreachable) re-publishes the
message with ``retry_delay``; if even that fails the message is rejected back to the broker.
Nothing is acknowledged that was not handed on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from datetime import timedelta
from typing import Any, Protocol

from celery.exceptions import Reject, SoftTimeLimitExceeded

from toolkit.backends.celery.config import CelerySettings
from toolkit.backends.celery.ratelimit import RedisTokenBucket, Verdict
from toolkit.errors import ToolkitError
from toolkit.jobs import JobSpec
from toolkit.runtime.lifecycle import Claim, Outcome, Runtime
from toolkit.store.models import RunStatus, utcnow

log = logging.getLogger("toolkit.backends.celery")

# Raised by billiard inside the job at the job's timeout: the runtime fails the run at once.
TIME_LIMIT = (SoftTimeLimitExceeded,)


class Heartbeat:
    """One daemon thread per worker process that keeps the held attempts' heartbeats fresh.

    Steps beat too, but a single model call can outlast ``stale_after``; this thread is what
    lets another worker tell a long step from a dead worker.
    """

    def __init__(self, runtime: Runtime, interval: float) -> None:
        self._runtime = runtime
        self._interval = interval
        self._held: dict[tuple[uuid.UUID, int], Claim] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, claim: Claim) -> None:
        """Beat this attempt until released; starts the beating thread if none is running."""
        with self._lock:
            self._held[(claim.run_id, claim.attempt)] = claim
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="toolkit-heartbeat", daemon=True
                )
                self._thread.start()

    def release(self, claim: Claim) -> None:
        """Stop beating this attempt; the thread ends once nothing is held."""
        with self._lock:
            self._held.pop((claim.run_id, claim.attempt), None)

    def _loop(self) -> None:
        while True:
            time.sleep(self._interval)
            with self._lock:
                claims = list(self._held.values())
                if not claims:  # nothing held: stop; the next hold() starts a new thread
                    self._thread = None
                    return
            for claim in claims:
                try:
                    alive = self._runtime.heartbeat(claim)
                except ToolkitError as exc:  # database unreachable: try again next beat
                    log.warning("heartbeat of run %s failed: %s", claim.run_id, exc)
                    continue
                if not alive:  # taken over, cancelled or failed: fenced at its next step
                    self.release(claim)


class Transport(Protocol):
    """What a delivery needs of its backend (``CeleryBackend``): publish and the rate limiter."""

    def publish(
        self, job: JobSpec, run_id: uuid.UUID, *, countdown: float = 0.0, reserved: bool = False
    ) -> None:
        """One message for the run after ``countdown`` seconds; ``reserved``: its rate-limit
        token is already taken."""

    def limiter(self) -> RedisTokenBucket:
        """The shared rate-limit bucket; raises when it cannot exist (no Redis)."""


class Delivery:
    """Turns one delivered message into runtime calls; see the module docstring."""

    def __init__(self, runtime: Runtime, settings: CelerySettings, transport: Transport) -> None:
        self.runtime = runtime
        self.settings = settings
        self.transport = transport
        self._heartbeats: dict[int, Heartbeat] = {}
        # A soft time limit that fires while a lifecycle listener runs must still stop the job.
        events = runtime.db.events
        events.passthrough = tuple(dict.fromkeys((*events.passthrough, *TIME_LIMIT)))

    def heartbeat(self) -> Heartbeat:
        """The current process's heartbeat (a forked pool child starts its own)."""
        pid = os.getpid()
        beat = self._heartbeats.get(pid)
        if beat is None:
            beat = self._heartbeats[pid] = Heartbeat(self.runtime, self.settings.heartbeat_interval)
        return beat

    # --- one message ---------------------------------------------------------------------

    def handle(self, task: Any, job: JobSpec, run_id_text: str, *, reserved: bool) -> str:
        """Process one message; raises only Reject (re-publishing failed), so nothing is
        acknowledged unhandled. Returns what happened ("malformed", "deferred", an outcome...),
        for the task's result."""
        try:
            run_id = uuid.UUID(str(run_id_text))
        except ValueError:
            log.error("task %s got a malformed run id %r: message dropped", task.name, run_id_text)
            return "malformed"
        try:
            return self._deliver(job, run_id, reserved=reserved)
        except Reject:
            raise
        except Exception as exc:
            if isinstance(exc, ToolkitError | SoftTimeLimitExceeded):
                log.warning("run %s: %s; trying again in %gs", run_id, exc, self._retry_delay)
            else:
                log.exception("run %s: unexpected error; trying again later", run_id)
            self._republish(job, run_id, self._retry_delay, why=type(exc).__name__)
            return "deferred"

    @property
    def _retry_delay(self) -> float:
        return self.settings.retry_delay

    def _deliver(self, job: JobSpec, run_id: uuid.UUID, *, reserved: bool) -> str:
        if job.rate_limit is not None and not reserved:
            admission = self.transport.limiter().acquire(job.rate_limit)
            if not admission.allowed:
                self._republish(
                    job,
                    run_id,
                    admission.wait,
                    reserved=admission.verdict is Verdict.RESERVED,
                    why=f"rate limit {job.rate_limit.key!r}: {admission.verdict}",
                )
                return f"rate-limited ({admission.verdict})"
        stale_before = utcnow() - timedelta(seconds=self.settings.stale_after)
        claim = self.runtime.claim(run_id, take_over=True, stale_before=stale_before)
        if claim is None:
            return self._not_claimed(job, run_id)
        return self._run(job, claim)

    def _not_claimed(self, job: JobSpec, run_id: uuid.UUID) -> str:
        run = self.runtime.state(run_id)
        if run is None:
            log.error("run %s of job %r is not in the database: message dropped", run_id, job.name)
            return "unknown"
        if run.status != RunStatus.RUNNING:
            # Finished, cancelled, or requeued by its holder, whose retry message is on its way.
            return "duplicate"
        beat = run.heartbeat_at or utcnow()
        stale_at = beat + timedelta(seconds=self.settings.stale_after)
        wait = (stale_at - utcnow()).total_seconds() + self.settings.heartbeat_interval
        self._republish(job, run_id, max(wait, 0.1), why=f"attempt {run.attempts} is alive")
        return "deferred"

    def _run(self, job: JobSpec, claim: Claim) -> str:
        if claim.attempt > job.max_attempts:
            # Only a take-over gets here: the holders of the earlier attempts died mid-run.
            error = (
                f"the worker running attempt {claim.attempt - 1} was lost and no attempts are "
                f"left ({job.retries} retries)"
            )
            self.runtime.fail(claim.run_id, error, attempt=claim.attempt)
            return Outcome.FAILED.value
        beat = self.heartbeat()
        beat.hold(claim)
        try:
            result = self.runtime.attempt(claim, time_limit=TIME_LIMIT)
        except SoftTimeLimitExceeded:  # hit outside the job function, e.g. while completing
            result = self.runtime.time_out(claim)
        finally:
            beat.release(claim)
        if result.outcome is Outcome.RETRY:
            self._republish(job, claim.run_id, result.delay, why=f"retry {result.attempt + 1}")
        return result.outcome.value

    def _republish(
        self,
        job: JobSpec,
        run_id: uuid.UUID,
        countdown: float,
        *,
        reserved: bool = False,
        why: str,
    ) -> None:
        try:
            self.transport.publish(job, run_id, countdown=countdown, reserved=reserved)
        except Exception as exc:
            log.warning("run %s: could not re-publish (%s), message requeued: %s", run_id, why, exc)
            raise Reject(f"re-publish failed: {type(exc).__name__}", requeue=True) from exc
        log.debug("run %s re-published with countdown %.3fs: %s", run_id, countdown, why)
