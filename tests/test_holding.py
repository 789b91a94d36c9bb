"""The runner holds back the records of finished steps that no step waits for, so that a wide
fan-out's completions share commits (``engine._holding``): never a record a step could start
on, nor for longer than ``HOLD_FOR``."""

from __future__ import annotations

import pytest

from actorflow.engine import _holding
from actorflow.engine._holding import HOLD_MAX, Held

pytestmark = pytest.mark.timeout(30)


def held_for(graph: dict[str, list[str]], enabled: bool = True, root: str = "join") -> Held:
    """A Held over ``graph`` (each step's inputs), every step active and none finished."""
    dependents: dict[str, list[str]] = {}
    for step, inputs in graph.items():
        for i in inputs:
            dependents.setdefault(i, []).append(step)
    missing = {step: len(inputs) for step, inputs in graph.items()}
    return Held(enabled, dependents, missing, set(graph), lambda sid: sid == root)


def test_leaves_of_a_join_are_held_until_the_last_one() -> None:
    held = held_for({"a": [], "b": [], "c": [], "join": ["a", "b", "c"]})
    assert held.keep([("a", 1)], urgent=False)
    assert held.keep([("b", 2)], urgent=False)
    assert held.due() is not None
    # The third gives the join its last input: what is held is committed now, all together.
    assert not held.keep([("c", 3)], urgent=False)
    _, finished = held.take()
    assert finished == [("a", 1), ("b", 2), ("c", 3)]
    assert held.due() is None and not held.finished


def test_inputs_finishing_together_end_the_hold_when_they_complete_a_step() -> None:
    held = held_for({"a": [], "b": [], "pair": ["a", "b"], "join": ["pair"]})
    assert not held.keep([("a", 1), ("b", 2)], urgent=False)


def test_the_output_a_run_waits_for_is_never_held() -> None:
    held = held_for({"a": [], "join": ["a"]})
    assert not held.keep([("join", 5)], urgent=False)


def test_urgent_groups_a_full_hold_and_a_disabled_hold_commit_at_once() -> None:
    graph = {f"s{i}": [] for i in range(HOLD_MAX + 1)} | {"join": [f"s{i}" for i in range(HOLD_MAX + 1)]}
    held = held_for(graph)
    assert not held.keep([("s0", 0)], urgent=True)  # a failure, a continuation, nothing in flight
    held.take()
    for i in range(HOLD_MAX - 1):
        assert held.keep([(f"s{i}", i)], urgent=False)
    assert not held.keep([(f"s{HOLD_MAX - 1}", 0)], urgent=False)
    assert not held_for(graph, enabled=False).keep([("s0", 0)], urgent=False)


def test_nothing_is_held_longer_than_hold_for(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(_holding.time, "monotonic", lambda: now[0])
    held = held_for({"a": [], "b": [], "c": [], "join": ["a", "b", "c"]})
    assert held.keep([("a", 1)], urgent=False)
    assert held.due() == pytest.approx(100.0 + _holding.HOLD_FOR)
    now[0] += _holding.HOLD_FOR
    assert not held.keep([], urgent=False)  # the loop woke at the due time, with nothing new


def test_with_nothing_held_and_nothing_new_there_is_nothing_to_commit() -> None:
    held = held_for({"a": [], "join": ["a"]})
    assert held.keep([], urgent=True)
