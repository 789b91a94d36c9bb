"""An expense that waits for its approver's decision, with a deadline.

``submit`` names the approver and arms a durable deadline timer in the same turn that marks the
expense pending. The decision arrives as an external event (``POST .../events/decision`` with
``{"approve": true, "by": "carol"}``, its ``Idempotency-Key`` the decision's id): it settles the
expense and cancels the deadline, in one turn. If the deadline fires first the expense is
escalated, and a decision that comes later is recorded as late, not applied. Both are turns on
the same actor, so exactly one of them decides; a decision posted twice is handled once.
"""

from __future__ import annotations

from typing import Any

from actorflow import workflow


class NotTheApprover(ValueError):
    """A decision from someone who is not the expense's approver."""


@workflow.virtual_actor(errors={NotTheApprover: 403})
class Expense:
    def __init__(self, employee: str = "", amount: int = 0, note: str = "") -> None:
        self.employee = employee
        self.amount = amount
        self.note = note
        self.state = "draft"
        self.approver: str | None = None
        self.history: list[dict[str, Any]] = []

    def submit(self, approver: str, decide_within: float = 48 * 3600) -> dict[str, Any]:
        """Ask ``approver`` to decide within ``decide_within`` seconds."""
        if self.state != "draft":
            raise ValueError(f"the expense is {self.state}, not a draft")
        self.state, self.approver = "pending", approver
        workflow.timers.set("deadline", after=decide_within, method="escalate")
        self.history.append({"event": "submitted", "to": approver})
        return self.info()

    @workflow.virtual_actor.event("decision")
    def on_decision(self, decision: dict[str, Any]) -> str:
        """``{"approve": bool, "by": name, "comment": text}`` from the approver."""
        if not isinstance(decision, dict) or not isinstance(decision.get("approve"), bool):
            raise ValueError('a decision looks like {"approve": true, "by": "<approver>"}')
        by = decision.get("by")
        if self.state != "pending":
            self.history.append({"event": "late decision", "by": by, "approve": decision["approve"]})
            return f"the expense is already {self.state}; the decision was recorded, not applied"
        if by != self.approver:
            raise NotTheApprover(f"{by!r} is not the approver of this expense ({self.approver!r} is)")
        self.state = "approved" if decision["approve"] else "rejected"
        self.history.append({"event": self.state, "by": by, "comment": decision.get("comment", "")})
        workflow.timers.cancel("deadline")
        return self.state

    def escalate(self) -> str:
        """Called by the deadline timer."""
        if self.state == "pending":
            self.state = "escalated"
            self.history.append({"event": "escalated", "from": self.approver})
        return self.state

    @workflow.virtual_actor.readonly
    def info(self) -> dict[str, Any]:
        return {
            "employee": self.employee,
            "amount": self.amount,
            "state": self.state,
            "approver": self.approver,
            "history": self.history,
        }
