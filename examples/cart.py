"""A shopping cart whose checkout is a durable workflow.

``add_item`` and ``remove_item`` are ordinary turns. ``checkout`` freezes the cart and returns
a workflow (reserve stock, charge, confirm) that runs outside the cart's lock: the cart keeps
answering while the order is processed, and a crash mid-checkout leaves the workflow resumable
with its finished steps kept.
"""

from __future__ import annotations

from typing import Any

from actorflow import workflow

PRICES = {"apple": 50, "pear": 75, "coffee": 900, "tea": 450}


@workflow.step
def reserve_stock(items: dict[str, int]) -> dict[str, int]:
    unknown = sorted(set(items) - set(PRICES))
    if unknown:
        raise ValueError(f"unknown products {unknown}")
    return items


@workflow.step
def charge(items: dict[str, int], customer: str) -> dict[str, Any]:
    total = sum(PRICES[name] * qty for name, qty in items.items())
    return {"customer": customer, "total_cents": total, "payment": f"pay-{customer}-{total}"}


@workflow.step
def confirm(reserved: dict[str, int], payment: dict[str, Any]) -> dict[str, Any]:
    return {"status": "confirmed", "items": reserved, **payment}


@workflow.virtual_actor
class Cart:
    def __init__(self, customer: str = "guest") -> None:
        self.customer = customer
        self.items: dict[str, int] = {}
        self.orders = 0

    def add_item(self, name: str, qty: int = 1) -> dict[str, int]:
        if name not in PRICES:
            raise KeyError(f"no product {name!r}; we sell {sorted(PRICES)}")
        if qty <= 0:
            raise ValueError("qty must be positive")
        self.items[name] = self.items.get(name, 0) + qty
        return self.items

    def remove_item(self, name: str) -> dict[str, int]:
        self.items.pop(name, None)
        return self.items

    def checkout(self) -> Any:
        """Empty the cart and process the order as a durable workflow; returns the order."""
        if not self.items:
            raise ValueError("the cart is empty")
        items, self.items = self.items, {}
        self.orders += 1
        return confirm.step(reserve_stock.step(items), charge.step(items, self.customer))

    @workflow.virtual_actor.readonly
    def contents(self) -> dict[str, Any]:
        total = sum(PRICES[n] * q for n, q in self.items.items())
        return {"customer": self.customer, "items": self.items, "total_cents": total, "orders": self.orders}
