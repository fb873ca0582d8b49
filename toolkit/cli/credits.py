"""``toolkit credits``: grant and inspect balances."""

from __future__ import annotations

import click

from toolkit.cli.context import CliContext, pass_ctx
from toolkit.cli.render import console, emit_json


@click.group("credits")
def group() -> None:
    """Credit balances."""


@group.command("grant", context_settings={"ignore_unknown_options": True})
@click.argument("account")
@click.argument("amount", type=int)
@click.option("--reason", default=None, help="Why, kept in the ledger and the audit log.")
@click.option("--actor", default=None, help="Who (default $TOOLKIT_ACTOR or the OS user).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@pass_ctx
def grant(
    obj: CliContext,
    account: str,
    amount: int,
    reason: str | None,
    actor: str | None,
    as_json: bool,
) -> None:
    """Add AMOUNT credits (1 to 2**53-1) to ACCOUNT; audited as credits.grant."""
    balance = obj.toolkit.credits.grant(account, amount, reason=reason, actor=actor)
    if as_json:
        emit_json({"account": account, "granted": amount, "balance": balance})
        return
    console().print(f"[green]granted {amount}[/] to {account}; balance {balance}")


@group.command("balance")
@click.argument("account")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@pass_ctx
def balance(obj: CliContext, account: str, as_json: bool) -> None:
    """ACCOUNT's balance, and the ledger sums it must agree with."""
    tk = obj.toolkit
    bal, totals = tk.credits.balance(account), tk.credits.totals(account)
    if as_json:
        emit_json(
            {
                "account": account,
                "balance": bal,
                "grants": totals.grants,
                "debits": totals.debits,
                "refunds": totals.refunds,
                "consistent": bal == totals.balance,
            }
        )
        return
    colour = "green" if bal == totals.balance else "bold red"
    console().print(
        f"{account}: [{colour}]{bal}[/] (grants {totals.grants} - debits "
        f"{totals.debits} + refunds {totals.refunds})"
    )
