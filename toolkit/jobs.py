"""Job definitions, the registry, and the context a job function receives."""

from __future__ import annotations

import logging
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from toolkit.config import MAX_AMOUNT, parse_duration
from toolkit.errors import ConfigError, DuplicateJob, UnknownJob

JobFunction = Callable[["JobContext", Any], Any]
FallbackPolicy = Literal["legacy", "fail"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` starts per ``period`` seconds, shared by every job naming ``key``."""

    key: str
    limit: int
    period: float


@dataclass(frozen=True)
class JobSpec:
    name: str
    fn: JobFunction
    event: str
    retries: int = 3
    timeout: float = 900.0
    target: str = "inngest"
    cost: int = 0
    fallback: FallbackPolicy = "legacy"
    rate_limit: RateLimit | None = None
    concurrency: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def flag_key(self) -> str:
        """One flag per job; the job name is the flag key so flagd and others can mirror it."""
        return self.name

    @property
    def max_attempts(self) -> int:
        """Attempts in all: the first one plus ``retries``."""
        return self.retries + 1


def make_spec(
    fn: JobFunction,
    name: str,
    *,
    event: str | None,
    retries: int,
    timeout: str | float,
    target: str,
    cost: int,
    fallback: str,
    rate_limit: RateLimit | None,
    concurrency: int | None,
    options: dict[str, Any],
) -> JobSpec:
    """Validate declared options at import time, where a typo is cheapest to find."""
    if not _NAME.match(name):
        raise ConfigError(
            f"invalid job name {name!r}: lowercase letters, digits, '.', '_' and '-', max 100"
        )
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
        raise ConfigError(f"job {name!r}: retries must be an integer from 0 to 100")
    if isinstance(cost, bool) or not isinstance(cost, int) or not 0 <= cost <= MAX_AMOUNT:
        raise ConfigError(f"job {name!r}: cost must be an integer from 0 to {MAX_AMOUNT}")
    if fallback not in ("legacy", "fail"):
        raise ConfigError(f"job {name!r}: fallback must be 'legacy' or 'fail', not {fallback!r}")
    if not target or not _NAME.match(target):
        raise ConfigError(f"job {name!r}: invalid target backend {target!r}")
    if concurrency is not None and concurrency < 1:
        raise ConfigError(f"job {name!r}: concurrency must be at least 1")
    return JobSpec(
        name=name,
        fn=fn,
        event=event or f"toolkit/{name}.requested",
        retries=retries,
        timeout=parse_duration(timeout, what=f"timeout of job {name!r}"),
        target=target,
        cost=cost,
        fallback=fallback,  # type: ignore[arg-type]
        rate_limit=rate_limit,
        concurrency=concurrency,
        options=dict(options),
    )


class JobRegistry:
    def __init__(self) -> None:
        self._jobs: dict[str, JobSpec] = {}

    def add(self, spec: JobSpec) -> None:
        """Register a job; a second job under the same name is refused at import time."""
        if spec.name in self._jobs:
            raise DuplicateJob(f"job {spec.name!r} is already registered")
        self._jobs[spec.name] = spec

    def get(self, name: str) -> JobSpec:
        """The job called ``name``; an unknown name raises UnknownJob naming the known ones."""
        try:
            return self._jobs[name]
        except KeyError:
            known = ", ".join(sorted(self._jobs)) or "none registered; load your app with --app"
            raise UnknownJob(f"unknown job {name!r} (known: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._jobs

    def __iter__(self) -> Iterator[JobSpec]:
        return iter(self._jobs.values())

    def __len__(self) -> int:
        return len(self._jobs)

    def names(self) -> list[str]:
        """Job names in sorted order, for stable CLI output."""
        return sorted(self._jobs)


class JobContext(ABC):
    """What a job function sees. The same job code runs on every backend.

    ``step`` is the unit of durability: a finished step's output is stored and returned on
    re-execution instead of running the step again. Code outside steps re-runs on every
    attempt (on Inngest, on every request) and must be deterministic.
    """

    def __init__(self, run_id: uuid.UUID, attempt: int, job: JobSpec, payload: Any) -> None:
        self.run_id = run_id
        self.attempt = attempt
        self.job = job
        self.payload = payload
        self.logger = logging.LoggerAdapter(
            logging.getLogger(f"toolkit.job.{job.name}"),
            {"run_id": str(run_id), "attempt": attempt},
        )
        self._seen: dict[str, int] = {}

    def step(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once per run; return its (JSON round-tripped) output."""
        if not name:
            raise ConfigError("step name must be a non-empty string")
        # A name used twice in one run gets a stable suffix, as Inngest does, so loops work.
        count = self._seen.get(name, 0)
        self._seen[name] = count + 1
        step_id = name if count == 0 else f"{name}:{count}"
        return self._run_step(step_id, fn, args, kwargs)

    @abstractmethod
    def _run_step(
        self, step_id: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any: ...


@dataclass(frozen=True)
class SubmittedRun:
    """A recorded run as a backend receives it: never the ORM row, so no session leaks.

    A plain value beside :class:`JobSpec` so that dispatch (which builds it) and backends
    (which take it) share it without either importing the other.
    """

    run_id: uuid.UUID
    job: JobSpec
    payload: Any
    targeting_key: str
