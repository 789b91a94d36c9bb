"""Durable timers on actors.

Inside a method, ``workflow.timers.set(name, after=|at=, every=None, method=..., args=...)`` and
``workflow.timers.cancel(name)`` take effect with the turn's commit (if the method raises, they
never happened). A timer lives in storage, indexed by when it is next due, and survives
restarts of everything.

Firing: a scheduler pass (a background task of every actor runtime; ``POST /v1/timers/tick``
for an external clock) takes the due timers, claims them with a compare-and-set on each one's
record (many in one commit; of two schedulers only one claims a tick), and calls the timer's
method with the idempotency key ``timer:{name}:{setting}:{due}``: delivery is at least once, the effect
exactly once. The turn that runs the method also commits the timer's next state (its next tick,
or its removal), in the same atomic write as the effect and the idempotency record.

* A periodic timer whose ticks were missed while nothing ran fires **once**, and the method
  learns how many further ticks that firing stands for: ``missed`` (passed as the ``missed``
  keyword when the method accepts one, and readable as ``workflow.timers.firing().missed``),
  the number of ticks due by now besides the one being fired: ``floor((now - due) / every)``.
  A timer whose first due tick was ten and a half periods ago fires once with ``missed == 10``;
  ten periods of downtime give 9 or 10, depending on where in a period it stopped. The next tick
  is then the first one after now.
* A firing whose method raises is retried with exponential backoff (1 s, 2 s, 4 s...) up to
  ``MAX_ATTEMPTS`` times, then recorded as failed on the actor (``GET .../timers`` shows it)
  and dropped (one-shot) or moved to its next tick (periodic).
"""

from __future__ import annotations

import contextvars
import math
import time
import uuid
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from actorflow import _codec
from actorflow._ids import check_id
from actorflow.actor._keys import TIMER_INDEX, tick_key
from actorflow.errors import ConfigError
from actorflow.storage import Batch

MIN_PERIOD = 1.0
#: The furthest a timer may be set ahead, and its longest period: 100 years.
MAX_SECONDS = 100 * 365 * 24 * 3600.0
MAX_ATTEMPTS = 5
CLAIM_SECONDS = 60.0
CLAIM_BATCH = 100  # timers claimed per commit (all of one actor)
CLAIM_CONCURRENCY = 16  # actors whose timers one scheduler claims at once


@dataclass
class Timer:
    """A stored timer. ``due`` is the tick being fired (it names the idempotency key);
    ``next_try`` is when the scheduler should look at it (later than ``due`` while retrying)."""

    name: str
    method: str
    args: list[Any]
    kwargs: dict[str, Any]
    due: float
    every: float | None = None
    attempts: int = 0
    claim: str | None = None
    claim_until: float = 0.0
    next_try: float = 0.0
    created_at: float = field(default_factory=time.time)
    # Names this setting of the timer: one set again under its name (even for the same due
    # time, after its tick fired) gets a new one, so its ticks are not taken for the old ones.
    # None for timers stored before it existed.
    setting: str | None = None

    def tick_key(self) -> str:
        """The idempotency key of the tick being fired: ``timer:{name}:{setting}:{due}``."""
        return tick_key(self.name, self.setting, self.due)

    def encode(self) -> bytes:
        return _codec.json_dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> Timer:
        return cls(**_codec.json_loads(raw))

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.method,
            "args": self.args,
            "kwargs": self.kwargs,
            "due": self.due,
            "every": self.every,
            "attempts": self.attempts,
        }

    def missed_at(self, now: float) -> int:
        if not self.every:
            return 0
        return max(0, math.floor((now - self.due) / self.every))

    def following(self, now: float) -> float:
        """The first tick strictly after ``now`` (periodic timers)."""
        assert self.every
        return self.due + (self.missed_at(now) + 1) * self.every


def _seconds(label: str, value: Any) -> float | None:
    """A timer field as a finite float, or ``ConfigError`` (``None`` stays ``None``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"timer {label!r} must be a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except OverflowError:
        raise ConfigError(f"timer {label!r} is out of range") from None
    if not math.isfinite(seconds):
        raise ConfigError(f"timer {label!r} must be finite")
    return seconds


def make_timer(
    ac: Any,
    name: str,
    *,
    method: str,
    after: float | None = None,
    at: float | None = None,
    every: float | None = None,
    args: Any = (),
    kwargs: dict[str, Any] | None = None,
    now: float | None = None,
) -> Timer:
    """Validate a timer request (raises ``ConfigError``, ``ActorMethodNotFoundError`` or
    ``ActorArgumentsError``) and build it. ``after`` is seconds from now, ``at`` an epoch time;
    ``every`` (seconds, at least ``MIN_PERIOD``) makes it periodic, first due at ``after``/``at``
    or one period from ``now`` (the clock's reading; default: the system's)."""
    check_id("timer name", name)
    if "/" in name:
        raise ConfigError("timer names may not contain '/'")
    if not isinstance(method, str):
        raise ConfigError(f"timer 'method' must be a method name (a string), got {type(method).__name__}")
    after, at, every = _seconds("after", after), _seconds("at", at), _seconds("every", every)
    if after is not None and at is not None:
        raise ConfigError("give a timer either 'after' or 'at', not both")
    if after is not None and not 0 <= after <= MAX_SECONDS:
        raise ConfigError(f"timer 'after' must be between 0 and {MAX_SECONDS:.0f} s, got {after}")
    now = time.time() if now is None else now
    if at is not None and not 0 <= at <= now + MAX_SECONDS:
        raise ConfigError(f"timer 'at' must be an epoch time between 0 and {MAX_SECONDS:.0f} s from now")
    if every is not None and not MIN_PERIOD <= every <= MAX_SECONDS:
        raise ConfigError(
            f"timer period 'every' must be between {MIN_PERIOD} and {MAX_SECONDS:.0f} s, got {every}"
        )
    if not isinstance(args, (list, tuple)):
        raise ConfigError(f"timer 'args' must be a list, got {type(args).__name__}")
    if kwargs is not None and not (isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs)):
        raise ConfigError(f"timer 'kwargs' must be an object of named arguments, not {type(kwargs).__name__}")
    if after is not None:
        due = now + float(after)
    elif at is not None:
        due = float(at)
    elif every is not None:
        due = now + float(every)
    else:
        raise ConfigError("a timer needs 'after' (seconds) or 'at' (epoch time), or a period 'every'")
    kwargs = dict(kwargs or {})
    info = ac.method(method)
    info.check_args(ac.type_name, tuple(args), kwargs)
    _codec.check_json([list(args), kwargs], what="timer arguments")
    period = float(every) if every else None
    setting = uuid.uuid4().hex[:16]
    return Timer(name, method, list(args), kwargs, due, period, next_try=due, created_at=now, setting=setting)


@dataclass(frozen=True)
class Firing:
    """What the running method is being called for, when a timer called it."""

    name: str
    due: float
    missed: int
    attempt: int


current_firing: contextvars.ContextVar[Firing | None] = contextvars.ContextVar(
    "actorflow_firing", default=None
)


@dataclass
class Completion:
    """How a timer firing leaves its timer: committed in the same atomic write as the turn it
    fires (with the idempotency record), so a tick's effect and the record that it fired can
    never be separated. Only while the timer is still exactly as this firing claimed it."""

    timer: Timer
    key: str
    member: str
    claimed: bytes
    applied: bool = False  # set when a turn committed it

    def add_to(self, batch: Batch, now: float, written: Collection[str] = ()) -> None:
        """Add the timer's next state to ``batch``, on the condition that the claim is intact;
        ``written``: timer names the batch sets or cancels already (those writes win)."""
        batch.require(self.key, self.claimed)
        if self.timer.name in written:
            return  # the fired method set or cancelled this very timer
        if self.timer.every:
            nxt = self.timer.following(now)
            after = replace(self.timer, due=nxt, next_try=nxt, attempts=0, claim=None, claim_until=0.0)
            batch.put(self.key, after.encode()).index_add(TIMER_INDEX, self.member, nxt)
        else:
            batch.delete(self.key).index_remove(TIMER_INDEX, self.member)
