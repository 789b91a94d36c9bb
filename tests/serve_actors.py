"""Actor types the Serve integration tests deploy (replicas import this module by name)."""

from __future__ import annotations

import time

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
