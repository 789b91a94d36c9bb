"""actorflow.testing: actors, timers and workflows in process on a clock the test moves.

Each promise is checked against time that would take minutes to days for real, on every
backend where storage matters: timers fire at their own instants, in order, never early; a
cancelled timer or one set by a raising turn never fires; missed periods coalesce; a method
that re-arms or cancels its own timer wins; failing ticks are retried on the clock's backoff;
``workflow.sleep`` ends when the clock gets there, in a workflow of its own or one an actor
launched; idempotency records age with the clock; the HTTP client sees the same runtime.
These replace tests that waited for real time to pass (see tests/test_timers_events.py for
the ones that need real time: a full stop of everything, scheduler lateness)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest

from actorflow import testing, workflow
from actorflow.actor import ActorConfig
from actorflow.actor._idempotency import TRIM_EVERY
from actorflow.errors import IdempotencyWindowFullError

HOUR, DAY = 3600.0, 86400.0


@workflow.virtual_actor(name="ClockAlarm")
class ClockAlarm:
    def __init__(self) -> None:
        self.rings: list[list[Any]] = []
        self.fail_left = 0

    def arm(self, name: str, spec: dict[str, Any]) -> None:
        workflow.timers.set(name, method="ring", args=[name], **spec)

    def arm_then_raise(self) -> None:
        workflow.timers.set("doomed", after=60, method="ring", args=["doomed"])
        raise RuntimeError("the timer goes with the turn")

    def disarm(self, name: str) -> None:
        workflow.timers.cancel(name)

    def ring(self, name: str, missed: int = 0) -> int:
        firing = workflow.timers.firing()
        assert firing is not None and firing.name == name
        self.rings.append([name, firing.due, missed, firing.attempt])
        return len(self.rings)

    def arm_flaky(self, fails: int) -> None:
        self.fail_left = fails
        workflow.timers.set("flaky", after=10, method="flaky_ring")

    def flaky_ring(self) -> None:
        firing = workflow.timers.firing()
        assert firing is not None
        if firing.attempt <= self.fail_left:
            raise ValueError(f"attempt {firing.attempt} fails")
        self.rings.append(["flaky", firing.due, 0, firing.attempt])

    def start_chain(self, links: int) -> None:
        workflow.timers.set("chain", after=HOUR, method="chain_link", args=[links])

    def chain_link(self, left: int) -> None:
        self.rings.append([f"chain-{left}", workflow.timers.firing().due, 0, 1])  # type: ignore[union-attr]
        if left > 1:
            workflow.timers.set("chain", after=HOUR, method="chain_link", args=[left - 1])

    def arm_ring_twice(self, name: str) -> None:
        workflow.timers.set(name, every=DAY, after=60, method="ring_twice", args=[name])

    def ring_twice(self, name: str) -> None:
        self.rings.append([f"{name}-ring", workflow.timers.firing().due, 0, 1])  # type: ignore[union-attr]
        if sum(r[0] == f"{name}-ring" for r in self.rings) >= 2:
            workflow.timers.cancel(name)

    def nap_then_count(self, seconds: float) -> Any:
        """Returns a workflow: a durable sleep, then a step. The call's result is its output."""
        return count_after.step(workflow.sleep(seconds), len(self.rings))


@workflow.step
def count_after(_slept: None, n: int) -> int:
    return n + 1


def names(env: testing.Environment, actor: str) -> list[str]:
    return [r[0] for r in env.state("ClockAlarm", actor)["rings"]]


@pytest.fixture
def env(storage_url: str) -> Any:
    with testing.Environment(storage=storage_url, start=dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)) as env:
        yield env


def test_a_timer_fires_at_its_instant_never_early_and_once(env: testing.Environment) -> None:
    started = env.now
    env.call("ClockAlarm", "once", "arm", "t1", {"after": 6 * HOUR})
    env.advance(hours=6, seconds=-1)
    assert names(env, "once") == []  # a second early: not yet
    env.advance(seconds=1)
    [[_, due, missed, attempt]] = env.state("ClockAlarm", "once")["rings"]
    assert (due, missed, attempt) == (started + 6 * HOUR, 0, 1)
    env.advance(days=3)
    assert names(env, "once") == ["t1"] and env.timers("ClockAlarm", "once") == {}


def test_a_cancelled_timer_and_one_set_by_a_raising_turn_never_fire(env: testing.Environment) -> None:
    env.call("ClockAlarm", "cancel", "arm", "t2", {"after": HOUR})
    env.call("ClockAlarm", "cancel", "disarm", "t2")
    with pytest.raises(RuntimeError, match="goes with the turn"):
        env.call("ClockAlarm", "cancel", "arm_then_raise")
    env.advance(days=2)
    assert names(env, "cancel") == [] and env.timers("ClockAlarm", "cancel") == {}


def test_timers_fire_in_order_of_their_instants(env: testing.Environment) -> None:
    for name, after in (("late", 3 * HOUR), ("early", HOUR), ("middle", 2 * HOUR)):
        env.call("ClockAlarm", "order", "arm", name, {"after": after})
    env.advance(hours=4)
    assert names(env, "order") == ["early", "middle", "late"]


def test_missed_periods_coalesce_and_the_next_tick_is_after_now(env: testing.Environment) -> None:
    # First due ten and a half days ago: as if everything had been down for ten periods.
    env.call("ClockAlarm", "periodic", "arm", "p", {"every": DAY, "at": env.now - 10.5 * DAY})
    env.advance()
    assert [r[2] for r in env.state("ClockAlarm", "periodic")["rings"]] == [10]
    env.advance(days=1)
    rings = env.state("ClockAlarm", "periodic")["rings"]
    assert [r[2] for r in rings] == [10, 0] and rings[1][1] == rings[0][1] + 11 * DAY


def test_a_method_that_rearms_or_cancels_its_own_timer_wins(env: testing.Environment) -> None:
    env.call("ClockAlarm", "self", "start_chain", 3)
    env.call("ClockAlarm", "self", "arm_ring_twice", "twice")
    env.advance(days=5)
    assert names(env, "self") == ["twice-ring", "chain-3", "chain-2", "chain-1", "twice-ring"]
    assert env.timers("ClockAlarm", "self") == {}


def test_a_failing_tick_is_retried_on_the_clocks_backoff(env: testing.Environment) -> None:
    env.call("ClockAlarm", "flaky", "arm_flaky", 3)
    set_at = env.now
    env.advance(seconds=10 + 1 + 2 + 3.9)  # tries at +10, +11, +13: all three fail
    assert names(env, "flaky") == []
    env.advance(seconds=0.1)  # the fourth try, 4 s after the third
    [[_, due, _, attempt]] = env.state("ClockAlarm", "flaky")["rings"]
    assert (due, attempt) == (set_at + 10, 4)
    # One that keeps failing: five attempts (1, 2, 4, 8 s apart), then a failure record, and
    # the one-shot timer is gone.
    env.call("ClockAlarm", "hopeless", "arm_flaky", 100)
    env.advance(seconds=10 + 1 + 2 + 4 + 8)
    failures = env._blocking(env.actors.scheduler.timer_failures("ClockAlarm", "hopeless"))
    assert failures["flaky"]["attempts"] == 5 and "attempt 5 fails" in failures["flaky"]["error"]
    assert env.timers("ClockAlarm", "hopeless") == {} and names(env, "hopeless") == []


def test_workflow_sleep_ends_when_the_clock_gets_there(env: testing.Environment) -> None:
    # A sleep in a workflow an actor launched: the call's result is the workflow's output.
    handle = env.actors.submit(testing._type("ClockAlarm"), "nap", "nap_then_count", (2 * HOUR,), {}, None)
    env.settle()
    assert not handle.done()
    env.advance(hours=2, seconds=-1)
    assert not handle.done()
    env.advance(seconds=1)
    assert handle.result(timeout=10) == 1
    # A workflow of its own, run with the module functions the environment now stands behind.
    running = count_after.step(workflow.sleep(DAY), 41).run_async(workflow_id="day-long")
    env.settle()
    assert workflow.get_status("day-long").value == "RUNNING"
    env.advance(days=1)
    assert running.result(timeout=10) == 42
    steps = env.workflow("day-long")["steps"]
    assert [(s["name"], s["status"]) for s in steps][-2:] == [
        ("sleep", "SUCCESSFUL"),
        ("count_after", "SUCCESSFUL"),
    ]
    by_name = {s["name"]: s for s in steps}
    assert by_name["count_after"]["deps"] == [by_name["sleep"]["step_id"]]  # the graph, as over HTTP
    assert env.http().get("/v1/workflows/day-long").json()["steps"] == steps


def test_idempotency_records_age_with_the_clock(storage_url: str) -> None:
    config = ActorConfig(idempotency_ttl=HOUR, idempotency_records=2)
    with testing.Environment(storage=storage_url, config=config) as env:
        for i in range(TRIM_EVERY):  # the window is counted every TRIM_EVERY keyed commits
            env.call("ClockAlarm", "idem", "disarm", "x", idempotency_key=f"k{i}")
        with pytest.raises(IdempotencyWindowFullError) as full:
            env.call("ClockAlarm", "idem", "disarm", "x", idempotency_key="one-more")
        assert full.value.retry_after == pytest.approx(HOUR)  # by the clock: the oldest's time left
        env.advance(minutes=59)
        with pytest.raises(IdempotencyWindowFullError):
            env.call("ClockAlarm", "idem", "disarm", "x", idempotency_key="one-more")
        env.advance(minutes=1, seconds=1)  # every record is now older than the window
        env.call("ClockAlarm", "idem", "disarm", "x", idempotency_key="one-more")


def test_the_http_client_sees_the_same_runtime_and_clock(env: testing.Environment) -> None:
    http = env.http(token="t0k")
    r = http.put(
        "/v1/actors/ClockAlarm/web/timers/standup",
        json={"cron": "0 9 * * MON-FRI", "tz": "Europe/Paris", "method": "ring", "args": ["standup"]},
    )
    assert r.status_code == 404  # the actor does not exist yet: timers over HTTP need one
    assert http.post("/v1/actors/ClockAlarm/web").status_code == 201
    r = http.put(
        "/v1/actors/ClockAlarm/web/timers/standup",
        json={"cron": "0 9 * * MON-FRI", "tz": "Europe/Paris", "method": "ring", "args": ["standup"]},
    )
    assert r.status_code == 200, r.text
    env.advance(days=7)  # Tuesday 1 December 2026, 10:00 in Paris, to the next Tuesday
    rings = http.get("/v1/actors/ClockAlarm/web").json()["state"]["rings"]
    days = [dt.datetime.fromtimestamp(r[1], dt.UTC).strftime("%a %H:%M") for r in rings]
    assert days == ["Wed 08:00", "Thu 08:00", "Fri 08:00", "Mon 08:00", "Tue 08:00"]


def test_a_step_that_never_settles_is_reported(storage_url: str) -> None:
    @workflow.step
    def real_wait() -> None:
        time.sleep(0.5)

    with testing.Environment(storage=storage_url) as env:
        running = real_wait.step().run_async(workflow_id="stuck")
        with pytest.raises(testing.StuckError, match=r"did not settle within 0\.1 s"):
            env.settle(timeout=0.1)
        running.result(timeout=10)


def test_a_workflow_still_loading_its_steps_is_not_settled() -> None:
    # The run is RUNNING in storage before its executor exists: loading its steps takes a while
    # (a slow or reconnecting storage, as the CI's Redis once was), and settle must wait for it.
    @workflow.step
    def real_wait() -> None:
        time.sleep(0.5)

    with testing.Environment() as env:
        store = env.workflows.engine.store
        load = store.load_dag

        async def slow_load(wid: str) -> Any:
            await asyncio.sleep(0.3)
            return await load(wid)

        store.load_dag = slow_load  # type: ignore[method-assign]
        running = real_wait.step().run_async(workflow_id="starting")
        with pytest.raises(testing.StuckError, match="did not settle"):
            env.settle(timeout=0.1)
        running.result(timeout=10)


@workflow.virtual_actor(name="FailSender")
class FailSender:
    def poke(self, other: str) -> None:
        workflow.send(FailReceiver.get_or_create(other).refuse, "no")


@workflow.virtual_actor(name="FailReceiver")
class FailReceiver:
    def __init__(self) -> None:
        self.n = 0

    def refuse(self, why: str) -> None:
        raise ValueError(why)


def test_a_message_whose_handler_raises_is_recorded_once_even_across_a_crash(
    env: testing.Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender's outbox entry and the receiver's failure record live in two storage groups
    (two commits). A process that dies between them leaves the entry: its next delivery runs
    the handler again, finds the failure recorded, and only removes the entry."""
    from actorflow.errors import StorageUnavailableError

    storage, real = env.actors.outbox.storage, env.actors.outbox.storage.commit
    crashed: list[int] = []

    async def commit(batch: Any) -> bool:
        takes_entry = any(k.startswith("act/FailSender/s2/out/") for k in batch.deletes)
        if takes_entry and not crashed:
            crashed.append(1)
            raise StorageUnavailableError("the process died here", "test")
        return await real(batch)

    def failures(actor: str) -> list[dict[str, Any]]:
        return list(env._blocking(env.actors.outbox.failures_of("FailReceiver", actor)))

    env.call("FailSender", "s1", "poke", other="r1")
    env.settle()
    assert [f["kind"] for f in failures("r1")] == ["message"]
    assert env._blocking(env.actors.outbox.size()) == 0

    monkeypatch.setattr(storage, "commit", commit)
    env.call("FailSender", "s2", "poke", other="r2")
    env.settle()
    assert crashed and env._blocking(env.actors.outbox.size()) == 1  # recorded; the entry stayed
    env.advance(minutes=1)  # the recovery pass delivers it again
    assert env._blocking(env.actors.outbox.size()) == 0
    assert [f["message_id"].split("/")[1] for f in failures("r2")] == ["s2"]  # once


def test_an_undelivered_message_is_listed_as_pending_until_delivered(
    env: testing.Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``GET /v1/actors/{type}/{id}`` lists the messages the actor sent that are not delivered
    yet (here: as if its process died before delivering), until the recovery pass delivers."""
    monkeypatch.setattr(env.actors.outbox, "spawn", lambda *a: None)  # nothing delivered at once
    client = env.http()
    env.call("FailSender", "s3", "poke", other="r3")
    pending = client.get("/v1/actors/FailSender/s3").json()["pending_messages"]
    assert [(p["kind"], p["to"], p["method"]) for p in pending] == [("message", "FailReceiver/r3", "refuse")]
    assert pending[0]["message_id"].startswith("FailSender/s3/")
    env.advance(minutes=1)
    assert client.get("/v1/actors/FailSender/s3").json()["pending_messages"] == []
    assert [f["kind"] for f in client.get("/v1/actors/FailReceiver/r3").json()["failed_messages"]] == [
        "message"
    ]
