"""Credit amounts have a documented range (1..MAX_AMOUNT), checked before any write, and a
balance can never overflow its column, whichever path adds to it."""

from __future__ import annotations

import pytest

from toolkit import Toolkit
from toolkit.config import MAX_AMOUNT
from toolkit.errors import ConfigError, InsufficientCredits, InvalidInput


def nothing_written(tk: Toolkit, account: str) -> None:
    assert tk.credits.balance(account) == 0
    assert tk.credits.totals(account).grants == 0
    assert tk.audit.entries() == []


@pytest.mark.parametrize("amount", [0, -1, MAX_AMOUNT + 1, 2**62, 10**30, True, 1.5])
def test_grant_outside_the_range_is_refused(tk: Toolkit, amount: object) -> None:
    with pytest.raises(InvalidInput, match="credit amount must be an integer from 1 to"):
        tk.credits.grant("acct", amount)  # type: ignore[arg-type]
    nothing_written(tk, "acct")


def test_a_balance_cannot_go_above_the_range(tk: Toolkit) -> None:
    """Twice 2**62 used to store a REAL on SQLite and break every later read."""
    assert tk.credits.grant("acct", MAX_AMOUNT) == MAX_AMOUNT
    with pytest.raises(InvalidInput, match="above"):
        tk.credits.grant("acct", 1)
    assert tk.credits.balance("acct") == MAX_AMOUNT
    totals = tk.credits.totals("acct")
    assert (totals.grants, totals.balance) == (MAX_AMOUNT, MAX_AMOUNT)
    assert [e.action for e in tk.audit.entries()] == ["credits.grant"]  # the refused one: none


def test_grant_records_an_audit_entry_with_its_actor(tk: Toolkit) -> None:
    tk.credits.grant("acct", 7, reason="trial", actor="bob")
    (entry,) = tk.audit.entries()
    assert (entry.action, entry.actor, entry.target, entry.reason) == (
        "credits.grant", "bob", "acct", "trial",
    )  # fmt: skip
    assert entry.after == {"account": "acct", "amount": 7, "balance": 7}


def test_a_spend_above_the_range_is_insufficient_not_a_database_error(tk: Toolkit) -> None:
    tk.credits.grant("acct", 10)
    with pytest.raises(InsufficientCredits), tk.db.transaction() as s:
        tk.credits.spend_in(s, "acct", 2**64)
    assert tk.credits.balance("acct") == 10


@pytest.mark.parametrize("cost", [MAX_AMOUNT + 1, -1])
def test_job_cost_outside_the_range_is_refused_at_declaration(tk: Toolkit, cost: int) -> None:
    with pytest.raises(ConfigError, match="cost must be an integer from 0 to"):

        @tk.job("costly", cost=cost)
        def costly(ctx: object, payload: object) -> None:
            return None


def test_job_cost_at_the_bound_is_accepted(tk: Toolkit) -> None:
    @tk.job("costly", cost=MAX_AMOUNT)
    def costly(ctx: object, payload: object) -> None:
        return None

    assert tk.jobs.get("costly").cost == MAX_AMOUNT
