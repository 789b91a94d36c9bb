"""The executor holds a window of a wide graph, not all of it: at most ``MAX_IN_FLIGHT`` steps
submitted at once, and no copy of an output once every consumer has been given it.

Steps run in threads of this process (``actorflow.testing``), so the test can watch the
executor while they run."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from actorflow import testing, workflow
from actorflow.engine import _executor

pytestmark = pytest.mark.timeout(60)


@workflow.step
def slow(i: int) -> int:
    time.sleep(0.02)
    return i


@workflow.step
def total(*xs: int) -> int:
    return sum(xs)


def _watch(env: testing.Environment, running: Any, look: Callable[[], None]) -> Any:
    deadline = time.monotonic() + 30
    while not running.done():
        assert time.monotonic() < deadline
        look()
        time.sleep(0.002)
    return running.result()


def test_a_fan_out_wider_than_the_window_runs_a_window_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_executor, "MAX_IN_FLIGHT", 4)
    most = 0

    def look() -> None:
        nonlocal most
        most = max(most, env.runner.running())

    with testing.Environment() as env:
        running = total.step(*[slow.step(i) for i in range(40)]).run_async(workflow_id="wide")
        assert _watch(env, running, look) == sum(range(40))
    assert 1 < most <= 4


@workflow.step
def first() -> list[int]:
    return list(range(1000))


@workflow.step
def second(xs: list[int]) -> int:
    return len(xs)


@workflow.step
def third(n: int) -> int:
    time.sleep(0.3)
    return n + 1


def test_an_output_every_consumer_has_is_not_kept_by_the_driver() -> None:
    seen: dict[str, Any] = {}

    def look() -> None:
        for ex in list(env.workflows.engine.executors):
            if any(spec.name.endswith("third") for sid, spec in ex.specs.items() if sid in ex.in_flight):
                seen.update(
                    {spec.name.rsplit(".", 1)[-1]: ex.done.get(sid) for sid, spec in ex.specs.items()}
                )

    with testing.Environment() as env:
        running = third.step(second.step(first.step())).run_async(workflow_id="chain")
        assert _watch(env, running, look) == 1001
        # The released output is still in storage, where a resume would read it.
        (sid,) = [s["step_id"] for s in env.workflow("chain")["steps"] if s["name"].endswith("first")]
        assert env.workflows.get_output("chain", task_id=sid) == list(range(1000))
    # While third runs, each earlier output has been handed to its one consumer: none is kept.
    assert seen == {"first": _executor.RELEASED, "second": _executor.RELEASED, "third": None}
