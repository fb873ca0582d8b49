"""How a PostgreSQL batch's one result is read (:class:`toolkit.store.batches.Batch`): the page
in order, and who was moved and refunded, from the page itself when everything was done, from
the rows that follow it when a concurrent invocation got to some runs first."""

from __future__ import annotations

import uuid
from collections import namedtuple
from datetime import UTC, datetime

from toolkit.store.batches import DONE, MOVED, PAGE, REFUNDED, Batch

R = namedtuple("R", "part id job backend status created_at amount all_moved all_refunded")
AT = datetime(2026, 11, 30, tzinfo=UTC)
IDS = [uuid.UUID(int=i) for i in range(1, 5)]
AMOUNTS = [5, None, 7, 3]  # the second run has no debit


def page() -> list[R]:
    return [
        R(PAGE, i, "job", "legacy", "QUEUED", AT, a, None, None)
        for i, a in zip(IDS, AMOUNTS, strict=True)
    ]


def done(moved: bool, refunded: bool) -> R:
    return R(DONE, None, None, None, None, None, None, moved, refunded)


def test_everything_done_reads_the_page_only() -> None:
    batch = Batch([*page(), done(True, True)])
    assert [r.id for r in batch.rows] == IDS
    assert batch.moved is None  # every run of the page
    assert batch.refunded == {IDS[0]: 5, IDS[2]: 7, IDS[3]: 3}


def test_some_runs_not_moved_are_named() -> None:
    moved = [R(MOVED, i, *[None] * 7) for i in (IDS[0], IDS[1])]
    batch = Batch([*page(), done(False, True), *moved])
    assert batch.moved == {IDS[0], IDS[1]}
    assert batch.refunded == {IDS[0]: 5}  # the moved runs with a debit


def test_refunds_made_elsewhere_are_left_out() -> None:
    refunds = [R(REFUNDED, IDS[3], None, None, None, None, 3, None, None)]
    batch = Batch([*page(), done(True, False), *refunds])
    assert batch.moved is None and batch.refunded == {IDS[3]: 3}
    nothing = Batch([*page(), done(False, False)])
    assert nothing.moved == set() and nothing.refunded == {}
