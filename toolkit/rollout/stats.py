"""Small, pure statistics for comparing two backends: no database, no I/O, no dependencies.

* ``wilson``: score interval for one proportion (Wilson 1927), good near 0 and 1 and for small n.
* ``newcombe``: interval for a difference of two proportions, Newcombe's hybrid score method
  ("method 10" in Newcombe 1998), built from the two Wilson intervals.
* ``two_proportion_z``: pooled two-proportion z-test, p-value from ``math.erfc``.
* ``mann_whitney``: Mann-Whitney U rank test with the normal approximation, tie correction and
  continuity correction (as R's ``wilcox.test(exact=FALSE)`` and SciPy's ``asymptotic`` method).
* ``quantile``: the toolkit's one definition of the p-th percentile: linear interpolation
  between the order statistics around rank p (n - 1) (Hyndman-Fan type 7), which is PostgreSQL's
  ``percentile_cont``, so SQL and Python give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

SQRT2 = math.sqrt(2.0)


def normal_cdf(z: float) -> float:
    """P(Z <= z) for a standard normal, through ``math.erfc`` (accurate in the tails)."""
    return 0.5 * math.erfc(-z / SQRT2)


def normal_quantile(p: float) -> float:
    """The z with P(Z <= z) = p, by bisection on ``math.erfc`` (exact to ~1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be strictly between 0 and 1, not {p!r}")
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if normal_cdf(mid) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13:
            break
    return (lo + hi) / 2


def z_for(confidence: float) -> float:
    """Two-sided critical value: 1.959963... for 0.95."""
    return normal_quantile(0.5 + confidence / 2)


class Interval(NamedTuple):
    """A point estimate and its confidence bounds (a tuple: cheap to build in tight loops)."""

    estimate: float
    low: float
    high: float


def _check_counts(successes: int, n: int) -> None:
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"invalid counts: {successes} successes of {n}")


def _wilson(successes: int, n: int, z: float) -> Interval:
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # At p = 0 or 1 one bound is exact; clamp rounding noise.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, low, high)


def wilson(successes: int, n: int, z: float = 1.959963984540054) -> Interval | None:
    """Wilson score interval for successes/n; None without observations."""
    _check_counts(successes, n)
    if n == 0:
        return None
    return _wilson(successes, n, z)


def newcombe(s1: int, n1: int, s2: int, n2: int, z: float = 1.959963984540054) -> Interval | None:
    """Newcombe's hybrid score interval for p1 - p2; None when either arm is empty."""
    _check_counts(s1, n1)
    _check_counts(s2, n2)
    if n1 == 0 or n2 == 0:
        return None
    p1, l1, u1 = _wilson(s1, n1, z)
    p2, l2, u2 = _wilson(s2, n2, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return Interval(d, max(-1.0, low), min(1.0, high))


class ZTest(NamedTuple):
    z: float
    p_value: float  # two-sided


def two_proportion_z(s1: int, n1: int, s2: int, n2: int) -> ZTest | None:
    """Pooled two-proportion z-test of p1 = p2; None when either arm is empty."""
    _check_counts(s1, n1)
    _check_counts(s2, n2)
    if n1 == 0 or n2 == 0:
        return None
    pooled = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:  # both arms all successes (or all failures): no evidence of a difference
        return ZTest(0.0, 1.0)
    z = (s1 / n1 - s2 / n2) / se
    return ZTest(z, min(1.0, math.erfc(abs(z) / SQRT2)))


@dataclass(frozen=True)
class RankTest:
    """Mann-Whitney U of sample x against sample y.

    ``u`` counts pairs where x > y (ties count one half); ``superiority`` = u / (n_x n_y), the
    probability that a random x exceeds a random y (0.5: no shift). ``z`` > 0 means x tends
    to be larger.
    """

    u: float
    z: float
    p_value: float  # two-sided, with tie and continuity corrections
    n_x: int
    n_y: int

    @property
    def superiority(self) -> float:
        """P(random x > random y), ties counting one half: 0.5 means no shift."""
        return self.u / (self.n_x * self.n_y)


def mann_whitney(x: Iterable[float], y: Iterable[float]) -> RankTest | None:
    """Rank-sum test by merging the two sorted samples: O(n log n), midranks for ties."""
    xs = sorted(x)
    ys = sorted(y)
    n1, n2 = len(xs), len(ys)
    if n1 == 0 or n2 == 0:
        return None
    n = n1 + n2
    rank_sum_x = 0.0
    tie_term = 0.0
    below = 0  # values ranked before the current tie group
    i = j = 0
    while i < n1 or j < n2:
        value = xs[i] if j >= n2 or (i < n1 and xs[i] <= ys[j]) else ys[j]
        cx = 0
        while i < n1 and xs[i] == value:
            i += 1
            cx += 1
        cy = 0
        while j < n2 and ys[j] == value:
            j += 1
            cy += 1
        t = cx + cy
        rank_sum_x += cx * (below + (t + 1) / 2)
        tie_term += t * t * t - t
        below += t
    u = rank_sum_x - n1 * (n1 + 1) / 2
    mu = n1 * n2 / 2
    variance = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0:  # every value tied: no information
        return RankTest(u, 0.0, 1.0, n1, n2)
    sigma = math.sqrt(variance)
    z = (u - mu) / sigma
    corrected = max(0.0, abs(u - mu) - 0.5) / sigma
    return RankTest(u, z, min(1.0, math.erfc(corrected / SQRT2)), n1, n2)


def quantile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """``percentile_cont``: linear interpolation between the two order statistics around rank
    ``fraction * (n - 1)`` (0-based); the definition every report percentile uses."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within [0, 1], not {fraction!r}")
    n = len(sorted_values)
    if n == 0:
        return None
    h = fraction * (n - 1)
    lo = math.floor(h)
    if lo + 1 >= n:
        return float(sorted_values[n - 1])
    low = sorted_values[lo]
    return float(low + (h - lo) * (sorted_values[lo + 1] - low))
