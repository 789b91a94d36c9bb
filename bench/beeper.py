"""The actor type ``bench/timers.py`` deploys: it records when each of its timers fired."""

from __future__ import annotations

import time

from actorflow import workflow


@workflow.virtual_actor
class Beeper:
    def __init__(self) -> None:
        self.fired: list[list[object]] = []

    def beep(self, name: str) -> int:
        self.fired.append([name, time.time()])
        return len(self.fired)

    @workflow.virtual_actor.readonly
    def log(self) -> list[list[object]]:
        return self.fired
