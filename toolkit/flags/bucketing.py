"""Sticky, monotonic percentage bucketing that agrees with flagd's ``fractional`` operator.

A job is rolled out to a share of users by hashing each user into a fixed bucket. The
bucket must be *sticky* (a user never flips back and forth between old and new code
paths) and *monotonic* (raising the percentage only ever adds users). It must also be
the same bucket that flagd's ``fractional`` operator computes, so a decision taken
locally by the toolkit and one served by flagd (or any in-process flagd provider) for
the same flag key and targeting key never disagree.

flagd hashes the UTF-8 bytes of the bucketing value with MurmurHash3 x86 32-bit,
seed 0. With the shorthand form the bucketing value is the flag key immediately
followed by the targeting key, with no separator. Two mappings from hash to variant
have shipped:

* v1 (flagd before the March 2026 change): ``|int32(h)| / (2**31 - 1) * 100`` compared
  against running float percentages. Kept as :func:`fractional_v1` only so rollouts
  against older flagd deployments can be reasoned about.
* v2 (flagd PR #1909, "fractional bucketing improvements"): ``(uint32(h) * total) >> 32``
  compared against running integer weights. Exact integer arithmetic, no float
  rounding, resolution down to one unit of weight. This is :func:`fractional` and is
  what :func:`bucket` and :func:`in_rollout` use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import mmh3

BASIS_POINTS: Final = 10_000
"""Rollout resolution: 1 basis point = 0.01 %. A percentage ``p`` (two decimals) is the
flagd weight ``round(p * 100)`` out of a total of ``BASIS_POINTS``."""

_INT32_MAX: Final = 2**31 - 1
"""flagd rejects weight sums above int32 max, so we do too rather than diverge."""


def murmur32(data: str) -> int:
    """Return the unsigned MurmurHash3 x86 32-bit (seed 0) of ``data`` encoded as UTF-8.

    Unsigned because flagd v2 treats the hash as ``uint32``; a signed value would put
    half of all users in the wrong bucket.
    """
    return mmh3.hash(data, 0, signed=False)


def _total_weight(weights: Sequence[tuple[str, int]]) -> int:
    """Validate ``weights`` and return their sum.

    flagd itself clamps negative weights to zero and falls back to the default variant
    on an all-zero distribution; here both are configuration bugs, so they fail loudly.
    """
    if not weights:
        raise ValueError("fractional needs at least one (variant, weight) pair")
    total = 0
    for variant, weight in weights:
        if weight < 0:
            raise ValueError(f"negative weight {weight} for variant {variant!r}")
        total += weight
    if total == 0:
        raise ValueError("fractional weights sum to zero")
    if total > _INT32_MAX:
        raise ValueError(f"fractional weights sum to {total}, above flagd's limit {_INT32_MAX}")
    return total


def fractional(bucketing_value: str, weights: Sequence[tuple[str, int]]) -> str:
    """Pick a variant exactly as flagd's current (v2) ``fractional`` operator does.

    ``bucketing_value`` is the full hash input: for flagd's shorthand form pass
    ``flag_key + targeting_key``; for an explicit bucketing expression pass its value.
    The hash is scaled into ``[0, total)`` with integer arithmetic and the first
    variant whose running weight exceeds it wins, so order of ``weights`` matters and
    zero-weight variants are never chosen.

    Raises:
        ValueError: ``weights`` is empty, has a negative weight, or sums to zero (or
            above int32 max, which flagd rejects).
    """
    total = _total_weight(weights)
    point = (murmur32(bucketing_value) * total) >> 32
    range_end = 0
    for variant, weight in weights:
        range_end += weight
        if point < range_end:
            return variant
    raise AssertionError("unreachable: point < total")  # pragma: no cover


def fractional_v1(bucketing_value: str, weights: Sequence[tuple[str, int]]) -> str:
    """Pick a variant as flagd's legacy (pre-PR #1909) float-based ``fractional`` did.

    Only for comparing against older flagd deployments: users move buckets between v1
    and v2, so mixing them in one rollout breaks stickiness. Like flagd v1, returns
    ``""`` when no range matches (the hash ``0x80000000``, whose ``|int32|`` exceeds
    int32 max, or float rounding at the top end); flagd then served the default variant.

    Raises:
        ValueError: same validation as :func:`fractional`.
    """
    total = _total_weight(weights)
    signed = mmh3.hash(bucketing_value, 0, signed=True)
    point = abs(signed) / _INT32_MAX * 100
    range_end = 0.0
    for variant, weight in weights:
        range_end += 100 * weight / total
        if point < range_end:
            return variant
    return ""


def bucket(flag_key: str, targeting_key: str) -> int:
    """Return the user's bucket in ``[0, BASIS_POINTS)`` for ``flag_key``.

    This is flagd v2 ``fractional`` with a total weight of ``BASIS_POINTS``, so the
    bucket is fixed per (flag, user) pair: sticky by construction, and independent
    across flags because the flag key is part of the hash input.
    """
    return (mmh3.hash(flag_key + targeting_key, 0, signed=False) * BASIS_POINTS) >> 32


def in_rollout(flag_key: str, targeting_key: str, basis_points: int) -> bool:
    """Return whether the user is inside a rollout of ``basis_points`` / 10 000.

    Equivalent to ``fractional(flag_key + targeting_key, [("on", basis_points),
    ("off", BASIS_POINTS - basis_points)]) == "on"``, and monotonic in
    ``basis_points`` because it is a threshold on a fixed bucket. Values at or below 0
    mean nobody, at or above ``BASIS_POINTS`` everybody. Inlined rather than calling
    :func:`bucket` because it sits on a per-request hot path.
    """
    return (
        mmh3.hash(flag_key + targeting_key, 0, signed=False) * BASIS_POINTS
    ) >> 32 < basis_points
