"""The trip saga (examples/trip.py) and the expense approval (examples/approval.py).

The saga: booked when every step succeeds; a failure undoes what was held before it, in
reverse order, and holds nothing afterwards; and a crash of the process running it, in the
middle (SIGKILL while the card network is answering), then ``workflow.resume``, books each
seat, room and charge exactly once. The approval: a decision in time wins and cancels the
deadline; no decision escalates it at the deadline and not a second before; a late decision is
recorded, not applied; a decision posted twice is handled once; one from someone else is 403.
Everything but the crash runs on actorflow.testing's clock."""

from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Any

import pytest
from _procs import child, sigkill, wait_while_alive

from actorflow import testing, workflow
from actorflow.engine import WorkflowStatus, close_all

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOUR = 3600.0


@pytest.fixture
def env() -> Any:
    with testing.Environment(modules=["examples.trip", "examples.approval"]) as env:
        yield env


# ---------------------------------------------------------------------------- the saga
def test_a_trip_is_booked_when_every_step_succeeds(env: testing.Environment) -> None:
    out = env.call("Trip", "t1", "book", "FL1", "H1", 2, "ann", 300)
    assert out == {"status": "booked", "charged": 300, "trip": "t1"}
    assert env.state("Trip", "t1")["status"] == "booked"
    assert env.state("Flight", "FL1")["holds"] == {"t1": 1}
    assert env.state("Hotel", "H1")["holds"] == {"t1": 2}
    assert env.state("Card", "ann")["charges"] == {"t1": 300}


def test_a_failure_undoes_what_was_held_before_it(env: testing.Environment) -> None:
    env.call("Trip", "t1", "book", "FL1", "H1", 2, "ann", 300)  # takes H1's only room
    out = env.call("Trip", "t2", "book", "FL1", "H1", 1, "bob", 100)
    assert out["status"] == "cancelled" and out["reason"] == "the hotel is full"
    assert env.state("Flight", "FL1")["holds"] == {"t1": 1}  # t2's seat was released
    assert "Card.charge" not in [s["name"] for s in env.workflow("Trip:t2:1")["steps"]]  # never reached
    out = env.call("Trip", "t3", "book", "FL2", "H2", 1, "cat", 900)  # over the card's 500
    assert out["status"] == "cancelled" and out["reason"].startswith("declined")
    assert env.state("Flight", "FL2")["holds"] == {} and env.state("Hotel", "H2")["holds"] == {}
    steps = {s["name"]: s for s in env.workflow("Trip:t3:1")["steps"]}
    # The hotel is released before the flight starts to be: undone in reverse order.
    assert steps["Hotel.release"]["end_time"] <= steps["Flight.release"]["start_time"]
    # A cancelled trip can be booked again, once there is room.
    out = env.call("Trip", "t2", "book", "FL1", "H3", 1, "bob", 100)
    assert out["status"] == "booked"


SAGA = r"""
import sys
from actorflow import workflow
from examples.trip import Card, Trip

storage = sys.argv[1]
workflow.init(storage)
Card.get_or_create("slow", balance=500, latency=3.0)
print(Trip.get("crash").book.run("FL9", "H9", 3, "slow", 250))
"""


@pytest.mark.slow
def test_a_saga_killed_in_the_middle_and_resumed_books_everything_once(
    tmp_path: pathlib.Path, ray_address: str
) -> None:
    storage = f"sqlite://{tmp_path}/saga.db"
    script = tmp_path / "saga.py"
    script.write_text(SAGA)
    workflow.init(storage)
    try:
        _crash_and_resume(script, storage, ray_address)
    finally:
        close_all()


def _crash_and_resume(script: pathlib.Path, storage: str, ray_address: str) -> None:
    from examples.trip import Card, Flight, Hotel, Trip

    env = {**os.environ, "RAY_ADDRESS": ray_address, "PYTHONPATH": str(ROOT)}
    with child([sys.executable, str(script), storage], env=env, cwd=ROOT) as proc:
        # The room is held: the card network now takes 3 s to answer. Kill the saga's runner.
        wait_while_alive(proc, lambda: Hotel.get("H9").info.run()["holds"] != {}, "the hotel hold")
        sigkill(proc)
    wid = "Trip:crash:1"
    assert workflow.get_status(wid) in (WorkflowStatus.RESUMABLE, WorkflowStatus.RUNNING)
    assert Trip.get("crash").info.run()["status"] == "booking"
    out = workflow.resume(wid)
    assert out == {"status": "booked", "charged": 250, "trip": "crash"}
    assert Flight.get("FL9").info.run()["holds"] == {"crash": 1}
    assert Hotel.get("H9").info.run()["holds"] == {"crash": 3}
    card = Card.get("slow").info.run()
    assert card["charges"] == {"crash": 250} and card["balance"] == 250  # charged once
    assert Trip.get("crash").info.run()["status"] == "booked"
    assert workflow.resume(wid) == out  # resuming again changes nothing


# ------------------------------------------------------------------------ the approval
def submit(env: testing.Environment, expense: str, within: float = 48 * HOUR) -> None:
    env.create("Expense", expense, "dana", 120, "train tickets")
    env.call("Expense", expense, "submit", "carol", decide_within=within)


def test_a_decision_in_time_wins_and_cancels_the_deadline(env: testing.Environment) -> None:
    submit(env, "e1")
    env.advance(hours=47)
    assert env.post_event("Expense", "e1", "decision", {"approve": True, "by": "carol"}) == "approved"
    assert env.timers("Expense", "e1") == {}
    env.advance(days=3)
    assert env.state("Expense", "e1")["state"] == "approved"


def test_no_decision_escalates_at_the_deadline_and_a_late_one_is_only_recorded(
    env: testing.Environment,
) -> None:
    submit(env, "e2")
    env.advance(hours=48, seconds=-1)
    assert env.state("Expense", "e2")["state"] == "pending"
    env.advance(seconds=1)
    assert env.state("Expense", "e2")["state"] == "escalated"
    late = env.post_event("Expense", "e2", "decision", {"approve": False, "by": "carol"})
    assert "already escalated" in late
    assert [h["event"] for h in env.state("Expense", "e2")["history"]] == [
        "submitted",
        "escalated",
        "late decision",
    ]


def test_a_decision_posted_twice_counts_once_and_only_the_approver_decides(
    env: testing.Environment,
) -> None:
    submit(env, "e3")
    http = env.http()
    url = "/v1/actors/Expense/e3/events/decision?wait=true"
    r = http.post(url, json={"approve": True, "by": "mallory"})
    assert r.status_code == 403 and r.json()["type"] == "NotTheApprover"
    decision = {"approve": False, "by": "carol", "comment": "first class?"}
    first = http.post(url, json=decision, headers={"idempotency-key": "decision-1"})
    again = http.post(url, json=decision, headers={"idempotency-key": "decision-1"})
    assert first.json() == again.json() == {"result": "rejected"}
    history = env.state("Expense", "e3")["history"]
    assert [h["event"] for h in history] == ["submitted", "rejected"]
    assert json.loads(json.dumps(env.timers("Expense", "e3"))) == {}
