"""A trip booking as a saga: reserve a flight seat, then a hotel room, then charge the card;
when a later step fails, undo the earlier ones in reverse order.

Every step is a call on an actor made with ``handle.method.step(...)``, which runs it exactly
once however often the step is retried or the workflow resumed (its idempotency key comes from
the workflow and the step). So a crash anywhere in the middle, followed by
``workflow.resume(id)`` (or the service's automatic recovery), never books a seat twice or
charges the card twice, and the compensation of a failed booking releases each hold once.

Business outcomes are values, not exceptions (``{"ok": False, "reason": "sold out"}``): the
saga decides on them, and nothing is retried that could only fail again. ``Trip.book``
launches the saga as the trip's own durable workflow; the call's result is its outcome, which
the last step also records on the trip.
"""

from __future__ import annotations

import time
from typing import Any

from actorflow import workflow


@workflow.virtual_actor
class Flight:
    """Seats on one flight; a trip holds some until it is released."""

    def __init__(self, seats: int = 2) -> None:
        self.seats = seats
        self.holds: dict[str, int] = {}

    def reserve(self, trip: str, seats: int = 1) -> dict[str, Any]:
        if trip in self.holds:
            return {"ok": True, "seats": self.holds[trip]}
        if self.seats - sum(self.holds.values()) < seats:
            return {"ok": False, "reason": "the flight is sold out"}
        self.holds[trip] = seats
        return {"ok": True, "seats": seats}

    def release(self, trip: str) -> bool:
        return self.holds.pop(trip, None) is not None

    @workflow.virtual_actor.readonly
    def info(self) -> dict[str, Any]:
        return {"seats": self.seats, "holds": self.holds}


@workflow.virtual_actor
class Hotel:
    """Rooms in one hotel, held per trip."""

    def __init__(self, rooms: int = 1) -> None:
        self.rooms = rooms
        self.holds: dict[str, int] = {}

    def reserve(self, trip: str, nights: int) -> dict[str, Any]:
        if trip in self.holds:
            return {"ok": True, "nights": self.holds[trip]}
        if len(self.holds) >= self.rooms:
            return {"ok": False, "reason": "the hotel is full"}
        self.holds[trip] = nights
        return {"ok": True, "nights": nights}

    def release(self, trip: str) -> bool:
        return self.holds.pop(trip, None) is not None

    @workflow.virtual_actor.readonly
    def info(self) -> dict[str, Any]:
        return {"rooms": self.rooms, "holds": self.holds}


@workflow.virtual_actor
class Card:
    """A payment card. ``latency`` is how long the card network takes to answer, in seconds."""

    def __init__(self, balance: int = 500, latency: float = 0.0) -> None:
        self.balance = balance
        self.latency = latency
        self.charges: dict[str, int] = {}

    def charge(self, trip: str, amount: int) -> dict[str, Any]:
        if self.latency:
            time.sleep(self.latency)  # the network's answer; nothing is committed until it came
        if trip in self.charges:
            return {"ok": True, "charged": self.charges[trip]}
        if amount > self.balance:
            return {"ok": False, "reason": f"declined: {amount} is over the balance of {self.balance}"}
        self.balance -= amount
        self.charges[trip] = amount
        return {"ok": True, "charged": amount}

    def refund(self, trip: str) -> int:
        amount = self.charges.pop(trip, 0)
        self.balance += amount
        return amount

    @workflow.virtual_actor.readonly
    def info(self) -> dict[str, Any]:
        return {"balance": self.balance, "charges": self.charges}


@workflow.virtual_actor
class Trip:
    def __init__(self) -> None:
        self.status = "new"
        self.outcome: dict[str, Any] | None = None

    def book(self, flight: str, hotel: str, nights: int, card: str, amount: int) -> Any:
        """Run the booking saga; returns its outcome (``booked``, or ``cancelled`` with why)."""
        if self.status not in ("new", "cancelled"):
            raise ValueError(f"the trip is {self.status}")
        self.status = "booking"
        trip = workflow.current_actor().actor_id
        plan = {
            "trip": trip,
            "flight": flight,
            "hotel": hotel,
            "nights": nights,
            "card": card,
            "amount": amount,
        }
        return after_flight.step(plan, Flight.get(flight).reserve.step(plan["trip"]))

    def finished(self, outcome: dict[str, Any]) -> dict[str, Any]:
        self.status, self.outcome = outcome["status"], outcome
        return outcome

    @workflow.virtual_actor.readonly
    def info(self) -> dict[str, Any]:
        return {"status": self.status, "outcome": self.outcome}


# The saga, one decision after each step. Each returns the next step (a continuation).
@workflow.step
def after_flight(plan: dict[str, Any], flight: dict[str, Any]) -> Any:
    if not flight["ok"]:
        return done.step(plan, {"status": "cancelled", "reason": flight["reason"]})
    return after_hotel.step(plan, Hotel.get(plan["hotel"]).reserve.step(plan["trip"], plan["nights"]))


@workflow.step
def after_hotel(plan: dict[str, Any], hotel: dict[str, Any]) -> Any:
    if not hotel["ok"]:
        undo = Flight.get(plan["flight"]).release.step(plan["trip"])
        return done.step(plan, {"status": "cancelled", "reason": hotel["reason"]}, undo)
    return after_charge.step(plan, Card.get(plan["card"]).charge.step(plan["trip"], plan["amount"]))


@workflow.step
def after_charge(plan: dict[str, Any], charge: dict[str, Any]) -> Any:
    if not charge["ok"]:
        # Undo in reverse order: the hotel, then the flight.
        hotel_released = Hotel.get(plan["hotel"]).release.step(plan["trip"])
        flight_released = then.step(hotel_released, Flight.get(plan["flight"]).release.step, plan["trip"])
        return done.step(plan, {"status": "cancelled", "reason": charge["reason"]}, flight_released)
    return done.step(plan, {"status": "booked", "charged": charge["charged"]})


@workflow.step
def then(_before: Any, action: Any, *args: Any) -> Any:
    """Run ``action(*args)`` (an actor method's ``.step``) after ``_before`` has finished."""
    return action(*args)


@workflow.step
def done(plan: dict[str, Any], outcome: dict[str, Any], _undone: Any = None) -> Any:
    outcome = {**outcome, "trip": plan["trip"]}
    return Trip.get(plan["trip"]).finished.step(outcome)
