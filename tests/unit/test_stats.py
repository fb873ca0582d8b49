"""rollout.stats against published values, plus properties that any correct version satisfies.

Sources: Newcombe RG (1998) "Two-sided confidence intervals for the single proportion:
comparison of seven methods", Stat Med 17:857-872, Table I (Wilson score, method 3); Newcombe RG
(1998) "Interval estimation for the difference between independent proportions: comparison of
eleven methods", Stat Med 17:873-890, Table II (hybrid score, method 10); the SciPy
``mannwhitneyu`` documentation example (asymptotic method, continuity correction).
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolkit.rollout.stats import (
    mann_whitney,
    newcombe,
    normal_quantile,
    quantile,
    two_proportion_z,
    wilson,
    z_for,
)


@pytest.mark.parametrize(
    "successes, n, low, high",
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombe_table_i(successes: int, n: int, low: float, high: float) -> None:
    ci = wilson(successes, n)
    assert ci is not None
    assert (round(ci.low, 4), round(ci.high, 4)) == (low, high)
    assert ci.estimate == successes / n


@pytest.mark.parametrize(
    "s1, n1, s2, n2, low, high",
    [
        (56, 70, 48, 80, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.1705, 0.8090),
        (6, 7, 2, 7, 0.0582, 0.8062),
        (5, 56, 0, 29, -0.0381, 0.1926),
        (0, 10, 0, 20, -0.1611, 0.2775),
        (0, 10, 0, 10, -0.2775, 0.2775),
        (10, 10, 0, 20, 0.6791, 1.0),
        (10, 10, 0, 10, 0.6075, 1.0),
    ],
)
def test_newcombe_hybrid_matches_table_ii_method_10(
    s1: int, n1: int, s2: int, n2: int, low: float, high: float
) -> None:
    ci = newcombe(s1, n1, s2, n2)
    assert ci is not None
    assert (round(ci.low, 4), round(ci.high, 4)) == (low, high)
    assert ci.estimate == pytest.approx(s1 / n1 - s2 / n2)


def test_normal_quantiles() -> None:
    assert z_for(0.95) == pytest.approx(1.959963984540054, abs=1e-12)
    assert normal_quantile(0.999) == pytest.approx(3.090232306167813, abs=1e-12)
    assert normal_quantile(0.8) == pytest.approx(0.8416212335729143, abs=1e-12)
    assert normal_quantile(0.5) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        normal_quantile(1.0)


def test_two_proportion_z_equals_the_chi_square_of_the_2x2_table() -> None:
    """z² is Pearson's chi-square without continuity correction: N(ad-bc)² / (r1 r2 c1 c2)."""
    result = two_proportion_z(56, 70, 48, 80)
    assert result is not None
    a, b, c, d = 56, 14, 48, 32
    chi2 = 150 * (a * d - b * c) ** 2 / (70 * 80 * (a + c) * (b + d))
    assert result.z == pytest.approx(math.sqrt(chi2)) and result.z == pytest.approx(
        2.6502, abs=1e-4
    )
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(chi2 / 2)))
    assert result.p_value == pytest.approx(0.00805, abs=1e-5)
    assert two_proportion_z(10, 10, 20, 20) == (0.0, 1.0)  # no variance, no evidence
    assert two_proportion_z(0, 0, 1, 2) is None


def test_mann_whitney_matches_the_scipy_example() -> None:
    males = [19, 22, 16, 29, 24]
    females = [20, 11, 17, 12]
    result = mann_whitney(males, females)
    assert result is not None
    assert result.u == 17.0
    assert result.p_value == pytest.approx(0.11134688653314041, rel=1e-12)
    assert result.superiority == pytest.approx(17 / 20)
    assert mann_whitney([], [1.0]) is None
    assert mann_whitney([1.0, 1.0], [1.0]) is not None


def test_mann_whitney_tie_correction_is_the_exact_permutation_variance() -> None:
    """With midranks, the corrected variance equals U's variance over all relabellings."""
    x = [1.0, 2.0, 2.0, 3.0, 3.0, 3.0]
    y = [2.0, 3.0, 4.0, 4.0]
    pooled = x + y
    us = []
    for chosen in itertools.combinations(range(len(pooled)), len(x)):
        xs = [pooled[i] for i in chosen]
        ys = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        test = mann_whitney(xs, ys)
        assert test is not None
        us.append(test.u)
    mean = sum(us) / len(us)
    exact_variance = sum((u - mean) ** 2 for u in us) / len(us)
    result = mann_whitney(x, y)
    assert result is not None and mean == pytest.approx(len(x) * len(y) / 2)
    sigma = (result.u - mean) / result.z
    assert sigma**2 == pytest.approx(exact_variance)


def test_quantile_is_percentile_cont() -> None:
    values = [float(v) for v in range(1, 12)]
    assert [quantile(values, f) for f in (0.0, 0.5, 0.95, 0.99, 1.0)] == pytest.approx(
        [1.0, 6.0, 10.5, 10.9, 11.0]
    )
    assert quantile([], 0.5) is None
    assert quantile([3.0], 0.99) == 3.0
    with pytest.raises(ValueError):
        quantile(values, 1.5)


counts = st.integers(min_value=1, max_value=5_000).flatmap(
    lambda n: st.tuples(st.integers(min_value=0, max_value=n), st.just(n))
)


@given(counts, st.sampled_from([0.8416, 1.96, 3.09]))
def test_wilson_is_a_proper_interval(sn: tuple[int, int], z: float) -> None:
    s, n = sn
    ci = wilson(s, n, z)
    assert ci is not None and 0.0 <= ci.low <= ci.estimate <= ci.high <= 1.0
    wider = wilson(s, n, z + 1)
    assert wider is not None and wider.low <= ci.low + 1e-12 and wider.high >= ci.high - 1e-12


@given(counts, counts)
def test_newcombe_contains_the_difference_and_is_antisymmetric(
    a: tuple[int, int], b: tuple[int, int]
) -> None:
    ci = newcombe(*a, *b)
    flipped = newcombe(*b, *a)
    assert ci is not None and flipped is not None
    assert -1.0 <= ci.low <= ci.estimate <= ci.high <= 1.0
    assert ci.low == pytest.approx(-flipped.high) and ci.high == pytest.approx(-flipped.low)


samples = st.lists(st.integers(min_value=0, max_value=20).map(float), min_size=1, max_size=40)


@given(samples, samples)
def test_mann_whitney_is_symmetric(x: list[float], y: list[float]) -> None:
    forward = mann_whitney(x, y)
    backward = mann_whitney(y, x)
    assert forward is not None and backward is not None
    assert forward.u + backward.u == pytest.approx(len(x) * len(y))
    assert forward.p_value == pytest.approx(backward.p_value)
    assert 0.0 <= forward.p_value <= 1.0
