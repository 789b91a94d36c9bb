"""Calendar and repeating timer schedules: ISO-8601 durations and repeating intervals, cron
expressions in a named time zone, ISO-8601 instants; driven by a manual clock across
daylight-saving changes, through missed periods, and over HTTP with bad fields refused.

The runtime here is never started: each test moves the clock and runs the scheduler's pass
itself, so nothing waits for real time."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from actorflow import workflow
from actorflow._clock import ManualClock
from actorflow.actor import ActorConfig, ActorRuntime, lookup
from actorflow.actor._schedule import Schedule, duration_seconds, instant
from actorflow.engine import WorkflowRuntime
from actorflow.errors import InvalidTimerError
from actorflow.serve.api import create_api
from actorflow.serve.backend import LocalBackend

WAIT = 5.0
BERLIN = ZoneInfo("Europe/Berlin")


@workflow.virtual_actor(name="ScheduleBell")
class ScheduleBell:
    def __init__(self) -> None:
        self.rings: list[list[Any]] = []

    def arm(self, name: str, spec: dict[str, Any]) -> None:
        workflow.timers.set(name, method="ring", args=[name], **spec)

    def ring(self, name: str, missed: int = 0) -> None:
        firing = workflow.timers.firing()
        assert firing is not None
        self.rings.append([name, firing.due, missed])


BELL = lookup("ScheduleBell")


@dataclass
class Env:
    rt: ActorRuntime
    clock: ManualClock

    def arm(self, actor: str, name: str, **spec: Any) -> None:
        self.rt.submit(BELL, actor, "arm", (name, spec), {}, None).result(timeout=WAIT)

    def fire(self) -> dict[str, int]:
        return dict(self.rt.blocking(self.rt.scheduler.fire_due(), WAIT))

    def rings(self, actor: str, name: str | None = None) -> list[list[Any]]:
        rings = self.rt.state(BELL, actor).state()["rings"]
        return [r for r in rings if name is None or r[0] == name]

    def timers(self, actor: str) -> dict[str, Any]:
        got = self.rt.blocking(self.rt.scheduler.timers_of(BELL.type_name, actor), WAIT)
        return {name: t.public() for name, t in got.items()}

    def run(self, seconds: float, step: float) -> None:
        """Move the clock ``seconds`` on in steps of ``step``, running a scheduler pass each."""
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            self.fire()


def at(*fields: int, tz: dt.tzinfo = BERLIN) -> float:
    return dt.datetime(*fields, tzinfo=tz).timestamp()  # type: ignore[misc]


def local(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, BERLIN).isoformat()


@pytest.fixture
def make_env() -> Iterator[Any]:
    made: list[tuple[WorkflowRuntime, ActorRuntime]] = []

    def make(start: float) -> Env:
        wf = WorkflowRuntime(f"memory://schedules-{uuid.uuid4().hex}")
        clock = ManualClock(start)
        rt = ActorRuntime(wf, ActorConfig(clock=clock))  # not started: passes run by hand
        made.append((wf, rt))
        return Env(rt, clock)

    yield make
    for wf, rt in made:
        rt.close()
        wf.close()


# ------------------------------------------------------------------------ parsing
def test_every_takes_seconds_iso_durations_and_repeating_intervals() -> None:
    assert Schedule.every(90, 1, 1e9).period == 90
    assert Schedule.every("PT1M30S", 1, 1e9).period == 90
    assert Schedule.every("P1DT2H", 1, 1e9).period == 26 * 3600
    bounded = Schedule.every("R5/PT1M", 1, 1e9)
    assert (bounded.period, bounded.count, bounded.start) == (60, 5, None)
    assert Schedule.every("R/PT10M", 1, 1e9).count is None  # without end
    started = Schedule.every("R3/2026-12-01T09:00:00Z/PT1H", 1, 1e9)
    assert (started.count, started.start) == (3, at(2026, 12, 1, 9, 0, tz=dt.UTC))
    assert duration_seconds("PT0.5S") == 0.5


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("P1M", "months or years"),
        ("P1Y", "months or years"),
        ("PT", "not an ISO-8601 duration"),
        ("banana", "not an ISO-8601 duration"),
        ("R0/PT1M", "repeats no times"),
        ("PT0.5S", "between 1 and"),
        (True, "must be seconds"),
        ([60], "must be seconds"),
    ],
)
def test_bad_every_is_refused_with_what_to_write(value: Any, message: str) -> None:
    with pytest.raises(InvalidTimerError, match=message):
        Schedule.every(value, 1, 1e9)


def test_at_takes_iso_instants_with_an_offset_or_a_zone() -> None:
    assert instant("2026-12-01T09:00:00+01:00") == at(2026, 12, 1, 9, 0)
    assert instant("2026-12-01T08:00:00Z") == at(2026, 12, 1, 9, 0)
    assert instant("2026-07-01T09:00:00", "Europe/Berlin") == at(2026, 7, 1, 9, 0)  # summer time
    with pytest.raises(InvalidTimerError, match="no UTC offset"):
        instant("2026-12-01T09:00:00")
    with pytest.raises(InvalidTimerError, match="not an ISO-8601 date and time"):
        instant("next tuesday")


def test_cron_is_checked_when_set() -> None:
    now = at(2026, 12, 1, 12, 0)
    assert Schedule.from_cron("0  9 * *   MON-FRI", "Europe/Paris", now).cron == "0 9 * * MON-FRI"
    for bad in ("61 * * * *", "* * *", "", "0 9 30 2 *"):
        with pytest.raises(InvalidTimerError):
            Schedule.from_cron(bad, None, now)
    with pytest.raises(InvalidTimerError, match="unknown time zone"):
        Schedule.from_cron("* * * * *", "Mars/Olympus_Mons", now)


# ------------------------------------------------------------------- daylight saving
def test_cron_and_an_iso_period_across_the_spring_change(make_env: Any) -> None:
    """Berlin, 29 March 2026: 02:00 becomes 03:00. A per-minute cron keeps firing every real
    minute (01:59, then 03:00); PT1M is 60 s whatever the wall clock says."""
    env = make_env(at(2026, 3, 29, 1, 56, 30))
    env.arm("b", "cron", cron="*/1 * * * *", tz="Europe/Berlin")
    env.arm("b", "every", every="PT1M")
    env.run(6 * 60, 30)
    cron = [local(due) for _, due, _ in env.rings("b", "cron")]
    assert cron == [
        "2026-03-29T01:57:00+01:00",
        "2026-03-29T01:58:00+01:00",
        "2026-03-29T01:59:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T03:01:00+02:00",
        "2026-03-29T03:02:00+02:00",
    ]
    every = [due for _, due, _ in env.rings("b", "every")]
    first = at(2026, 3, 29, 1, 57, 30)
    assert every == [first + 60 * i for i in range(6)]
    assert all(missed == 0 for _, _, missed in env.rings("b"))


def test_a_daily_cron_across_both_changes(make_env: Any) -> None:
    """As Debian's cron does (cronsim): 02:30 does not exist on 29 March, so it fires right
    after the change, at 03:00; it exists twice on 25 October, and fires once."""
    env = make_env(at(2026, 3, 28, 12, 0))
    env.arm("d", "daily", cron="30 2 * * *", tz="Europe/Berlin")
    env.run(3 * 24 * 3600, 1800)
    assert [local(due) for _, due, _ in env.rings("d")] == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    env = make_env(at(2026, 10, 24, 12, 0))
    env.arm("d", "daily", cron="30 2 * * *", tz="Europe/Berlin")
    env.run(3 * 24 * 3600, 1800)
    assert [local(due) for _, due, _ in env.rings("d")] == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]


# --------------------------------------------------------------------- missed ticks
def test_a_cron_timer_down_for_five_periods_fires_once_with_missed(make_env: Any) -> None:
    env = make_env(at(2026, 12, 1, 10, 0, 10))
    env.arm("m", "cron", cron="*/1 * * * *", tz="Europe/Berlin")
    first = at(2026, 12, 1, 10, 1)
    assert env.timers("m")["cron"]["due"] == first
    env.clock.advance(6 * 60 + 10)  # 10:06:20: nothing ran since 10:00:10
    assert env.fire()["fired"] == 1
    assert env.rings("m") == [["cron", first, 5]]  # 10:01 fired; 10:02 to 10:06 were missed
    timer = env.timers("m")["cron"]
    assert timer["due"] == at(2026, 12, 1, 10, 7)  # the first tick after now
    assert timer["schedule"] == {"cron": "*/1 * * * *", "tz": "Europe/Berlin"}
    assert timer["due_at"] == "2026-12-01T10:07:00+01:00"
    assert env.fire()["fired"] == 0  # nothing more is due


def test_a_bounded_repetition_ends_and_missed_ticks_count_against_it(make_env: Any) -> None:
    env = make_env(at(2026, 12, 1, 10, 0))
    env.arm("r", "three", every="R3/PT1M")
    env.run(10 * 60, 60)
    assert [due for _, due, _ in env.rings("r")] == [at(2026, 12, 1, 10, m) for m in (1, 2, 3)]
    assert "three" not in env.timers("r")
    env.arm("r", "five", every="R5/PT1M")
    assert env.timers("r")["five"]["remaining"] == 5
    env.clock.advance(3 * 60 + 30)  # ticks at 10:11, 10:12, 10:13 are due: one firing
    env.fire()
    assert env.rings("r", "five")[-1][2] == 2
    assert env.timers("r")["five"]["remaining"] == 2
    env.run(5 * 60, 60)
    assert len(env.rings("r", "five")) == 3 and "five" not in env.timers("r")


def test_at_an_iso_time_and_a_repeating_interval_with_a_start(make_env: Any) -> None:
    env = make_env(at(2026, 12, 1, 8, 0))
    env.arm("s", "once", at="2026-12-01T09:00:00", tz="Europe/Berlin")
    env.arm("s", "hourly", every="R2/2026-12-01T08:30:00+01:00/PT1H")
    assert env.timers("s")["once"]["due"] == at(2026, 12, 1, 9, 0)
    env.run(4 * 3600, 600)
    assert [(n, local(due)) for n, due, _ in env.rings("s")] == [
        ("hourly", "2026-12-01T08:30:00+01:00"),
        ("once", "2026-12-01T09:00:00+01:00"),
        ("hourly", "2026-12-01T09:30:00+01:00"),
    ]
    assert env.timers("s") == {}


# --------------------------------------------------------------------------- HTTP
@pytest.fixture
def client(tmp_path: Any) -> Iterator[TestClient]:
    rt = WorkflowRuntime(f"sqlite://{tmp_path}/schedules.db")
    try:
        yield TestClient(create_api(LocalBackend(rt)))
    finally:
        rt.close()


def test_http_timers_take_the_same_fields_and_list_the_schedule(client: TestClient) -> None:
    client.post("/v1/actors/ScheduleBell/h")
    url = "/v1/actors/ScheduleBell/h/timers"
    spec = {"cron": "0 9 * * MON-FRI", "tz": "Europe/Paris", "method": "ring", "args": ["weekday"]}
    r = client.put(f"{url}/weekday", json=spec)
    assert r.status_code == 200, r.text
    timer = client.get(f"{url}/weekday").json()
    assert timer["schedule"] == {"cron": "0 9 * * MON-FRI", "tz": "Europe/Paris"}
    due = dt.datetime.fromisoformat(timer["due_at"])
    assert (due.hour, due.minute, due.weekday() < 5) == (9, 0, True)
    assert due.timestamp() == timer["due"]
    r = client.put(f"{url}/short", json={"every": "R2/PT5M", "method": "ring", "args": ["short"]})
    assert r.status_code == 200 and r.json()["schedule"] == {"every": "R2/PT5M", "count": 2}


@pytest.mark.parametrize(
    "spec",
    [
        {"cron": "61 * * * *"},
        {"cron": "* * * * *", "tz": "Mars/Olympus_Mons"},
        {"cron": "* * * * *", "every": 60},
        {"every": "P1M"},
        {"every": "R0/PT1M"},
        {"every": "PT0.1S"},
        {"at": "2026-12-01T09:00:00"},
        {"at": "soon"},
        {"after": 10, "tz": "Europe/Paris"},
    ],
    ids=lambda spec: ",".join(f"{k}={v}" for k, v in spec.items()),
)
def test_http_refuses_a_bad_schedule_with_422_and_changes_nothing(
    client: TestClient, spec: dict[str, Any]
) -> None:
    client.post("/v1/actors/ScheduleBell/bad")
    before = client.get("/v1/actors/ScheduleBell/bad").json()["version"]
    r = client.put("/v1/actors/ScheduleBell/bad/timers/t", json={**spec, "method": "ring", "args": ["t"]})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_timer" and r.json()["message"]
    assert client.get("/v1/actors/ScheduleBell/bad/timers").json()["timers"] == {}
    assert client.get("/v1/actors/ScheduleBell/bad").json()["version"] == before
