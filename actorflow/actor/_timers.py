"""Durable timers on actors.

Inside a method, ``workflow.timers.set(name, after=|at=, every=|cron=, tz=, method=..., args=...)``
and ``workflow.timers.cancel(name)`` take effect with the turn's commit (if the method raises,
they never happened). ``after`` is seconds from now; ``at`` an epoch time or an ISO-8601 date
and time; ``every`` seconds, an ISO-8601 duration (``PT5M``) or repeating interval (``R5/PT1M``:
five ticks, then the timer ends); ``cron`` a cron expression read in zone ``tz`` (see
:mod:`actorflow.actor._schedule`). A timer lives in storage, indexed by when it is next due, and survives
restarts of everything.

Firing: a scheduler pass (a background task of every actor runtime; ``POST /v1/timers/tick``
for an external clock) takes the due timers, claims them with a compare-and-set on each one's
record (many in one commit; of two schedulers only one claims a tick), and calls the timer's
method with the idempotency key ``timer:{name}:{setting}:{due}``: delivery is at least once, the effect
exactly once. The turn that runs the method also commits the timer's next state (its next tick,
or its removal), in the same atomic write as the effect and the idempotency record.

* A repeating timer whose ticks were missed while nothing ran fires **once**, and the method
  learns how many further ticks that firing stands for: ``missed`` (passed as the ``missed``
  keyword when the method accepts one, and readable as ``workflow.timers.firing().missed``),
  the number of ticks due by now besides the one being fired: for a period,
  ``floor((now - due) / every)``; for cron, the expression's instants in ``(due, now]``. Missed
  ticks count against a bounded repetition (``R5/...``).
  A timer whose first due tick was ten and a half periods ago fires once with ``missed == 10``;
  ten periods of downtime give 9 or 10, depending on where in a period it stopped. The next tick
  is then the first one after now.
* A firing whose method raises is retried with exponential backoff (1 s, 2 s, 4 s...) up to
  ``MAX_ATTEMPTS`` times, then recorded as failed on the actor (``GET .../timers`` shows it)
  and dropped (one-shot) or moved to its next tick (periodic).
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import math
import time
import uuid
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from actorflow import _codec, _tracing
from actorflow._ids import check_id
from actorflow.actor._keys import TIMER_INDEX, tick_key
from actorflow.actor._schedule import Schedule, instant, zone
from actorflow.errors import InvalidTimerError
from actorflow.storage import Batch, Storage

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
    # How it repeats beyond a plain period (cron, a bounded or ISO-8601 repetition), as
    # Schedule.to_json(); ``remaining``: ticks left, this one included (None: no end).
    schedule: dict[str, Any] | None = None
    remaining: int | None = None
    # The trace context that set the timer (W3C headers, see actorflow._tracing): its firings
    # link to it. None without tracing.
    trace: dict[str, str] | None = None

    def tick_key(self) -> str:
        """The idempotency key of the tick being fired: ``timer:{name}:{setting}:{due}``."""
        return tick_key(self.name, self.setting, self.due)

    def encode(self) -> bytes:
        data = asdict(self)
        for key in ("schedule", "remaining", "trace"):  # absent unless used: a plain timer stays readable
            if data[key] is None:  # by a version from before schedules (during an upgrade)
                del data[key]
        return _codec.json_dumps(data)

    @classmethod
    def decode(cls, raw: bytes) -> Timer:
        return cls(**_codec.json_loads(raw))

    def public(self) -> dict[str, Any]:
        repeats = self.repeats()
        return {
            "name": self.name,
            "method": self.method,
            "args": self.args,
            "kwargs": self.kwargs,
            "due": self.due,
            "due_at": self.due_at(),
            "every": self.every,
            "schedule": repeats.describe() if repeats is not None else None,
            "remaining": self.remaining,
            "attempts": self.attempts,
        }

    def repeats(self) -> Schedule | None:
        """How the timer repeats (None: it fires once)."""
        if self.schedule is not None:
            return Schedule.from_json(self.schedule)
        if self.every:
            return Schedule(text=f"{self.every:g}", period=self.every)
        return None

    def due_at(self) -> str:
        """The tick being fired as ISO-8601 text, in the schedule's zone (else UTC)."""
        repeats = self.repeats()
        tz = zone(repeats.tz if repeats is not None else None)
        return datetime.datetime.fromtimestamp(self.due, tz).isoformat(timespec="seconds")

    def missed_at(self, now: float, repeats: Schedule | None = None) -> int:
        """Ticks due by ``now`` besides the one being fired (see the module docstring);
        ``repeats``: :meth:`repeats`, when the caller has it already."""
        repeats = repeats or self.repeats()
        if repeats is None:
            return 0
        missed = repeats.ticks_in(self.due, now, anchor=self.due)
        if self.remaining is not None:
            missed = min(missed, self.remaining - 1)
        return max(0, missed)

    def next_state(self, now: float) -> tuple[float, int | None] | None:
        """After the tick being fired, at ``now``: the next tick (the first strictly after
        ``now``) and the repetitions left then; None when the timer is done (it fires once, or
        its repetitions, the missed ticks included, are used up)."""
        repeats = self.repeats()
        if repeats is None:
            return None
        left = None if self.remaining is None else self.remaining - 1 - self.missed_at(now, repeats)
        if left is not None and left <= 0:
            return None
        nxt = repeats.next_after(now, anchor=self.due)
        return None if nxt is None else (nxt, left)


def _seconds(label: str, value: Any) -> float | None:
    """A timer field as a finite float, or ``InvalidTimerError`` (``None`` stays ``None``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidTimerError(f"timer {label!r} must be a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except OverflowError:
        raise InvalidTimerError(f"timer {label!r} is out of range") from None
    if not math.isfinite(seconds):
        raise InvalidTimerError(f"timer {label!r} must be finite")
    return seconds


def make_timer(
    ac: Any,
    name: str,
    *,
    method: str,
    after: float | None = None,
    at: float | str | None = None,
    every: float | str | None = None,
    cron: str | None = None,
    tz: str | None = None,
    args: Any = (),
    kwargs: dict[str, Any] | None = None,
    now: float | None = None,
) -> Timer:
    """Validate a timer request (raises :class:`~actorflow.errors.InvalidTimerError`,
    ``ActorMethodNotFoundError`` or ``ActorArgumentsError``) and build it.

    ``after`` is seconds from now; ``at`` an epoch time or an ISO-8601 date and time (one
    without an offset is read in ``tz``). ``every`` (seconds, an ISO-8601 duration or a
    repeating interval, a period of at least ``MIN_PERIOD``) or ``cron`` (with ``tz``, default
    UTC) makes it repeat; it is first due at ``after``/``at``, else at the repeating
    interval's start, else one period from ``now`` or the cron expression's next instant
    (``now``: the clock's reading; default: the system's)."""
    check_id("timer name", name)
    if "/" in name:
        raise InvalidTimerError("timer names may not contain '/'")
    if not isinstance(method, str):
        raise InvalidTimerError(
            f"timer 'method' must be a method name (a string), got {type(method).__name__}"
        )
    now = time.time() if now is None else now
    if tz is not None:
        zone(tz)
        if cron is None and not isinstance(at, str):
            raise InvalidTimerError(
                "timer 'tz' is the zone of 'cron', or of an 'at' date and time without offset"
            )
    after = _seconds("after", after)
    at = instant(at, tz) if isinstance(at, str) else _seconds("at", at)
    if after is not None and at is not None:
        raise InvalidTimerError("give a timer either 'after' or 'at', not both")
    if every is not None and cron is not None:
        raise InvalidTimerError("give a repeating timer either 'every' or 'cron', not both")
    if after is not None and not 0 <= after <= MAX_SECONDS:
        raise InvalidTimerError(f"timer 'after' must be between 0 and {MAX_SECONDS:.0f} s, got {after}")
    if at is not None and not 0 <= at <= now + MAX_SECONDS:
        raise InvalidTimerError(
            f"timer 'at' must be an epoch time between 0 and {MAX_SECONDS:.0f} s from now"
        )
    repeats = None
    if every is not None:
        repeats = Schedule.every(every, MIN_PERIOD, MAX_SECONDS)
    elif cron is not None:
        repeats = Schedule.from_cron(cron, tz, now)
    if not isinstance(args, (list, tuple)):
        raise InvalidTimerError(f"timer 'args' must be a list, got {type(args).__name__}")
    if kwargs is not None and not (isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs)):
        raise InvalidTimerError(
            f"timer 'kwargs' must be an object of named arguments, not {type(kwargs).__name__}"
        )
    due = _first_due(after, at, repeats, now)
    kwargs = dict(kwargs or {})
    ac.method(method).check_args(ac.type_name, tuple(args), kwargs)
    _codec.check_json([list(args), kwargs], what="timer arguments")
    # A plain period keeps the stored form timers always had; anything more is a schedule.
    plain = repeats is not None and repeats.cron is None and repeats.count is None and repeats.start is None
    return Timer(
        name,
        method,
        list(args),
        kwargs,
        due,
        repeats.period if repeats is not None else None,
        next_try=due,
        created_at=now,
        setting=uuid.uuid4().hex[:16],
        schedule=None if repeats is None or plain else repeats.to_json(),
        remaining=repeats.count if repeats is not None else None,
        trace=_tracing.carrier(),
    )


def _first_due(after: float | None, at: float | None, repeats: Schedule | None, now: float) -> float:
    if after is not None:
        return now + after
    if at is not None:
        return at
    if repeats is None:
        raise InvalidTimerError(
            "a timer needs 'after' (seconds) or 'at' (a time), or a repetition 'every' or 'cron'"
        )
    if repeats.start is not None:  # R5/start/PT1M: its first tick not yet past
        if repeats.start >= now:
            return repeats.start
        first = repeats.next_after(now, anchor=repeats.start)
    else:
        first = repeats.next_after(now)
    if first is None:
        raise InvalidTimerError(f"the schedule {repeats.text!r} has no tick after now")
    return first


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


class TimerBell:
    """Rung by this process's commits that set or move a timer, so that a scheduler sleeping
    past the new due time (see ``ActorConfig.idle_tick_interval``) looks again. Rung and
    awaited on the runtime's loop only."""

    def __init__(self) -> None:
        self._rung = asyncio.Event()

    def ring(self) -> None:
        self._rung.set()

    def take(self) -> bool:
        """Whether it was rung since the last take (a scheduler takes before it reads the
        index, so that a ring after that wakes its next sleep)."""
        rung = self._rung.is_set()
        self._rung.clear()
        return rung

    async def wait(self, seconds: float) -> None:
        """Return when rung (at once if rung since the last :meth:`take`) or after ``seconds``."""
        if self._rung.is_set() or seconds <= 0:
            return
        try:
            await asyncio.wait_for(self._rung.wait(), seconds)
        except TimeoutError:
            pass


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
        state = self.timer.next_state(now)
        if state is not None:
            nxt, left = state
            after = replace(
                self.timer, due=nxt, next_try=nxt, attempts=0, claim=None, claim_until=0.0, remaining=left
            )
            batch.put(self.key, after.encode()).index_add(TIMER_INDEX, self.member, nxt)
        else:  # fired once, or its repetitions are used up
            batch.delete(self.key).index_remove(TIMER_INDEX, self.member)


#: The most due timers :func:`due_count` counts (a gauge, not an inventory).
DUE_COUNT_CAP = 10_000


async def due_count(storage: Storage, now: float) -> int:
    """How many timers are due at ``now`` and not claimed by a scheduler (up to
    :data:`DUE_COUNT_CAP`): one bounded read of the timer index."""
    return len(await storage.index_range(TIMER_INDEX, max_score=now, limit=DUE_COUNT_CAP))
