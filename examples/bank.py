"""A bank: accounts that hold money, and transfers that neither create nor destroy it.

A transfer is one turn on the sending account: it takes the money out of the sender's balance
and, in the same atomic commit, puts a durable message in the sender's outbox that deposits
it at the receiver. The message is delivered after the commit, exactly once, even if a process
dies in between; a transfer that fails (insufficient funds) changes nothing and sends nothing.
"""

from __future__ import annotations

from typing import Any

from actorflow import workflow

#: How many recent entries an account's history keeps (state that grows without bound makes
#: every turn slower: each one loads and stores the whole state).
HISTORY_KEPT = 100


class InsufficientFunds(ValueError):
    """The account does not hold enough money for this withdrawal or transfer."""


@workflow.virtual_actor(errors={InsufficientFunds: 409})  # the caller's fault, not the server's
class Account:
    def __init__(self, owner: str = "", balance: int = 0) -> None:
        if balance < 0:
            raise ValueError("an account cannot open with a negative balance")
        self.owner = owner
        self.balance = balance
        self.history: list[list[Any]] = []

    def deposit(self, amount: int) -> int:
        """Add money; returns the new balance."""
        _check_amount(amount)
        self.balance += amount
        self._record(["deposit", amount])
        return self.balance

    def withdraw(self, amount: int) -> int:
        """Take money out; returns the new balance. Raises InsufficientFunds."""
        _check_amount(amount)
        if amount > self.balance:
            raise InsufficientFunds(f"balance {self.balance} is less than {amount}")
        self.balance -= amount
        self._record(["withdraw", amount])
        return self.balance

    def transfer(self, to: str, amount: int) -> int:
        """Move money to account ``to`` (an account id); returns this account's new balance."""
        _check_amount(amount)
        if amount > self.balance:
            raise InsufficientFunds(f"balance {self.balance} is less than {amount}")
        self.balance -= amount
        self._record(["transfer", amount, to])
        workflow.send(Account.get_or_create(to).deposit, amount)
        return self.balance

    def _record(self, entry: list[Any]) -> None:
        self.history.append(entry)
        del self.history[:-HISTORY_KEPT]

    @workflow.virtual_actor.readonly
    def get_balance(self) -> int:
        return self.balance

    @workflow.virtual_actor.readonly
    def statement(self) -> dict[str, Any]:
        return {"owner": self.owner, "balance": self.balance, "history": self.history[-20:]}


def _check_amount(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValueError(f"amounts are positive whole numbers, got {amount!r}")
