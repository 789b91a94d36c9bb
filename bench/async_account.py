"""The account ``bench/http.py --method async`` calls: ``examples.bank.Account`` with its
``deposit`` written ``async def``, doing the same work on the same state.

A plain method runs in a worker thread and its turn waits for it (it may block); an
``async def`` one runs on the replica's event loop, with no thread hop. The benchmark measures
both, so the price of the hop is seen beside the floor.
"""

from __future__ import annotations

from typing import Any

from actorflow import workflow
from examples.bank import HISTORY_KEPT, _check_amount


@workflow.virtual_actor
class AsyncAccount:
    def __init__(self, owner: str = "", balance: int = 0) -> None:
        self.owner = owner
        self.balance = balance
        self.history: list[list[Any]] = []

    async def deposit(self, amount: int) -> int:
        """What ``Account.deposit`` does, on the event loop."""
        _check_amount(amount)
        self.balance += amount
        self.history.append(["deposit", amount])
        del self.history[:-HISTORY_KEPT]
        return self.balance
