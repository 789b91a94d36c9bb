"""Where actorflow's time comes from: a clock object, so that tests can move time by hand.

Every reading of the time in the actor layer (when a timer is due, how old an idempotency
record is, when an outbox entry is retried, how long an actor has been idle, the times stored
with a snapshot) goes through the clock of its runtime. :class:`SystemClock` is the real one;
:class:`ManualClock` only moves when told to, for tests of timers and passivation that must
not sleep.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Two readings: wall time (seconds since the epoch, for what is stored) and monotonic time
    (for durations measured in this process); and a wait for a wall time to come."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    def sleep_until(self, deadline: float) -> None: ...


class SystemClock:
    """The machine's clocks (``time.time`` and ``time.monotonic``)."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep_until(self, deadline: float) -> None:
        remaining = deadline - time.time()
        if remaining > 0:
            time.sleep(remaining)


class ManualClock:
    """A clock that stands still until :meth:`advance` moves it (both readings alike).

    Starts at the real time, so that stored times look plausible. Thread-safe. A thread in
    :meth:`sleep_until` wakes when the clock is moved past its deadline; :meth:`next_wake`
    says when the earliest sleeper is due, so that a test can move time from one to the next.
    """

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else float(start)
        self._offset = self._now - time.monotonic()
        self._moved = threading.Condition()
        self._sleepers: list[float] = []

    def time(self) -> float:
        with self._moved:
            return self._now

    def monotonic(self) -> float:
        with self._moved:
            return self._now - self._offset

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on (never back), waking the sleepers now due."""
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        with self._moved:
            self._now += seconds
            self._moved.notify_all()

    def sleep_until(self, deadline: float) -> None:
        """Block until the clock is moved to ``deadline`` (at once if it is there)."""
        with self._moved:
            if self._now >= deadline:
                return
            self._sleepers.append(deadline)
            try:
                while self._now < deadline:
                    self._moved.wait()
            finally:
                self._sleepers.remove(deadline)

    def next_wake(self) -> float | None:
        """The earliest deadline a thread sleeps until (None: nobody sleeps)."""
        with self._moved:
            return min(self._sleepers, default=None)

    def sleeping(self) -> int:
        """How many threads sleep on this clock."""
        with self._moved:
            return len(self._sleepers)


#: The clock runtimes use unless given another.
SYSTEM = SystemClock()
