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
    (for durations measured in this process)."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The machine's clocks (``time.time`` and ``time.monotonic``)."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that stands still until :meth:`advance` moves it (both readings alike).

    Starts at the real time, so that stored times look plausible. Thread-safe.
    """

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else float(start)
        self._offset = self._now - time.monotonic()
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._now - self._offset

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on (never back)."""
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        with self._lock:
            self._now += seconds


#: The clock runtimes use unless given another.
SYSTEM = SystemClock()
