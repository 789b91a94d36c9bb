"""The settings of an actor runtime, in one validated object."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from actorflow._clock import SYSTEM, Clock
from actorflow.errors import ConfigError


@dataclass
class ActorConfig:
    """How an :class:`~actorflow.actor.ActorRuntime` behaves. Checked when made. Its parts read
    most values when they need them, so changing one on a running runtime takes effect at once
    (tests tune them); ``threads`` is read when the runtime is made and ``timer_concurrency``
    when its scheduler starts, and a value changed later is not checked again.

    Cache: ``cache_size`` snapshots kept in memory (least recently used go first); an actor
    unused for ``idle_seconds`` is dropped from memory (passivated).

    Methods: ``threads`` worker threads for plain methods (more are made, in an overflow pool,
    when all are taken).

    Idempotency window: a keyed call's result is kept ``idempotency_ttl`` seconds and never
    dropped earlier; an actor holding ``idempotency_records`` unexpired records refuses new
    keys until some expire.

    Outbox: an entry older than ``outbox_grace`` seconds is the recovery loop's to deliver
    (its sender's process died, or its first try failed); one whose delivery failed for a
    reason other than its handler's answer is tried again ``outbox_retry`` seconds later.

    Timers: the scheduler looks for due timers every ``tick_interval`` seconds while some are
    due, fires at most ``timer_concurrency`` at once and holds at most ``timer_backlog``
    unfired claims; a tick whose method raised is retried after ``timer_backoff`` seconds,
    doubling. While nothing is due it sleeps until the earliest timer it has seen is, at most
    ``idle_tick_interval`` seconds, and wakes at once when this process sets or moves a timer:
    a timer that another process set, due sooner than any this one knows of, is found up to
    ``idle_tick_interval`` late (set it to ``tick_interval`` to look every tick). A tick fires
    up to ``tick_interval`` plus its turn late (measured in docs/design.md, Timers). With a
    clock other than the system's, the scheduler looks every ``tick_interval``.

    ``clock``: where the runtime reads the time (see :mod:`actorflow._clock`).
    """

    cache_size: int = 10_000
    idle_seconds: float = 600.0
    threads: int = 64
    idempotency_records: int = 100_000
    idempotency_ttl: float = 24 * 3600.0
    outbox_grace: float = 2.0
    outbox_retry: float = 5.0
    tick_interval: float = 0.02
    idle_tick_interval: float = 0.25
    timer_concurrency: int = 64
    timer_backlog: int = 512
    timer_backoff: float = 1.0
    clock: Clock = field(default=SYSTEM, repr=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "clock":
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"actor runtime setting {f.name} must be a number >= 0, got {value!r}")
        if not math.isfinite(self.idle_tick_interval):  # an endless sleep misses others' timers
            raise ConfigError(
                f"actor runtime setting idle_tick_interval must be finite, got {self.idle_tick_interval!r}"
            )
        if self.threads < 1 or self.cache_size < 1 or self.timer_concurrency < 1:
            raise ConfigError("threads, cache_size and timer_concurrency must be at least 1")
