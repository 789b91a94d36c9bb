"""Actor types the Serve integration tests deploy (replicas import this module by name)."""

from __future__ import annotations

import os
import pathlib
import threading
import time
from typing import Any

from actorflow import workflow


@workflow.virtual_actor
class Counter:
    """The seed's counter, so the seed's block can run against the service."""

    def __init__(self) -> None:
        self.count = 0

    def incr(self) -> int:
        self.count += 1
        return self.count

    def __getstate__(self) -> int:
        return self.count

    def __setstate__(self, state: int) -> None:
        self.count = state


@workflow.virtual_actor
class Tally:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n

    def slow_incr(self, seconds: float) -> int:
        time.sleep(seconds)  # long enough for a replica to be killed under it
        self.n += 1
        return self.n

    @workflow.virtual_actor.readonly
    def value(self) -> int:
        return self.n

    @workflow.virtual_actor.readonly
    def measure(self, text: str, *, times: int = 1) -> int:
        return len(text) * times


@workflow.virtual_actor
class Probe:
    """Tells where a replica runs actor code."""

    @workflow.virtual_actor.readonly
    async def thread(self) -> str:
        return threading.current_thread().name


@workflow.step
def doubled(x: int) -> int:
    return 2 * x


@workflow.step(max_retries=2)
def after_one_failure(marker: str) -> int:
    """Raises on its first attempt (it leaves ``marker`` behind), returns 21 on the next."""
    if not os.path.exists(marker):
        pathlib.Path(marker).touch()
        raise RuntimeError("the first attempt fails")
    return 21


@workflow.virtual_actor
class Metered:
    """One of everything the metrics count: writes, messages, events, timers, a sub-workflow."""

    def __init__(self) -> None:
        self.n = 0

    def bump(self) -> int:
        self.n += 1
        return self.n

    def poke(self, other: str) -> int:
        workflow.send(Metered.get_or_create(other).bump)
        return self.n

    def arm(self, after: float) -> None:
        workflow.timers.set("soon", after=after, method="bump")

    def launch(self, marker: str) -> Any:
        return doubled.step(after_one_failure.step(marker))

    @workflow.virtual_actor.event("ping")
    def on_ping(self, payload: dict[str, Any]) -> int:
        self.n += int(payload.get("by", 1))
        return self.n

    @workflow.virtual_actor.readonly
    def value(self) -> int:
        return self.n
