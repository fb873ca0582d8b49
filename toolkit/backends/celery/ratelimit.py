"""A rate limit shared by every worker: a token bucket in Redis, one atomic Lua script.

Celery's own ``rate_limit`` is per worker process, so N workers would allow N times the limit.
Here every worker asks the same Redis key (named after ``RateLimit.key``) for a token:

* a bucket holds at most ``limit`` tokens and refills at ``limit / period`` tokens per second,
  so the long-run rate is ``limit`` starts per ``period`` and a burst is at most ``limit``
  (in any window of ``t`` seconds: at most ``limit + limit * t / period`` starts);
* with no token left, the caller may *reserve* one that matures within ``horizon`` seconds
  (the bucket goes negative): it is told how long to wait and starts then without asking
  again, so waiting runs are spaced one refill apart instead of all coming back at once;
* beyond the horizon the answer is "ask again later": the time until a reservation can be
  made, plus a random share of the horizon so that a backlog does not come back at once.

The clock is Redis's (``TIME``), so workers on machines with skewed clocks share one timeline.
Callers never block: the Celery backend re-publishes the message with the wait as countdown.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Any

from toolkit.errors import RateLimitUnavailable
from toolkit.jobs import RateLimit

# KEYS[1] bucket hash; ARGV capacity, refill rate (tokens/s), horizon (s).
# Replies {verdict, wait}: "run" now, "reserved" (start after wait, token already taken),
# "later" (ask again after wait). Numbers travel as strings: a Lua number reply is truncated
# to an integer by Redis.
_SCRIPT = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) + tonumber(now_t[2]) / 1000000
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local horizon = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
if now > at then
  tokens = math.min(capacity, tokens + (now - at) * rate)
end
local verdict, wait = 'run', 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
  if wait <= horizon then
    tokens = tokens - 1
    verdict = 'reserved'
  else
    verdict = 'later'
    wait = wait - horizon
  end
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.9f', tokens),
           'at', string.format('%.6f', math.max(now, at)))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
return {verdict, string.format('%.6f', wait)}
"""


class Verdict(enum.StrEnum):
    RUN = "run"
    RESERVED = "reserved"
    LATER = "later"


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    wait: float = 0.0

    @property
    def allowed(self) -> bool:
        """True only for RUN: RESERVED holds a token but the run waits ``wait`` seconds; LATER
        asks again."""
        return self.verdict is Verdict.RUN


def longest_wait(limit: RateLimit) -> float:
    """The longest countdown an admission can ask for (the visibility-timeout rule needs it):
    "later" waits up to one refill interval for the horizon to open, plus the spread."""
    return limit.period + limit.period / limit.limit


class RedisTokenBucket:
    """Token buckets in one Redis, keyed ``<prefix>ratelimit:<RateLimit.key>``."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "toolkit:",
        connect_timeout: float = 2.0,
        socket_timeout: float = 5.0,
        rng: Any = random.random,
    ) -> None:
        import redis  # the celery[redis] extra brings it; imported only when a limit is used

        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=connect_timeout, socket_timeout=socket_timeout
        )
        self._script = self._client.register_script(_SCRIPT)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.prefix = prefix
        self._rng = rng

    def key(self, limit: RateLimit) -> str:
        """The Redis key of the limit's bucket: jobs sharing ``limit.key`` share the bucket."""
        return f"{self.prefix}ratelimit:{limit.key}"

    def acquire(self, limit: RateLimit, *, horizon: float | None = None) -> Admission:
        """Take a token now, or reserve one within ``horizon`` (default: one period)."""
        rate = limit.limit / limit.period
        ahead = limit.period if horizon is None else horizon
        try:
            verdict, wait = self._script(
                keys=[self.key(limit)], args=[limit.limit, repr(rate), repr(ahead)]
            )
        except self._errors as exc:
            raise RateLimitUnavailable(
                f"rate limit {limit.key!r}: Redis unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        admission = Admission(Verdict(_text(verdict)), float(_text(wait)))
        if admission.verdict is Verdict.LATER:
            # Spread the callers turned away together over one horizon, so a backlog of N
            # waiting runs asks about N / horizon times a second, not N * rate.
            return Admission(Verdict.LATER, admission.wait + ahead * self._rng())
        return admission

    def reset(self, limit: RateLimit) -> None:
        """Forget a bucket (tests, or an operator after changing a limit)."""
        try:
            self._client.delete(self.key(limit))
        except self._errors as exc:
            raise RateLimitUnavailable(f"rate limit {limit.key!r}: {exc}") from exc

    def close(self) -> None:
        """Close the Redis connections."""
        self._client.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
