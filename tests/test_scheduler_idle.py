"""The timer scheduler while nothing is due, on every backend, in real time: it sleeps until
the earliest timer in the index falls due (at most ``idle_tick_interval``), a timer its own
process sets wakes it at once, and one another process set is found within the idle
interval."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from actorflow import workflow
from actorflow.actor import ActorConfig, ActorRuntime, lookup
from actorflow.engine import WorkflowRuntime

pytestmark = pytest.mark.timeout(120)


@workflow.virtual_actor(name="IdleBell")
class IdleBell:
    def __init__(self) -> None:
        self.rang: list[float] = []

    def arm(self, after: float) -> float:
        workflow.timers.set("t", after=after, method="ring")
        return time.time() + after

    def ring(self) -> None:
        self.rang.append(time.time())

    @workflow.virtual_actor.readonly
    def rings(self) -> list[float]:
        return self.rang


class CountedReads:
    """The runtime's real storage, counting the scheduler's index reads."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self.index_reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    async def index_range(self, *args: Any, **kwargs: Any) -> Any:
        self.index_reads += 1
        return await self._storage.index_range(*args, **kwargs)


@pytest.fixture
def runtimes(storage_url: str) -> Iterator[Any]:
    made: list[tuple[WorkflowRuntime, ActorRuntime]] = []

    def make(start: bool = True, **config: Any) -> ActorRuntime:
        wf = WorkflowRuntime(storage_url)
        rt = ActorRuntime(wf, ActorConfig(**config))
        made.append((wf, rt))
        if start:
            rt.start()
        return rt

    yield make
    for wf, rt in made:
        rt.close()
        wf.close()


def call(rt: ActorRuntime, method: str, *args: Any) -> Any:
    return rt.blocking(rt.call(lookup("IdleBell"), "b", method, args, {}, None), 30)


def wait_for_ring(rt: ActorRuntime, seconds: float) -> float:
    deadline = time.monotonic() + seconds
    while not (rang := call(rt, "rings")):
        assert time.monotonic() < deadline, f"the timer did not fire within {seconds} s"
        time.sleep(0.02)
    return float(rang[0])


def test_an_idle_scheduler_looks_a_few_times_a_second(runtimes: Any) -> None:
    sleepy = runtimes(start=False, idle_tick_interval=0.25)
    eager = runtimes(start=False, idle_tick_interval=0.0)  # at most tick_interval: every tick
    counted = []
    for rt in (sleepy, eager):
        rt.scheduler.storage = reads = CountedReads(rt.scheduler.storage)  # type: ignore[assignment]
        counted.append(reads)
        rt.start()
    time.sleep(0.5)  # both settled into their rhythm
    before = [c.index_reads for c in counted]
    time.sleep(2.0)
    sleepy_reads, eager_reads = (c.index_reads - b for c, b in zip(counted, before, strict=True))
    # 2 s at 0.25 s a pass is 8 passes of one read (nothing is due); every 20 ms is 100.
    assert sleepy_reads <= 12, sleepy_reads
    assert eager_reads >= 25, eager_reads


def test_a_timer_set_here_wakes_the_sleeping_scheduler(runtimes: Any) -> None:
    rt = runtimes(idle_tick_interval=60.0)
    assert rt.create(lookup("IdleBell"), "b", (), {})
    time.sleep(0.5)  # the scheduler found nothing and sleeps for up to a minute
    due = call(rt, "arm", 0.2)
    fired = wait_for_ring(rt, 20)
    assert fired >= due - 0.01
    assert fired - due < 10, "the timer waited for the idle scheduler instead of waking it"


def test_a_timer_another_process_set_is_found_within_the_idle_interval(runtimes: Any) -> None:
    setter = runtimes(start=False)  # runs no scheduler: like a script that set it and left
    firer = runtimes(idle_tick_interval=1.0)
    assert setter.create(lookup("IdleBell"), "b", (), {})
    time.sleep(0.3)
    due = call(setter, "arm", 0.1)
    fired = wait_for_ring(firer, 20)
    assert fired >= due - 0.01
    assert fired - due < 1.0 + 5.0  # the idle interval, and room for a loaded machine


def test_a_negative_or_endless_idle_interval_is_refused() -> None:
    from actorflow.errors import ConfigError

    for bad in (-1, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="idle_tick_interval"):
            ActorConfig(idle_tick_interval=bad)
