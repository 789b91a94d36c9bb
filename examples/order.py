"""An order that waits for a payment event and cancels itself by a timer if it never comes.

``place`` arms a durable one-shot timer (``payment_timeout``) in the same turn that marks the
order as awaiting payment. A ``payment`` event posted to the order (over HTTP, with an
``Idempotency-Key`` as the payment id) marks it paid and cancels the timer, again in one turn;
if the timer fires first, ``expire`` cancels the order. Whichever comes first wins, exactly
once: both are turns on the same actor, so they cannot interleave, and a payment that arrives
after the cancellation is reported rather than lost.
"""

from __future__ import annotations

from typing import Any

from actorflow import workflow


@workflow.virtual_actor
class Order:
    def __init__(self, item: str = "", amount: int = 0) -> None:
        self.item = item
        self.amount = amount
        self.state = "new"
        self.payments: list[dict[str, Any]] = []

    def place(self, pay_within: float = 60.0) -> dict[str, Any]:
        """Wait for payment for ``pay_within`` seconds, then cancel."""
        if self.state != "new":
            raise ValueError(f"order is {self.state}, not new")
        self.state = "awaiting_payment"
        workflow.timers.set("payment_timeout", after=pay_within, method="expire")
        return self.info()

    @workflow.virtual_actor.event("payment")
    def on_payment(self, payment: dict[str, Any]) -> str:
        """Handle a payment event ``{"amount": n}``."""
        if not isinstance(payment, dict) or not isinstance(payment.get("amount"), int):
            raise ValueError('a payment looks like {"amount": <whole number>}')
        self.payments.append(payment)
        if self.state != "awaiting_payment":
            return f"payment received while {self.state}: to be refunded"
        if payment["amount"] < self.amount:
            raise ValueError(f"payment of {payment['amount']} is less than {self.amount}")
        self.state = "paid"
        workflow.timers.cancel("payment_timeout")
        return self.state

    def expire(self) -> str:
        """Called by the payment timer."""
        if self.state == "awaiting_payment":
            self.state = "cancelled"
        return self.state

    @workflow.virtual_actor.readonly
    def info(self) -> dict[str, Any]:
        return {"item": self.item, "amount": self.amount, "state": self.state, "payments": self.payments}
