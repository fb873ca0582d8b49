"""Settings from the environment, with embedded defaults that need no service."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta

from toolkit.errors import InvalidDuration, InvalidInput

#: The backend every job has: the old inline executor, the flag's "off" variant.
LEGACY = "legacy"
#: The distribution on PyPI (the import package and the command stay ``toolkit``).
DISTRIBUTION = "flagshift-toolkit"
#: Where the Inngest serve route is mounted unless told otherwise (the SDK's convention).
SERVE_PATH = "/api/inngest"

DEFAULT_DATABASE_URL = "sqlite:///toolkit.db"
DATABASE_URL_ENV = "TOOLKIT_DATABASE_URL"
APP_ENV = "TOOLKIT_APP"

#: The largest credit amount (a grant, a job's cost) and the largest balance: 2**53 - 1, exact
#: in a float and in JSON, and far enough below BIGINT / SQLite INTEGER (2**63 - 1) that a
#: balance plus any one amount, or a debit batch's total, can never overflow the column.
MAX_AMOUNT = 2**53 - 1

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# Longer is a typo, and `now - duration` would overflow datetime (an internal error, not exit 2).
MAX_DURATION = 100 * 365 * 86400.0


def database_url(explicit: str | None = None) -> str:
    """Explicit argument, else TOOLKIT_DATABASE_URL, else a SQLite file in the working directory.

    A variable set but empty is a mistake (a template that did not fill it in), not a request
    for the default: falling back would create ./toolkit.db and work on it.
    """
    if explicit:
        return explicit
    env = os.environ.get(DATABASE_URL_ENV)
    if env is not None and not env.strip():
        raise InvalidInput(f"{DATABASE_URL_ENV} is set but empty: give a database URL or unset it")
    return env or DEFAULT_DATABASE_URL


def parse_duration(value: str | int | float | timedelta, *, what: str = "duration") -> float:
    """Seconds from '15m', '90s', '2h', '1d', '250ms', a number of seconds or a timedelta.

    Bounded (0, 100 years]: beyond that a cutoff ``now - duration`` overflows datetime.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise InvalidDuration(f"invalid {what}: {value!r}")
    elif isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise InvalidDuration(
                f"invalid {what} {value!r}: use a number with a unit, e.g. 90s, 15m, 2h, 1d"
            )
        seconds = float(match.group(1)) * _UNITS[str(match.group(2) or "s")]
    if not seconds > 0 or seconds == float("inf"):
        raise InvalidDuration(f"invalid {what} {value!r}: must be positive")
    if seconds > MAX_DURATION:
        raise InvalidDuration(f"invalid {what} {value!r}: must be at most 100 years")
    return seconds


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with "equal jitter": half the ceiling fixed, half random.

    The fixed half keeps the backoff growing; the random half spreads retries of runs that
    failed together (a provider outage) so they do not come back in lockstep.
    """

    retries: int = 3
    base_delay: float = 1.0
    max_delay: float = 60.0

    def delay(self, failed_attempts: int, rand: float) -> float:
        """Seconds to wait after ``failed_attempts`` failures; ``rand`` in [0, 1) is the jitter."""
        exponent: int = max(failed_attempts - 1, 0)
        ceiling = min(self.max_delay, self.base_delay * float(2**exponent))
        return ceiling * (0.5 + rand / 2)
