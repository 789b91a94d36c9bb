"""Durable timers and external events on actors, in embedded mode, on every backend, in real
time: what needs it (a full stop of everything, two schedulers side by side, scheduler
lateness, a thousand timers). What only waits for time to pass is tested on a moved clock in
tests/test_testing.py."""

from __future__ import annotations

import pathlib
import time
from typing import Any

import pytest

from actorflow import workflow
from actorflow.actor import ActorRuntime, actor_runtime
from actorflow.engine import WorkflowRuntime, _runtime, default_runtime
from actorflow.errors import ActorEventNotFoundError, ConfigError

pytestmark = pytest.mark.usefixtures("wf_storage")

LOG: dict[str, str] = {}  # where the current test's actors log invocations (a file)


def log_line(line: str) -> None:
    with open(LOG["path"], "a") as f:
        f.write(line + "\n")


def logged() -> list[str]:
    try:
        return pathlib.Path(LOG["path"]).read_text().split()
    except FileNotFoundError:
        return []


@pytest.fixture(autouse=True)
def invocation_log(tmp_path: pathlib.Path) -> None:
    LOG["path"] = str(tmp_path / "invocations")


@workflow.virtual_actor
class Alarm:
    def __init__(self) -> None:
        self.rings: list[list[Any]] = []
        self.fail_left = 0

    def arm(
        self, name: str, after: float | None = None, every: float | None = None, at: float | None = None
    ) -> None:
        workflow.timers.set(name, after=after, at=at, every=every, method="ring", args=[name])

    def arm_then_raise(self) -> None:
        workflow.timers.set("doomed", after=0.1, method="ring", args=["doomed"])
        raise RuntimeError("the timer goes with the turn")

    def disarm(self, name: str) -> None:
        workflow.timers.cancel(name)

    def failing(self, n: int) -> None:
        self.fail_left = n
        workflow.timers.set("flaky", after=0.05, method="flaky_ring")

    def ring(self, name: str, missed: int = 0) -> int:
        firing = workflow.timers.firing()
        assert firing is not None and firing.name == name
        log_line(f"{name}@{firing.due:.3f}")
        self.rings.append([name, time.time(), missed, firing.due])
        return len(self.rings)

    def flaky_ring(self) -> None:
        log_line("flaky")
        if logged().count("flaky") <= self.fail_left:  # a raising turn keeps no state: count outside
            raise ValueError("not yet")
        self.rings.append(["flaky", time.time(), 0, 0])

    def start_chain(self, links: int) -> None:
        workflow.timers.set("chain", after=0.05, method="chain_link", args=[links])

    def chain_link(self, left: int) -> None:
        """Fired by the timer "chain"; sets that same timer again until no links are left."""
        log_line(f"chain-{left}")
        if left > 1:
            workflow.timers.set("chain", after=0.05, method="chain_link", args=[left - 1])

    def ring_twice(self, name: str) -> None:
        """Fired by a periodic timer; cancels that timer on its second ring."""
        log_line(f"{name}-ring")
        if logged().count(f"{name}-ring") >= 2:
            workflow.timers.cancel(name)

    def arm_ring_twice(self, name: str) -> None:
        workflow.timers.set(name, every=1.0, after=0.05, method="ring_twice", args=[name])

    def timer_names(self) -> list[str]:
        return sorted(workflow.timers.list())

    @workflow.virtual_actor.readonly
    def history(self) -> list[list[Any]]:
        return self.rings

    @workflow.virtual_actor.event("payment")
    def on_payment(self, payload: dict[str, Any]) -> int:
        log_line(f"payment-{payload['amount']}")
        self.rings.append(["payment", payload["amount"], 0, 0])
        return payload["amount"]


def wait_until(cond: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_timer_fires_once_within_tolerance() -> None:
    a = Alarm.get_or_create("once")
    start = time.time()
    a.arm.run("t1", after=0.3)
    assert a.timer_names.run() == ["t1"]
    wait_until(lambda: len(a.history.run()) == 1)
    name, rang_at, missed, due = a.history.run()[0]
    assert name == "t1" and missed == 0
    assert start + 0.3 <= rang_at < due + 1.0  # never early; late by well under a second
    time.sleep(0.5)
    assert len(a.history.run()) == 1 and logged() == [f"t1@{due:.3f}"]
    assert a.timer_names.run() == []  # a one-shot timer is gone once it fired


def test_timer_survives_a_full_stop_and_fires_exactly_once(storage_url: str) -> None:
    a = Alarm.get_or_create("restart")
    a.arm.run("t3", after=0.3)
    _runtime.close_all()  # everything stops before the timer is due
    time.sleep(1.0)
    workflow.init(storage_url)
    wait_until(lambda: len(Alarm.get("restart").history.run()) == 1)
    time.sleep(0.5)
    assert len(logged()) == 1


def test_periodic_timer_coalesces_ticks_missed_in_real_downtime(storage_url: str) -> None:
    """Coalescing by the clock is tested in tests/test_testing.py; this one stops everything."""
    b = Alarm.get_or_create("periodic-down")
    b.arm.run("q", every=1.0, after=0.2)
    wait_until(lambda: len(Alarm.get("periodic-down").history.run()) == 1)
    _runtime.close_all()
    time.sleep(3.3)
    workflow.init(storage_url)
    wait_until(lambda: len(Alarm.get("periodic-down").history.run()) == 2)
    rings = Alarm.get("periodic-down").history.run()
    # 3.3 s down covers three or four ticks; one firing stands for them all.
    assert rings[1][2] in (2, 3), rings
    Alarm.get("periodic-down").disarm.run("q")


@workflow.virtual_actor
class Many:
    """Sets ``n`` timers due within a second and keeps the names of those that fired."""

    def __init__(self) -> None:
        self.fired: list[str] = []

    def arm(self, me: str, n: int) -> None:
        for i in range(n):
            workflow.timers.set(f"t{i}", after=0.2 + i / n, method="ring", args=[me, f"t{i}"])

    def ring(self, me: str, name: str) -> None:
        log_line(f"{me}/{name}")  # per run of the turn: a conflict re-runs it
        self.fired.append(name)

    @workflow.virtual_actor.readonly
    def names(self) -> list[str]:
        return self.fired


def _timer_members_per_primary(storage_url: str) -> list[int]:
    """On a cluster URL: how many entries of the timer index each primary holds."""
    import redis

    from actorflow.storage import parse_storage_url

    prefix = parse_storage_url(storage_url)[1]["prefix"]
    port = int(storage_url.split("//", 1)[1].split("?", 1)[0].rsplit(":", 1)[1])
    counts = []
    with redis.RedisCluster(host="127.0.0.1", port=port) as cluster:
        for node in cluster.get_primaries():
            with redis.Redis(host=node.host, port=node.port) as client:
                names = client.scan_iter(match=f"{prefix}{{*}}i:timers", count=1000)
                counts.append(sum(int(client.zcard(n)) for n in names))
    return counts


def test_a_thousand_timers_on_a_hundred_actors_fire_once(storage_url: str) -> None:
    """1,000 timers on 100 actors, all due within about a second, two schedulers: each firing
    is committed exactly once (on a cluster, with the timers spread over every primary). The
    log counts runs of the method, which a compare-and-set conflict between the schedulers'
    turns on one actor repeats; the committed state counts firings."""
    second = WorkflowRuntime(storage_url)
    actor_runtime(second)
    try:
        ids = [f"many-{i}" for i in range(100)]
        for a in ids:
            Many.get_or_create(a).arm.run(a, 10)
        if "+cluster" in storage_url:
            per_primary = _timer_members_per_primary(storage_url)
            assert len(per_primary) == 3 and min(per_primary) > 0 and sum(per_primary) <= 1000, per_primary
        expected = sorted(f"t{i}" for i in range(10))
        wait_until(lambda: all(len(Many.get(a).names.run()) >= 10 for a in ids), timeout=60)
        time.sleep(0.5)  # a doubled firing would land meanwhile
        for a in ids:
            assert sorted(Many.get(a).names.run()) == expected, a
        assert len(set(logged())) == 1000
    finally:
        second.close()


def test_two_schedulers_fire_each_tick_once(storage_url: str) -> None:
    second = WorkflowRuntime(storage_url)
    other: ActorRuntime = actor_runtime(second)
    try:
        a = Alarm.get_or_create("two-schedulers")
        a.arm.run("p2", every=1.0, after=0.1)
        time.sleep(3.6)
        a.disarm.run("p2")
        ticks = logged()
        assert len(ticks) >= 3
        assert len(ticks) == len(set(ticks)), ticks  # no tick invoked twice
        assert len(a.history.run()) == len(ticks)
        assert other.config.tick_interval > 0
    finally:
        second.close()


def test_bad_timers_are_rejected_and_store_nothing() -> None:
    a = Alarm.get_or_create("bad-timers")
    rt = actor_runtime(default_runtime())
    from actorflow.actor import lookup

    ac = lookup("Alarm")
    cases = [
        {"method": "ring", "args": ["x"]},  # neither after nor at
        {"method": "ring", "args": ["x"], "after": -1},
        {"method": "ring", "args": ["x"], "after": "soon"},
        {"method": "ring", "args": ["x"], "every": 0.01},
        {"method": "nosuch", "after": 1},
        {"method": "ring", "after": 1, "args": ["x", "y", "z"]},
    ]
    for spec in cases:
        with pytest.raises((ConfigError, AttributeError, TypeError)):
            rt.blocking(rt.scheduler.set_timer(ac, "bad-timers", "t", **spec))
    assert a.timer_names.run() == []


def test_event_posted_twice_with_one_id_is_handled_once() -> None:
    rt = actor_runtime(default_runtime())
    from actorflow.actor import lookup

    ac = lookup("Alarm")
    a = Alarm.get_or_create("events")
    assert rt.blocking(rt.post_event(ac, "events", "payment", {"amount": 5}, "pay-1", True)) == (True, 5)
    assert rt.blocking(rt.post_event(ac, "events", "payment", {"amount": 5}, "pay-1", True)) == (True, 5)
    rt.blocking(rt.post_event(ac, "events", "payment", {"amount": 7}, "pay-2", False))
    rt.blocking(rt.post_event(ac, "events", "payment", {"amount": 7}, "pay-2", False))
    wait_until(lambda: len(a.history.run()) == 2)
    time.sleep(0.3)
    assert logged() == ["payment-5", "payment-7"]
    assert rt.blocking(rt.outbox.size()) == 0
    with pytest.raises(ActorEventNotFoundError):
        rt.blocking(rt.post_event(ac, "events", "refund", {}, None, False))
    assert rt.blocking(rt.outbox.size()) == 0
