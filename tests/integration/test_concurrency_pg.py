"""Real races on PostgreSQL: threads released together by a barrier hit the same rows.

Each race runs with one Toolkit shared by every thread (the Toolkit is meant to be
thread-safe) and, where it is cheap, with one Toolkit per thread (separate engines and
connection pools, like separate worker processes).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import pytest
from sqlalchemy import func, insert, select, text

from tests.conftest import make_toolkit
from tests.jobs_fixture import ParkedBackend
from toolkit import DispatchRequest, InsufficientCredits, JobContext, RunHandle, RunStatus, Toolkit
from toolkit.store.models import CreditEntry, DeadLetter, LedgerKind, Run

pytestmark = pytest.mark.postgres

COST = 5
THREADS = 8


def _job(ctx: JobContext, payload: Any) -> Any:
    return {"ok": True}


def prepare(url: str) -> tuple[Toolkit, ParkedBackend]:
    """A Toolkit with the parked backend and the test jobs (the rollouts live in the db)."""
    tk = make_toolkit(url)
    parked = ParkedBackend(tk)
    tk.use_backend("parked", parked)
    tk.job("paid", target="parked", cost=COST)(_job)
    tk.job("free", target="parked")(_job)
    return tk, parked


@pytest.fixture
def tk_pg(pg_url: str) -> Iterator[Toolkit]:
    tk, _ = prepare(pg_url)
    for job in ("paid", "free"):
        tk.set_rollout(job, 100, reason="concurrency test")
    yield tk
    tk.close()


@pytest.fixture
def toolkits(pg_url: str, tk_pg: Toolkit) -> Iterator[Callable[[int], list[Toolkit]]]:
    """``toolkits(n)``: n extra Toolkits on the same database, closed after the test."""
    made: list[Toolkit] = []

    def make(n: int) -> list[Toolkit]:
        more = [prepare(pg_url)[0] for _ in range(n)]
        made.extend(more)
        return more

    yield make
    for tk in made:
        tk.close()


@dataclass
class Outcome:
    value: Any = None
    error: BaseException | None = None


def race(workers: Sequence[Callable[[], Any]], timeout: float = 30.0) -> list[Outcome]:
    """Run every worker in its own thread, all released at once; collect what each did."""
    barrier = threading.Barrier(len(workers))
    outcomes = [Outcome() for _ in workers]

    def run(i: int) -> None:
        try:
            barrier.wait(timeout)
            outcomes[i].value = workers[i]()
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            outcomes[i].error = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a racing thread hung"
    return outcomes


def values(outcomes: list[Outcome]) -> list[Any]:
    errors = [o.error for o in outcomes if o.error is not None]
    if errors:
        raise AssertionError(f"{len(errors)} racing threads failed") from errors[0]
    return [o.value for o in outcomes]


def ledger(tk: Toolkit, account: str) -> dict[tuple[uuid.UUID | None, str], int]:
    """(run_id, kind) → number of entries, checking the running balance against the history."""
    totals = tk.credits.totals(account)
    assert tk.credits.balance(account) == totals.balance >= 0, totals
    with tk.db.transaction() as s:
        rows = s.execute(
            select(CreditEntry.run_id, CreditEntry.kind).where(CreditEntry.account == account)
        ).all()
    return dict(Counter((r.run_id, r.kind) for r in rows))


def run_count(tk: Toolkit) -> int:
    with tk.db.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(Run)) or 0)


def dispatch_or_refused(tk: Toolkit, n: int) -> list[RunHandle | None]:
    out: list[RunHandle | None] = []
    for _ in range(n):
        try:
            out.append(tk.dispatch("paid", {}, account="acct"))
        except InsufficientCredits:
            out.append(None)
    return out


# --- debits --------------------------------------------------------------------------------


@pytest.mark.parametrize("sharing", ["shared", "per-thread"])
def test_concurrent_debits_never_overspend(
    tk_pg: Toolkit, toolkits: Callable[[int], list[Toolkit]], sharing: str
) -> None:
    tk_pg.credits.grant("acct", 50)
    workers: list[Callable[[], list[RunHandle | None]]]
    if sharing == "shared":  # 40 threads, one dispatch each, one Toolkit
        workers = [partial(dispatch_or_refused, tk_pg, 1) for _ in range(40)]
    else:  # 8 Toolkits, 5 dispatches each
        workers = [partial(dispatch_or_refused, t, 5) for t in toolkits(THREADS)]
    handles = [h for batch in values(race(workers)) for h in batch]

    assert len(handles) == 40
    created = [h for h in handles if h is not None]
    assert len(created) == 10 and handles.count(None) == 30
    assert run_count(tk_pg) == 10
    assert tk_pg.credits.balance("acct") == 0
    entries = ledger(tk_pg, "acct")
    assert entries == {
        (None, LedgerKind.GRANT.value): 1,
        **{(h.run_id, LedgerKind.DEBIT.value): 1 for h in created},
    }


@pytest.mark.parametrize("sharing", ["shared", "per-thread"])
def test_same_idempotency_key_dispatched_concurrently_makes_one_run(
    tk_pg: Toolkit, toolkits: Callable[[int], list[Toolkit]], sharing: str
) -> None:
    tk_pg.credits.grant("acct", 50)
    tks = [tk_pg] * THREADS if sharing == "shared" else toolkits(THREADS)
    workers = [
        lambda t=t: t.dispatch("paid", {"n": 1}, idempotency_key="once", account="acct")
        for t in tks
    ]
    handles: list[RunHandle] = values(race(workers))

    assert len({h.run_id for h in handles}) == 1
    assert sum(h.created for h in handles) == 1
    assert run_count(tk_pg) == 1
    assert tk_pg.credits.balance("acct") == 50 - COST
    assert ledger(tk_pg, "acct")[(handles[0].run_id, LedgerKind.DEBIT.value)] == 1
    submitted = [
        rid for t in set(tks) for rid in cast(ParkedBackend, t.backends["parked"]).submitted
    ]
    assert submitted == [handles[0].run_id]  # handed over once, by the winner


# --- refunds -------------------------------------------------------------------------------


def test_concurrent_fail_cancel_refund_refund_each_run_once(
    tk_pg: Toolkit, toolkits: Callable[[int], list[Toolkit]]
) -> None:
    tk_pg.credits.grant("acct", 50)
    run_ids = [tk_pg.dispatch("paid", {}, account="acct").run_id for _ in range(10)]
    for rid in run_ids[::2]:  # half of them running, half still queued
        assert tk_pg.runtime.claim(rid) is not None
    assert tk_pg.credits.balance("acct") == 0

    def failer(tk: Toolkit, order: list[uuid.UUID]) -> Callable[[], list[bool]]:
        return lambda: [
            tk.runtime.fail(r, "boom", expected=(RunStatus.QUEUED, RunStatus.RUNNING))
            for r in order
        ]

    def canceller(tk: Toolkit, order: list[uuid.UUID]) -> Callable[[], list[bool]]:
        return lambda: [tk.cancel(r, reason="race") for r in order]

    def refunder(tk: Toolkit, order: list[uuid.UUID]) -> Callable[[], list[bool]]:
        return lambda: [tk.credits.refund(r) for r in order]

    fwd, back = run_ids, run_ids[::-1]
    own = toolkits(3)
    workers = [
        failer(tk_pg, fwd), failer(own[0], back),
        canceller(tk_pg, back), canceller(own[1], fwd),
        refunder(tk_pg, fwd), refunder(own[2], back), refunder(tk_pg, back),
    ]  # fmt: skip
    results = values(race(workers))

    finishers = [dict(zip(order, res, strict=True)) for order, res in
                 zip([fwd, back, back, fwd], results[:4], strict=True)]  # fmt: skip
    refunds = [dict(zip(order, res, strict=True)) for order, res in
               zip([fwd, back, back], results[4:], strict=True)]  # fmt: skip
    with tk_pg.db.transaction() as s:
        status = {r.id: r.status for r in s.scalars(select(Run))}
        dead = Counter(s.scalars(select(DeadLetter.run_id)))
    entries = ledger(tk_pg, "acct")
    for rid in run_ids:
        assert sum(f[rid] for f in finishers) == 1, "exactly one fail/cancel moved the run"
        assert status[rid] in (RunStatus.FAILED, RunStatus.CANCELLED)
        assert dead[rid] == (1 if status[rid] == RunStatus.FAILED else 0)
        assert entries[(rid, LedgerKind.DEBIT.value)] == 1
        assert entries[(rid, LedgerKind.REFUND.value)] == 1
        assert sum(r[rid] for r in refunds) <= 1
    assert tk_pg.credits.balance("acct") == 50  # restored exactly once


# --- claims --------------------------------------------------------------------------------


@pytest.mark.parametrize("sharing", ["shared", "per-thread"])
def test_racing_claims_claim_each_run_once(
    tk_pg: Toolkit, toolkits: Callable[[int], list[Toolkit]], sharing: str
) -> None:
    run_ids = [h.run_id for h in tk_pg.dispatch_many("free", [{"i": i} for i in range(50)])]
    a, b = (tk_pg, tk_pg) if sharing == "shared" else toolkits(2)
    workers = [
        lambda: [rid for rid in run_ids if a.runtime.claim(rid) is not None],
        lambda: [rid for rid in run_ids if b.runtime.claim(rid) is not None],
    ]
    first, second = values(race(workers))

    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(run_ids)
    with tk_pg.db.transaction() as s:
        rows = s.execute(select(Run.status, Run.attempts).where(Run.id.in_(run_ids))).all()
    assert Counter((r.status, r.attempts) for r in rows) == {(RunStatus.RUNNING.value, 1): 50}


# --- batches ------------------------------------------------------------------------------


def test_concurrent_batches_sharing_keys_make_each_key_once(
    tk_pg: Toolkit, toolkits: Callable[[int], list[Toolkit]]
) -> None:
    tk_pg.credits.grant("acct", 2_000)
    first = [DispatchRequest({"k": i}, idempotency_key=f"k{i}", account="acct") for i in range(200)]
    second = [
        DispatchRequest({"k": i}, idempotency_key=f"k{i}", account="acct") for i in range(100, 300)
    ]
    other = toolkits(1)[0]
    workers = [
        lambda: tk_pg.dispatch_many("paid", first),
        lambda: other.dispatch_many("paid", second),
    ]
    got_first, got_second = values(race(workers))

    assert len(got_first) == len(got_second) == 200
    by_key_first = {r.idempotency_key: h.run_id for r, h in zip(first, got_first, strict=True)}
    by_key_second = {r.idempotency_key: h.run_id for r, h in zip(second, got_second, strict=True)}
    for key in set(by_key_first) & set(by_key_second):  # both callers got the same run
        assert by_key_first[key] == by_key_second[key]
    assert sum(h.created for h in got_first + got_second) == 300

    with tk_pg.db.transaction() as s:
        keys = Counter(s.scalars(select(Run.idempotency_key).where(Run.job == "paid")))
    assert len(keys) == 300 and max(keys.values()) == 1, "an idempotency key appears twice"
    entries = ledger(tk_pg, "acct")
    debits = [n for (_rid, kind), n in entries.items() if kind == LedgerKind.DEBIT.value]
    assert len(debits) == 300 and set(debits) == {1}
    assert tk_pg.credits.totals("acct").debits == 300 * COST
    assert tk_pg.credits.balance("acct") == 2_000 - 300 * COST


def _wait_for_lock_waiters(tk: Toolkit, n: int, timeout: float = 10.0) -> None:
    """Block until ``n`` sessions of this database wait on a lock (a row or a key)."""
    deadline = time.monotonic() + timeout
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while time.monotonic() < deadline:
        with tk.db.engine.connect() as conn:
            if conn.execute(query).scalar_one() >= n:
                return
        time.sleep(0.01)
    raise AssertionError(f"{n} sessions never waited on a lock")


def test_concurrent_batches_with_shared_keys_in_other_order_do_not_deadlock(
    tk_pg: Toolkit, toolkits: Callable[[int], list[Toolkit]]
) -> None:
    """Deterministic interleaving of two batches [k1, kx, k2] and [k2, k1].

    A third session holds an uncommitted run with key kx, so batch A inserts k1 and waits;
    batch B then inserts k2 and waits for A's k1; the third session rolls back, A goes on to
    k2 and waits for B: a lock cycle that a random race hits about one time in five.
    """
    tk_pg.credits.grant("acct", 100)
    other = toolkits(1)[0]

    def request(key: str) -> DispatchRequest:
        return DispatchRequest({"key": key}, idempotency_key=key, account="acct")

    blocker = tk_pg.db.engine.connect()
    try:
        with blocker.begin():
            blocker.execute(
                insert(Run).values(
                    id=uuid.uuid4(), job="paid", idempotency_key="kx", targeting_key="t",
                    backend="parked", status=RunStatus.QUEUED.value, payload={}, attempts=0,
                    cost=0, recoveries=0,
                )
            )  # fmt: skip
            outcomes = [Outcome(), Outcome()]

            def batch(i: int, t: Toolkit, keys: list[str]) -> None:
                try:
                    outcomes[i].value = t.dispatch_many("paid", [request(k) for k in keys])
                except BaseException as exc:  # noqa: BLE001 - reported below
                    outcomes[i].error = exc

            a = threading.Thread(target=batch, args=(0, tk_pg, ["k1", "kx", "k2"]), daemon=True)
            a.start()
            _wait_for_lock_waiters(tk_pg, 1)  # A holds k1, waits for kx
            b = threading.Thread(target=batch, args=(1, other, ["k2", "k1"]), daemon=True)
            b.start()
            _wait_for_lock_waiters(tk_pg, 2)  # B holds k2, waits for k1
            blocker.rollback()  # kx frees: A inserts it and then waits for B's k2
        a.join(30)
        b.join(30)
    finally:
        blocker.close()
    assert not a.is_alive() and not b.is_alive()
    first, second = values(outcomes)
    assert {h.run_id for h in first} >= {h.run_id for h in second}
    with tk_pg.db.transaction() as s:
        keys = Counter(s.scalars(select(Run.idempotency_key)))
    assert keys == {"k1": 1, "kx": 1, "k2": 1}
