"""The pieces of the report's percentile scan that need no database: sample limits and how the
halves computed by two statements combine."""

from __future__ import annotations

import uuid

from toolkit.rollout.latency import Figures, Latencies, Samples, sample_limit


def test_sample_limit_keeps_about_cap_of_n_runs() -> None:
    assert sample_limit(10, 10) is None and sample_limit(3, 10) is None  # small arms: every run
    limit = sample_limit(40, 10)
    assert limit == uuid.UUID(int=2**128 // 4)  # ids are uniform: a quarter lies below
    ids = [uuid.UUID(int=(i * 2**128) // 4000) for i in range(4000)]
    assert sum(rid < limit for rid in ids) == 1000
    assert sample_limit(1, 0) == uuid.UUID(int=0)  # cap 0: nothing lies below


def test_figures_from_two_statements_merge_per_metric() -> None:
    key, other = ("job", "inngest"), ("job", "legacy")
    limits = {key: sample_limit(100, 10)}
    queue, duration = Figures.empty([key, other], limits), Figures.empty([key, other], limits)
    queue.put(key, ("pct", "queue"), [1.0, 2.0, 3.0])
    queue.put(key, ("over", "queue"), 7)
    queue.put(key, ("sample", "queue"), [0.5, 0.25])
    queue.put(other, ("sample", "queue"), [9.0])  # not a sampled arm: ignored
    duration.put(key, ("pct", "duration"), [4.0, None, 6.0])
    duration.put(key, ("sample", "duration"), None)  # array_agg of no rows
    both = queue.merged(duration)
    assert both.latencies[key] == Latencies((1.0, 2.0, 3.0), (4.0, None, 6.0), 7)
    assert both.latencies[other] == Latencies()
    assert both.samples == {key: Samples([0.5, 0.25], [], capped=True)}
    assert duration.merged(queue) == both
