"""One Inngest function per job, with ``ctx.step`` mapped onto Inngest's ``step.run``.

Inngest calls a function once per step: every request re-runs the handler from the top,
``step.run`` returns the stored output of a finished step, and the first new step runs and
ends the request. So every run transition happens inside a step of its own —
``toolkit/start`` (QUEUED → RUNNING, memoizing the payload), ``toolkit/complete``, and
``toolkit/fail`` in the failure handlers — and no re-invocation repeats one. Code outside
steps only reads memoized values, so it is deterministic as Inngest requires.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, cast

import inngest

from toolkit.errors import InngestConfigError, NonRetriableError
from toolkit.jobs import JobContext, JobSpec
from toolkit.runtime.lifecycle import Runtime
from toolkit.runtime.serialization import describe, to_json
from toolkit.store.models import RunStatus

START_STEP = "toolkit/start"
COMPLETE_STEP = "toolkit/complete"
FAIL_STEP = "toolkit/fail"
RESERVED_PREFIX = "toolkit/"
IDEMPOTENCY = "event.data.run_id"
FUNCTION_FAILED = "inngest/function.failed"
FUNCTION_CANCELLED = "inngest/function.cancelled"
FAILURE_SUFFIX = "-failure"  # the SDK's id for an on_failure handler
CANCELLED_SUFFIX = "-cancelled"
MAX_RETRIES = 20  # Inngest accepts 0-20
CLEANUP_RETRIES = 4
MAX_THROTTLE_PERIOD = 7 * 86400
# ``@tk.job(..., inngest={...})`` may add these. Lossy controls (rate_limit, debounce,
# batch_events, singleton) are refused: an event they drop would leave its run QUEUED forever.
EXTRA_OPTIONS: dict[str, type] = {
    "throttle": inngest.Throttle,
    "concurrency": list,
    "priority": inngest.Priority,
    "cancel": list,
}
LOSSY_OPTIONS = ("rate_limit", "debounce", "batch_events", "singleton")


class RunLostSignal(inngest.NonRetriableError):
    """Raised inside a step when the run stopped being RUNNING (cancelled, failed by cleanup).

    As an ``inngest.NonRetriableError`` it passes through ``step.run`` unchanged; the handler
    catches it and ends the Inngest run quietly, before any later step runs.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, quiet=True)


def whole_seconds(value: float, what: str, *, maximum: float | None = None) -> timedelta:
    """Inngest durations are whole seconds of at least one; say so now, not at sync time."""
    if value < 1 or value != int(value) or (maximum is not None and value > maximum):
        limit = f" and at most {maximum:g}s" if maximum is not None else ""
        raise InngestConfigError(
            f"{what} is {value:g}s: Inngest needs whole seconds, at least 1s{limit}"
        )
    return timedelta(seconds=int(value))


def function_options(job: JobSpec) -> dict[str, Any]:
    """What ``create_function`` receives for ``job`` besides the handlers, validated."""
    if not 0 <= job.retries <= MAX_RETRIES:
        raise InngestConfigError(
            f"job {job.name!r}: retries={job.retries}, but Inngest accepts 0 to {MAX_RETRIES}"
        )
    if job.event.startswith("inngest/"):
        raise InngestConfigError(f"job {job.name!r}: event names 'inngest/...' are Inngest's own")
    options: dict[str, Any] = {
        "fn_id": job.name,
        "name": job.name,
        "trigger": inngest.TriggerEvent(event=job.event),
        "retries": job.retries,
        "timeouts": inngest.Timeouts(
            finish=whole_seconds(job.timeout, f"job {job.name!r}: timeout")
        ),
        "idempotency": IDEMPOTENCY,
    }
    concurrency: list[inngest.Concurrency] = []
    if job.rate_limit is not None:
        if job.rate_limit.limit < 1:
            raise InngestConfigError(f"job {job.name!r}: rate limit must allow at least 1 start")
        # Throttle, not Inngest's rate_limit: throttled runs wait in Inngest's queue, while
        # rate_limit drops the event and its run would stay QUEUED.
        options["throttle"] = inngest.Throttle(
            limit=job.rate_limit.limit,
            period=whole_seconds(
                job.rate_limit.period,
                f"job {job.name!r}: rate limit period",
                maximum=MAX_THROTTLE_PERIOD,
            ),
            burst=1,
        )
    if job.concurrency is not None:
        concurrency.append(inngest.Concurrency(limit=job.concurrency))
    for key, value in _extra_options(job).items():
        if key == "throttle" and "throttle" in options:
            raise InngestConfigError(
                f"job {job.name!r}: declare rate_limit= or inngest={{'throttle': ...}}, not both"
            )
        if key == "concurrency":
            concurrency.extend(value)
        else:
            options[key] = value
    if len(concurrency) > 2:
        raise InngestConfigError(f"job {job.name!r}: Inngest allows at most 2 concurrency limits")
    if concurrency:
        options["concurrency"] = concurrency
    return options


def _extra_options(job: JobSpec) -> dict[str, Any]:
    extra = job.options.get("inngest", {})
    if not isinstance(extra, Mapping):
        raise InngestConfigError(f"job {job.name!r}: inngest= must be a dict of options")
    for key, value in extra.items():
        if key in LOSSY_OPTIONS:
            raise InngestConfigError(
                f"job {job.name!r}: inngest option {key!r} drops events, which would leave "
                "runs QUEUED; use rate_limit= (a throttle that queues) instead"
            )
        expected = EXTRA_OPTIONS.get(key)
        if expected is None:
            known = ", ".join(EXTRA_OPTIONS)
            raise InngestConfigError(
                f"job {job.name!r}: unknown inngest option {key!r} (known: {known})"
            )
        if not isinstance(value, expected):
            raise InngestConfigError(
                f"job {job.name!r}: inngest option {key!r} must be {expected.__name__}"
            )
        items = {"concurrency": inngest.Concurrency, "cancel": inngest.Cancel}.get(key)
        if items is not None and not all(isinstance(v, items) for v in cast(list[Any], value)):
            raise InngestConfigError(
                f"job {job.name!r}: inngest option {key!r} must list inngest.{items.__name__}"
            )
    return dict(extra)


def function_id(client: inngest.Inngest, job: JobSpec) -> str:
    """The id Inngest knows the job's main function by: the app id, then the job name."""
    return f"{client.app_id}-{job.name}"


class JobFunctions:
    """Builds the Inngest functions of the jobs that target ``backend``."""

    def __init__(self, runtime: Runtime, client: inngest.Inngest, backend: str) -> None:
        self.runtime = runtime
        self.client = client
        self.backend = backend

    def build(self, jobs: Iterable[JobSpec]) -> list[inngest.Function[Any]]:
        """Per job: the main function (with its on_failure) and the cancellation cleanup."""
        mine = [job for job in jobs if job.target == self.backend]
        seen_events: dict[str, str] = {}
        for job in mine:
            other = seen_events.setdefault(job.event, job.name)
            if other != job.name:
                raise InngestConfigError(
                    f"jobs {other!r} and {job.name!r} both use event {job.event!r}: "
                    "each Inngest job needs its own event"
                )
        functions: list[inngest.Function[Any]] = []
        for job in mine:
            runner = JobRunner(self.runtime, job, self.backend)
            options = function_options(job)
            main = self.client.create_function(on_failure=runner.on_failure, **options)(runner.run)
            cleanup = self.client.create_function(
                fn_id=f"{job.name}{CANCELLED_SUFFIX}",
                name=f"{job.name} (cancelled)",
                trigger=inngest.TriggerEvent(
                    event=FUNCTION_CANCELLED,
                    expression=f"event.data.function_id == '{main.id}'",
                ),
                retries=CLEANUP_RETRIES,
            )(runner.on_cancelled)
            functions += [main, cleanup]
        ids = [i for fn in functions for i in (fn.id, fn.on_failure_fn_id) if i is not None]
        clash = sorted({i for i in ids if ids.count(i) > 1})
        if clash:
            raise InngestConfigError(f"job names produce clashing Inngest function ids: {clash}")
        return functions


class JobRunner:
    """The handlers of one job's functions; every transition is a step of its own."""

    def __init__(self, runtime: Runtime, job: JobSpec, backend: str) -> None:
        self.runtime = runtime
        self.job = job
        self.backend = backend

    def run(self, ctx: inngest.ContextSync) -> Any:
        """The main function: start (a step), the job, complete (a step); a run not QUEUED here,
        or lost meanwhile, is skipped, not failed."""
        run_id = _run_id(ctx.event.data)
        started = ctx.step.run(START_STEP, self._start, str(run_id), ctx.run_id)
        if started is None:
            return {"skipped": "the run is not queued here: finished, cancelled or moved"}
        payload = started["payload"]
        job_ctx = InngestJobContext(
            run_id, ctx.attempt + 1, self.job, payload, step=ctx.step, runtime=self.runtime
        )
        try:
            value = self.job.fn(job_ctx, payload)
            result = to_json(value, what=f"the result of job {self.job.name!r}")
        except RunLostSignal as lost:
            return {"skipped": str(lost)}
        except NonRetriableError as exc:
            raise inngest.NonRetriableError(describe(exc)) from exc
        ctx.step.run(COMPLETE_STEP, self._complete, str(run_id), result)
        return result

    def on_failure(self, ctx: inngest.ContextSync) -> Any:
        """Inngest gave up (retries spent, or non-retriable): FAILED, dead letter, refund."""
        data = ctx.event.data
        original = data.get("event")
        run_id = _run_id(original.get("data") if isinstance(original, Mapping) else None)
        return ctx.step.run(FAIL_STEP, self._fail, str(run_id), _error_text(data.get("error")))

    def on_cancelled(self, ctx: inngest.ContextSync) -> Any:
        """Inngest cancelled the run: its finish timeout passed, or someone cancelled it there."""
        original = ctx.event.data.get("event")
        run_id = _run_id(original.get("data") if isinstance(original, Mapping) else None)
        error = (
            f"cancelled on Inngest: the job's {self.job.timeout:g}s timeout (timeouts.finish) "
            "passed, or the run was cancelled in Inngest"
        )
        return ctx.step.run(FAIL_STEP, self._fail, str(run_id), error)

    # --- step bodies: they run once per run (Inngest stores their output) ------------------

    def _start(self, run_id: str, inngest_run_id: str) -> dict[str, Any] | None:
        claim = self.runtime.start(
            uuid.UUID(run_id), backend=self.backend, external_id=inngest_run_id
        )
        if claim is None:
            return None
        return {"attempt": claim.attempt, "payload": claim.payload}

    def _complete(self, run_id: str, result: Any) -> dict[str, bool]:
        return {"completed": self.runtime.complete(uuid.UUID(run_id), None, result)}

    def _fail(self, run_id: str, error: str) -> dict[str, bool]:
        # Only while the run is still ours: a fallback may have given it to legacy.
        failed = self.runtime.fail(
            uuid.UUID(run_id),
            error,
            expected=(RunStatus.RUNNING, RunStatus.QUEUED),
            backend=self.backend,
        )
        return {"failed": failed}


class InngestJobContext(JobContext):
    """``ctx.step`` as an Inngest ``step.run``: Inngest memoizes, retries and counts attempts.

    Each step body first beats the run's heart (recording Inngest's attempt number) and stops
    the run if it was cancelled or failed meanwhile, as the database memo's fence does.
    """

    def __init__(
        self,
        run_id: uuid.UUID,
        attempt: int,
        job: JobSpec,
        payload: Any,
        *,
        step: inngest.StepSync,
        runtime: Runtime,
    ) -> None:
        super().__init__(run_id, attempt, job, payload)
        self._step = step
        self._runtime = runtime

    def _run_step(
        self, step_id: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if step_id.startswith(RESERVED_PREFIX):
            raise inngest.NonRetriableError(
                f"step name {step_id!r}: names starting with {RESERVED_PREFIX!r} are reserved"
            )
        body = functools.partial(self._body, step_id, fn, args, kwargs)
        return self._step.run(step_id, body)

    def _body(
        self, step_id: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not self._runtime.beat(self.run_id, self.attempt):
            raise RunLostSignal(f"run {self.run_id} is no longer running (cancelled or failed)")
        try:
            return to_json(fn(*args, **kwargs), what=f"the output of step {step_id!r}")
        except NonRetriableError as exc:
            raise inngest.NonRetriableError(describe(exc)) from exc


def _run_id(data: object) -> uuid.UUID:
    raw = data.get("run_id") if isinstance(data, Mapping) else None
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise inngest.NonRetriableError(f"event data has no valid run_id: {raw!r}") from None


def _error_text(error: object) -> str:
    """``Name: message`` from Inngest's error object; the toolkit's own errors keep their text."""
    if not isinstance(error, Mapping):
        return "failed on Inngest (no error details)"
    name, message = str(error.get("name") or "Error"), str(error.get("message") or "")
    if name == "NonRetriableError":  # raised by us with describe(exc) as its message
        return message or name
    return f"{name}: {message}"[:4000]
