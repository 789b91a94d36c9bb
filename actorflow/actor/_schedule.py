"""When a repeating timer fires: a fixed period, an ISO-8601 repeating interval, or a cron
expression in a time zone; and ISO-8601 instants for ``at=``.

Parsing is left to libraries: ISO 8601 to ``aniso8601``, cron to ``cronsim`` (which follows
Debian's cron, daylight-saving time included: a tick that falls in the hour skipped in spring
fires right after the change; a tick in the hour repeated in autumn fires once, unless the
expression's hour field is a wildcard or a range, which fire in both), time zones to
``zoneinfo`` (IANA names; ``tzdata`` supplies them where the system has none).

Forms of ``every=``:

* a number of seconds (``60``), as before, or an ISO-8601 duration (``"PT1M30S"``, ``"P1D"``:
  a day is 86,400 s here; years and months have no fixed length and are refused: use cron);
* a repeating interval ``"R5/PT1M"`` (5 ticks in all, then the timer ends; ``"R/PT1M"``
  repeats without end) or ``"R5/2026-12-01T09:00:00Z/PT1M"`` (starting then).

``cron="0 9 * * MON-FRI"`` with ``tz="Europe/Paris"`` (default UTC) repeats at the
expression's instants in that zone. A schedule is stored as JSON with its timer
(:meth:`Schedule.to_json`), so what a timer does next never depends on the code that set it.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from actorflow.errors import InvalidTimerError

#: How many ticks of a cron schedule are counted, at most, when working out ``missed``.
MAX_COUNTED = 100_000
_UTC = dt.UTC
_REPEAT = re.compile(r"R(\d*)/(.+)\Z")
_CALENDAR = re.compile(r"P[^T]*[YM]")  # years or months (not minutes, which follow the T)


def zone(name: str | None) -> dt.tzinfo:
    """The IANA time zone ``name`` (None: UTC); :class:`InvalidTimerError` for an unknown one."""
    if name is None:
        return _UTC
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(name, str) or not name or name.startswith("/") or ".." in name:
        raise InvalidTimerError(
            f"timer 'tz' must be an IANA time zone name like 'Europe/Paris', got {name!r}"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidTimerError(
            f"unknown time zone {name!r} (an IANA name like 'America/New_York')"
        ) from None


def duration_seconds(text: str, label: str = "every") -> float:
    """An ISO-8601 duration (``PT5M``, ``P1DT2H``, ``PT0.5S``) in seconds."""
    import aniso8601

    if _CALENDAR.match(text):
        raise InvalidTimerError(
            f"timer {label!r}: {text!r} counts months or years, which have no fixed length; "
            "use cron= for calendar schedules"
        )
    try:
        delta = aniso8601.parse_duration(text)
    except (ValueError, TypeError, ArithmeticError) as exc:  # aniso8601's errors are ValueErrors
        raise InvalidTimerError(f"timer {label!r}: {text!r} is not an ISO-8601 duration ({exc})") from None
    if not isinstance(delta, dt.timedelta):
        raise InvalidTimerError(f"timer {label!r}: {text!r} is not a fixed-length duration")
    return delta.total_seconds()


def instant(text: str, tz: str | None = None, label: str = "at") -> float:
    """An ISO-8601 date and time as an epoch time. One without an offset is read in ``tz``,
    and without ``tz`` refused (it would mean different instants on different machines)."""
    import aniso8601

    try:
        when = aniso8601.parse_datetime(text)
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise InvalidTimerError(
            f"timer {label!r}: {text!r} is not an ISO-8601 date and time ({exc})"
        ) from None
    if when.tzinfo is None:
        if tz is None:
            raise InvalidTimerError(
                f"timer {label!r}: {text!r} has no UTC offset; add one (...Z, ...+01:00) or give tz="
            )
        when = when.replace(tzinfo=zone(tz))
    return when.timestamp()


@dataclass(frozen=True)
class Schedule:
    """How a repeating timer repeats: every ``period`` seconds, or at the instants of ``cron``
    in zone ``tz``; ``count`` ticks in all (None: without end). ``text`` is what was given."""

    text: str
    period: float | None = None
    cron: str | None = None
    tz: str | None = None
    count: int | None = None
    start: float | None = None  # the first tick, when the schedule names one

    def __post_init__(self) -> None:
        if (self.period is None) == (self.cron is None):
            raise InvalidTimerError("a schedule repeats either by a period or by a cron expression")

    # ------------------------------------------------------------------ building
    @classmethod
    def every(cls, value: Any, minimum: float, maximum: float) -> Schedule:
        """``every=``: seconds, an ISO-8601 duration, or a repeating interval."""
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise InvalidTimerError(
                f"timer 'every' must be seconds, an ISO-8601 duration (PT5M) or a repeating "
                f"interval (R5/PT1M), got {value!r}"
            )
        count: int | None = None
        start: float | None = None
        if isinstance(value, str):
            text = value.strip()
            repeat = _REPEAT.match(text)
            if repeat:
                count = int(repeat.group(1)) if repeat.group(1) else None
                rest = repeat.group(2)
                if "/" in rest:  # R5/start/duration
                    first, _, rest = rest.partition("/")
                    start = instant(first, label="every")
                period = duration_seconds(rest)
            else:
                period = duration_seconds(text)
            if count is not None and count < 1:
                raise InvalidTimerError(f"timer 'every': {text!r} repeats no times")
        else:
            try:
                text, period = repr(value), float(value)
            except OverflowError:
                raise InvalidTimerError("timer period 'every' is out of range") from None
        if not math.isfinite(period) or not minimum <= period <= maximum:
            raise InvalidTimerError(
                f"timer period 'every' must be between {minimum:g} and {maximum:.0f} s, got {period:g}"
            )
        return cls(
            text=str(value) if isinstance(value, str) else text, period=period, count=count, start=start
        )

    @classmethod
    def from_cron(cls, expression: Any, tz: str | None, now: float) -> Schedule:
        """``cron=`` (five fields, as Debian's cron reads them) in ``tz``."""
        from cronsim import CronSim, CronSimError

        if not isinstance(expression, str) or not expression.strip():
            raise InvalidTimerError(
                f"timer 'cron' must be a cron expression like '0 9 * * MON-FRI', got {expression!r}"
            )
        expression = " ".join(expression.split())
        zone(tz)
        try:
            CronSim(expression, dt.datetime.fromtimestamp(now, _UTC))
        except CronSimError as exc:
            raise InvalidTimerError(
                f"timer 'cron': {expression!r} is not a cron expression ({exc})"
            ) from None
        schedule = cls(text=expression, cron=expression, tz=tz)
        if schedule.next_after(now) is None:
            raise InvalidTimerError(f"timer 'cron': {expression!r} never fires")
        return schedule

    # ------------------------------------------------------------------ reading
    def next_after(self, t: float, anchor: float | None = None) -> float | None:
        """The first tick strictly after ``t`` (None: never). A period counts from
        ``anchor``, a tick it already had (without one, from ``t``)."""
        if self.period is not None:
            if anchor is None:
                return t + self.period
            return anchor + (max(0, math.floor((t - anchor) / self.period)) + 1) * self.period
        return next(self._cron_ticks(t), None)

    def _cron_ticks(self, t: float) -> Iterator[float]:
        """The cron expression's instants strictly after ``t``, in order, as epoch times."""
        from cronsim import CronSim

        start = dt.datetime.fromtimestamp(t, _UTC).astimezone(zone(self.tz))
        return (tick.timestamp() for tick in CronSim(self.cron or "", start))

    def ticks_in(self, after: float, until: float, anchor: float) -> int:
        """How many ticks fall in ``(after, until]`` (a period's ticks count from ``anchor``;
        cron ticks are counted up to :data:`MAX_COUNTED`)."""
        if until <= after:
            return 0
        if self.period is not None:
            return max(0, math.floor((until - anchor) / self.period)) - max(
                0, math.floor((after - anchor) / self.period)
            )
        n = 0
        for tick in self._cron_ticks(after):
            if tick > until or n >= MAX_COUNTED:
                break
            n += 1
        return n

    def describe(self) -> dict[str, Any]:
        """What a timer listing shows of it."""
        out: dict[str, Any] = {"cron": self.cron, "tz": self.tz} if self.cron else {"every": self.text}
        if self.count is not None:
            out["count"] = self.count
        return out

    # ------------------------------------------------------------------ storing
    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Schedule:
        return cls(**data)
