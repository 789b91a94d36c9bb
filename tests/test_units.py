"""Fast unit tests of the actor runtime on in-memory storage with a manual clock.

No background loop runs (the runtime is never ``start``ed) and nothing sleeps: each test
drives the scheduler, the outbox recovery and passivation by hand and moves time with
:class:`~actorflow._clock.ManualClock`. Every wait is bounded.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from actorflow import workflow
from actorflow._clock import ManualClock
from actorflow.actor import ActorConfig, ActorHandle, ActorRuntime, lookup
from actorflow.actor._idempotency import TRIM_EVERY
from actorflow.actor._keys import idem_index, own_prefix
from actorflow.actor._timers import MAX_ATTEMPTS
from actorflow.engine import WorkflowRuntime
from actorflow.errors import IdempotencyKeyReusedError, IdempotencyWindowFullError
from actorflow.storage import Batch

WAIT = 5.0  # seconds any single call may take, at most

# What methods did, counted outside the actors' state (a raising turn keeps no state).
RUNS: dict[str, list[Any]] = {}


def ran(tag: str, what: Any = None) -> None:
    RUNS.setdefault(tag, []).append(what)


@workflow.virtual_actor(name="UnitCounter")
class UnitCounter:
    def __init__(self, start: int = 0) -> None:
        self.count = start
        self.log: list[str] = []

    def add(self, n: int, tag: str = "") -> int:
        if tag:
            ran(tag, n)
        self.count += n
        return self.count

    def incr(self) -> int:
        self.count += 1
        return self.count

    def change_then_raise(self, to: str) -> None:
        self.count = -1000
        self.log.append("should vanish")
        workflow.send(ActorHandle(lookup("UnitInbox"), to).push, 1)
        workflow.timers.set("doomed", after=1, method="incr")
        raise ValueError("changed my mind")

    @workflow.virtual_actor.readonly
    def value(self) -> int:
        return self.count

    @workflow.virtual_actor.readonly
    def sneaky(self) -> int:
        self.count += 100
        return self.count


@workflow.virtual_actor(name="UnitInbox")
class UnitInbox:
    def __init__(self) -> None:
        self.got: list[int] = []

    def push(self, n: int) -> int:
        self.got.append(n)
        return len(self.got)

    def forward(self, to: str, n: int) -> int:
        workflow.send(ActorHandle(lookup("UnitInbox"), to).push, n)
        return n

    @workflow.virtual_actor.readonly
    def items(self) -> list[int]:
        return self.got


@workflow.virtual_actor(name="UnitAlarm")
class UnitAlarm:
    def __init__(self) -> None:
        self.rings: list[dict[str, Any]] = []

    def arm(self, name: str, after: float | None = None, every: float | None = None) -> None:
        workflow.timers.set(name, after=after, every=every, method="ring", args=[name])

    def arm_at(self, name: str, at: float) -> None:
        workflow.timers.set(name, at=at, method="ring", args=[name])

    def arm_failing(self, name: str, tag: str, every: float | None = None) -> None:
        workflow.timers.set(name, after=10, every=every, method="fail_ring", args=[tag])

    def disarm(self, name: str) -> None:
        workflow.timers.cancel(name)

    def ring(self, name: str, missed: int = 0) -> int:
        firing = workflow.timers.firing()
        assert firing is not None and firing.name == name
        self.rings.append({"name": name, "missed": missed, "due": firing.due, "attempt": firing.attempt})
        return len(self.rings)

    def fail_ring(self, tag: str) -> None:
        firing = workflow.timers.firing()
        assert firing is not None
        ran(tag, firing.attempt)
        raise ValueError(f"attempt {firing.attempt} fails")

    @workflow.virtual_actor.readonly
    def history(self) -> list[dict[str, Any]]:
        return self.rings


COUNTER, INBOX, ALARM = lookup("UnitCounter"), lookup("UnitInbox"), lookup("UnitAlarm")


@dataclass
class Env:
    """One runtime that runs nothing on its own, on a fresh in-memory store."""

    wf: WorkflowRuntime
    rt: ActorRuntime
    clock: ManualClock

    def create(self, ac: Any, actor_id: str, *args: Any) -> bool:
        return self.rt.create(ac, actor_id, args, {})

    def call(self, ac: Any, actor_id: str, method: str, *args: Any, key: str | None = None) -> Any:
        return self.rt.submit(ac, actor_id, method, args, {}, key).result(timeout=WAIT)

    def run(self, coro: Any) -> Any:
        return self.rt.blocking(coro, WAIT)

    def state(self, ac: Any, actor_id: str) -> Any:
        return self.rt.state(ac, actor_id).state()

    def version(self, ac: Any, actor_id: str) -> int:
        return self.rt.state(ac, actor_id).version

    def keys(self, ac: Any, actor_id: str, folder: str) -> list[str]:
        return list(self.run(self.rt.storage.list_keys(own_prefix(ac.type_name, actor_id, folder))))

    def outbox_size(self) -> int:
        return int(self.run(self.rt.outbox.size()))

    def fire(self) -> dict[str, int]:
        return dict(self.run(self.rt.scheduler.fire_due()))

    def timers(self, actor_id: str) -> dict[str, Any]:
        return dict(self.run(self.rt.scheduler.timers_of(ALARM.type_name, actor_id)))

    def drain(self) -> None:
        """Wait (bounded) for the deliveries the outbox started in the background."""
        assert self.rt.blocking(self.rt.outbox.settled(WAIT), 2 * WAIT), "deliveries never settled"


@pytest.fixture
def env() -> Iterator[Env]:
    wf = WorkflowRuntime(f"memory://units-{uuid.uuid4().hex}")
    clock = ManualClock()
    rt = ActorRuntime(wf, ActorConfig(clock=clock))  # not started: no loops of its own
    try:
        yield Env(wf, rt, clock)
    finally:
        rt.close()
        wf.close()


def tag() -> str:
    return uuid.uuid4().hex


# ---------------------------------------------------------------------------------- turns
def test_a_writer_call_commits_its_state_and_the_next_version(env: Env) -> None:
    assert env.create(COUNTER, "w", 5) is True
    assert env.create(COUNTER, "w", 99) is False  # exists: the arguments are ignored
    v0 = env.version(COUNTER, "w")
    assert env.call(COUNTER, "w", "add", 3) == 8
    assert env.version(COUNTER, "w") == v0 + 1
    assert env.call(COUNTER, "w", "incr") == 9
    assert env.version(COUNTER, "w") == v0 + 2
    assert env.state(COUNTER, "w") == {"count": 9, "log": []}
    # A read-only method sees the committed state; its changes are discarded, nothing commits.
    assert env.call(COUNTER, "w", "sneaky") == 109
    assert env.call(COUNTER, "w", "value") == 9
    assert env.version(COUNTER, "w") == v0 + 2


def test_a_raising_method_leaves_state_unchanged_and_sends_or_sets_nothing(env: Env) -> None:
    env.create(COUNTER, "r", 7)
    env.create(INBOX, "r-to")
    v0 = env.version(COUNTER, "r")
    with pytest.raises(ValueError, match="changed my mind"):
        env.call(COUNTER, "r", "change_then_raise", "r-to")
    assert env.version(COUNTER, "r") == v0
    assert env.state(COUNTER, "r") == {"count": 7, "log": []}
    assert env.outbox_size() == 0 and env.keys(COUNTER, "r", "out/") == []
    assert env.run(env.rt.scheduler.timers_of(COUNTER.type_name, "r")) == {}
    env.clock.advance(10)
    assert env.fire() == {"fired": 0, "retried": 0, "failed": 0, "skipped": 0}
    assert env.run(env.rt.outbox.recover()) == 0
    assert env.state(INBOX, "r-to") == {"got": []}


def test_a_replayed_key_returns_the_recorded_result_without_running_again(env: Env) -> None:
    env.create(COUNTER, "k", 0)
    t = tag()
    assert env.call(COUNTER, "k", "add", 10, t, key="pay-1") == 10
    v = env.version(COUNTER, "k")
    env.call(COUNTER, "k", "incr")  # the state moves on; the record keeps the first result
    assert env.call(COUNTER, "k", "add", 10, t, key="pay-1") == 10
    env.rt.cache.pop("UnitCounter/k")  # replayed from storage too, not only from this cache
    assert env.call(COUNTER, "k", "add", 10, t, key="pay-1") == 10
    assert RUNS[t] == [10]  # the method ran once
    assert env.version(COUNTER, "k") == v + 1 and env.state(COUNTER, "k")["count"] == 11
    assert len(env.keys(COUNTER, "k", "idem/")) == 1


def test_a_key_reused_with_other_arguments_or_method_is_refused_and_changes_nothing(env: Env) -> None:
    env.create(COUNTER, "reuse", 0)
    t = tag()
    assert env.call(COUNTER, "reuse", "add", 10, t, key="k") == 10
    v = env.version(COUNTER, "reuse")
    with pytest.raises(IdempotencyKeyReusedError, match="other arguments"):
        env.call(COUNTER, "reuse", "add", 999, t, key="k")
    with pytest.raises(IdempotencyKeyReusedError, match="method 'add'"):
        env.call(COUNTER, "reuse", "incr", key="k")
    assert RUNS[t] == [10]
    assert env.version(COUNTER, "reuse") == v and env.state(COUNTER, "reuse")["count"] == 10
    assert len(env.keys(COUNTER, "reuse", "idem/")) == 1
    assert env.call(COUNTER, "reuse", "add", 10, t, key="k") == 10  # the true repeat replays


# --------------------------------------------------------------------------------- timers
def test_a_one_shot_timer_fires_once_and_never_early(env: Env) -> None:
    env.create(ALARM, "once")
    start = env.clock.time()
    env.call(ALARM, "once", "arm", "t1", 60)
    assert env.timers("once")["t1"].due == start + 60
    assert env.fire()["fired"] == 0  # not due yet
    env.clock.advance(59)
    assert env.fire() == {"fired": 0, "retried": 0, "failed": 0, "skipped": 0}
    assert env.call(ALARM, "once", "history") == []
    env.clock.advance(2)
    assert env.fire() == {"fired": 1, "retried": 0, "failed": 0, "skipped": 0}
    assert env.call(ALARM, "once", "history") == [
        {"name": "t1", "missed": 0, "due": start + 60, "attempt": 1}
    ]
    assert env.timers("once") == {}  # a one-shot timer is gone once it fired
    env.clock.advance(3600)
    assert env.fire()["fired"] == 0
    assert len(env.call(ALARM, "once", "history")) == 1


def test_a_periodic_timer_fires_once_for_its_missed_ticks_then_keeps_its_schedule(env: Env) -> None:
    env.create(ALARM, "every")
    start = env.clock.time()
    env.call(ALARM, "every", "arm", "p", None, 10)  # first due one period from now
    assert env.timers("every")["p"].due == start + 10
    env.clock.advance(35)  # ticks at +10, +20, +30 are due: one firing, two missed
    assert env.fire() == {"fired": 1, "retried": 0, "failed": 0, "skipped": 0}
    assert env.call(ALARM, "every", "history") == [
        {"name": "p", "missed": 2, "due": start + 10, "attempt": 1}
    ]
    assert env.timers("every")["p"].due == start + 40  # the first tick after now
    assert env.fire()["fired"] == 0  # nothing more is due at +35
    env.clock.advance(4.5)
    assert env.fire()["fired"] == 0
    env.clock.advance(0.5)
    assert env.fire()["fired"] == 1
    rings = env.call(ALARM, "every", "history")
    assert len(rings) == 2 and rings[1] == {"name": "p", "missed": 0, "due": start + 40, "attempt": 1}
    assert env.timers("every")["p"].due == start + 50


def test_a_raising_timer_is_retried_with_doubling_backoff_then_recorded_as_failed(env: Env) -> None:
    env.rt.config.timer_backoff = 3.0
    env.create(ALARM, "flaky")
    t = tag()
    v0 = env.version(ALARM, "flaky")
    start = env.clock.time()
    env.call(ALARM, "flaky", "arm_failing", "f", t)
    env.clock.advance(10)
    assert env.fire() == {"fired": 0, "retried": 1, "failed": 0, "skipped": 0}
    assert RUNS[t] == [1]
    for attempt in range(1, MAX_ATTEMPTS - 1):
        backoff = 3.0 * 2 ** (attempt - 1)  # 3, 6, 12 s
        timer = env.timers("flaky")["f"]
        assert timer.attempts == attempt and timer.due == start + 10
        assert timer.next_try == env.clock.time() + backoff
        env.clock.advance(backoff - 0.5)
        assert env.fire()["retried"] == 0 and len(RUNS[t]) == attempt  # not before its backoff
        env.clock.advance(0.5)
        assert env.fire() == {"fired": 0, "retried": 1, "failed": 0, "skipped": 0}
        assert RUNS[t] == list(range(1, attempt + 2))
    env.clock.advance(3.0 * 2 ** (MAX_ATTEMPTS - 2))  # the last attempt, 24 s later
    assert env.fire() == {"fired": 0, "retried": 0, "failed": 1, "skipped": 0}
    assert RUNS[t] == list(range(1, MAX_ATTEMPTS + 1))
    failures = env.run(env.rt.scheduler.timer_failures(ALARM.type_name, "flaky"))
    assert set(failures) == {"f"}
    assert failures["f"]["attempts"] == MAX_ATTEMPTS and failures["f"]["due"] == start + 10
    assert failures["f"]["error"] == f"ValueError: attempt {MAX_ATTEMPTS} fails"
    assert failures["f"]["at"] == env.clock.time()
    assert env.timers("flaky") == {}  # a one-shot timer is dropped after its last attempt
    env.clock.advance(3600)
    assert env.fire()["retried"] == 0 and len(RUNS[t]) == MAX_ATTEMPTS
    assert env.version(ALARM, "flaky") == v0 + 1  # only the arming turn committed


def test_a_periodic_timer_that_keeps_failing_moves_on_to_its_next_tick(env: Env) -> None:
    env.create(ALARM, "pflaky")
    t = tag()
    start = env.clock.time()
    env.call(ALARM, "pflaky", "arm_failing", "pf", t, 100)
    env.clock.advance(10)
    counts = [env.fire()]
    for attempt in range(1, MAX_ATTEMPTS):
        env.clock.advance(2 ** (attempt - 1))  # backoff 1, 2, 4, 8 s
        counts.append(env.fire())
    assert [c["retried"] for c in counts] == [1] * (MAX_ATTEMPTS - 1) + [0]
    assert counts[-1]["failed"] == 1 and len(RUNS[t]) == MAX_ATTEMPTS
    timer = env.timers("pflaky")["pf"]
    assert timer.due == start + 110 and timer.attempts == 0 and timer.next_try == start + 110
    failures = env.run(env.rt.scheduler.timer_failures(ALARM.type_name, "pflaky"))
    assert failures["pf"]["due"] == start + 10


def test_a_cancelled_timer_never_fires(env: Env) -> None:
    env.create(ALARM, "cancel")
    env.call(ALARM, "cancel", "arm", "inside", 5)
    env.call(ALARM, "cancel", "arm", "outside", None, 5)
    assert set(env.timers("cancel")) == {"inside", "outside"}
    env.call(ALARM, "cancel", "disarm", "inside")
    assert env.run(env.rt.scheduler.cancel_timer(ALARM, "cancel", "outside")) is True
    assert env.run(env.rt.scheduler.cancel_timer(ALARM, "cancel", "outside")) is False
    assert env.timers("cancel") == {}
    env.clock.advance(60)
    assert env.fire() == {"fired": 0, "retried": 0, "failed": 0, "skipped": 0}
    assert env.call(ALARM, "cancel", "history") == []


def test_a_tick_whose_timer_was_cancelled_after_its_claim_is_dropped(env: Env) -> None:
    env.create(ALARM, "late")
    env.call(ALARM, "late", "arm", "c", 1)
    env.clock.advance(2)
    sched = env.rt.scheduler
    (claim,) = env.run(sched.claim(["UnitAlarm/late/c"]))
    assert env.run(sched.claim(["UnitAlarm/late/c"])) == []  # claimed once
    env.call(ALARM, "late", "disarm", "c")
    v = env.version(ALARM, "late")
    assert env.run(sched.fire(claim)) == "skipped"
    assert env.call(ALARM, "late", "history") == [] and env.version(ALARM, "late") == v
    assert env.timers("late") == {}


def test_a_timer_set_again_for_a_tick_that_already_fired_runs_again(env: Env) -> None:
    env.create(ALARM, "again")
    deadline = env.clock.time() + 10
    env.call(ALARM, "again", "arm_at", "d", deadline)
    env.clock.advance(11)
    assert env.fire()["fired"] == 1 and len(env.call(ALARM, "again", "history")) == 1
    env.call(ALARM, "again", "arm_at", "d", deadline)  # a new timer, due at once
    assert set(env.timers("again")) == {"d"}
    assert env.fire()["fired"] == 1
    assert env.timers("again") == {}
    # Its tick is keyed by the new setting, so the first tick's record does not answer it.
    assert len(env.call(ALARM, "again", "history")) == 2


# ---------------------------------------------------------------------------- passivation
def test_an_idle_actor_is_passivated_and_reloads_from_storage_with_nothing_lost(env: Env) -> None:
    idle = env.rt.config.idle_seconds
    env.create(COUNTER, "idle", 0)
    env.call(COUNTER, "idle", "add", 5)
    v = env.version(COUNTER, "idle")
    assert "UnitCounter/idle" in env.rt.cache
    env.clock.advance(idle - 1)
    assert env.rt.cache.passivate_idle() == 0 and "UnitCounter/idle" in env.rt.cache
    env.clock.advance(2)
    assert env.rt.cache.passivate_idle() == 1
    assert "UnitCounter/idle" not in env.rt.cache
    assert env.call(COUNTER, "idle", "incr") == 6  # reloaded from storage
    assert "UnitCounter/idle" in env.rt.cache
    assert env.version(COUNTER, "idle") == v + 1
    assert env.state(COUNTER, "idle") == {"count": 6, "log": []}


def test_a_call_resets_the_idle_clock(env: Env) -> None:
    idle = env.rt.config.idle_seconds
    env.create(COUNTER, "busy", 0)
    env.call(COUNTER, "busy", "incr")
    env.clock.advance(idle * 0.75)
    env.call(COUNTER, "busy", "incr")  # runs on the cached snapshot: used now
    env.clock.advance(idle * 0.75)  # idle_seconds * 1.5 since the first call
    assert env.rt.cache.passivate_idle() == 0 and "UnitCounter/busy" in env.rt.cache
    env.clock.advance(idle * 0.25 + 1)
    assert env.rt.cache.passivate_idle() == 1
    assert env.call(COUNTER, "busy", "value") == 2


# --------------------------------------------------------------------------------- outbox


def test_a_read_only_call_resets_the_idle_clock_too(env: Env) -> None:
    """A read-mostly actor stays cached while it is read (reads refresh its snapshot in place
    when nothing changed, so they must count as use)."""
    idle = env.rt.config.idle_seconds
    env.create(COUNTER, "reader", 0)
    env.call(COUNTER, "reader", "incr")
    env.clock.advance(idle * 0.75)
    assert env.call(COUNTER, "reader", "value") == 1
    env.clock.advance(idle * 0.75)
    assert env.rt.cache.passivate_idle() == 0 and "UnitCounter/reader" in env.rt.cache
    env.clock.advance(idle * 0.5)
    assert env.rt.cache.passivate_idle() == 1


def test_a_sent_message_is_delivered_exactly_once(env: Env) -> None:
    env.create(INBOX, "s")
    env.create(INBOX, "s-to")
    assert env.call(INBOX, "s", "forward", "s-to", 7, key="t1") == 7
    env.drain()
    assert env.call(INBOX, "s-to", "items") == [7]
    # The keyed repeat replays its record: nothing is sent again.
    assert env.call(INBOX, "s", "forward", "s-to", 7, key="t1") == 7
    env.drain()
    assert env.outbox_size() == 0
    env.clock.advance(3600)
    assert env.run(env.rt.outbox.recover()) == 0
    assert env.state(INBOX, "s-to") == {"got": [7]}
    assert env.state(INBOX, "s") == {"got": []}


def test_a_delivery_that_failed_is_retried_by_recovery_after_outbox_retry_only(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = env.rt.config
    env.create(INBOX, "f")
    env.create(INBOX, "f-to")
    real_call = env.rt.turns.call
    failures: list[str] = []

    async def flaky_call(ac: Any, actor_id: str, method: str, *rest: Any, **options: Any) -> Any:
        if method == "push" and not failures:
            failures.append(actor_id)
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        return await real_call(ac, actor_id, method, *rest, **options)

    monkeypatch.setattr(env.rt.turns, "call", flaky_call)
    env.call(INBOX, "f", "forward", "f-to", 7)
    env.drain()
    assert failures == ["f-to"]
    assert env.outbox_size() == 1 and len(env.keys(INBOX, "f", "out/")) == 1
    assert env.call(INBOX, "f-to", "items") == []
    # Past the grace period but not the retry delay: the failed entry waits.
    env.clock.advance(cfg.outbox_grace + 0.5)
    assert cfg.outbox_grace + 0.5 < cfg.outbox_retry
    assert env.run(env.rt.outbox.recover()) == 0
    env.clock.advance(cfg.outbox_retry - cfg.outbox_grace - 1.0)  # retry - 0.5 s after the failure
    assert env.run(env.rt.outbox.recover()) == 0
    assert env.call(INBOX, "f-to", "items") == []
    env.clock.advance(0.5)
    assert env.run(env.rt.outbox.recover()) == 1
    assert env.call(INBOX, "f-to", "items") == [7]
    assert env.outbox_size() == 0 and env.keys(INBOX, "f", "out/") == []
    env.clock.advance(3600)
    assert env.run(env.rt.outbox.recover()) == 0  # a second pass delivers nothing more
    assert env.state(INBOX, "f-to") == {"got": [7]} and failures == ["f-to"]


def test_an_entry_a_dead_sender_left_is_recovered_after_the_grace_period(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = env.rt.config
    env.create(INBOX, "d")
    env.create(INBOX, "d-to")
    monkeypatch.setattr(env.rt.turns, "sent", lambda *message: None)  # "crashed" after commit
    env.call(INBOX, "d", "forward", "d-to", 3)
    env.drain()
    assert env.outbox_size() == 1
    env.clock.advance(cfg.outbox_grace - 0.5)
    assert env.run(env.rt.outbox.recover()) == 0
    assert env.call(INBOX, "d-to", "items") == []
    env.clock.advance(1.0)
    assert env.run(env.rt.outbox.recover()) == 1
    assert env.call(INBOX, "d-to", "items") == [3] and env.outbox_size() == 0
    env.clock.advance(3600)
    assert env.run(env.rt.outbox.recover()) == 0
    assert env.state(INBOX, "d-to") == {"got": [3]}


def test_a_message_delivered_again_is_answered_from_the_receivers_record(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that died after the receiver's commit but before removing the entry leaves it
    behind: the recovery pass delivers it again, and the receiver's key makes that harmless."""
    env.create(INBOX, "x")
    env.create(INBOX, "x-to")
    sent: list[tuple[str, str, str]] = []
    monkeypatch.setattr(env.rt.turns, "sent", lambda *message: sent.append(message))
    env.call(INBOX, "x", "forward", "x-to", 4)
    ((t, a, msg_id),) = sent
    storage = env.rt.storage
    (key,) = env.keys(INBOX, "x", "out/")
    raw = env.run(storage.get(key))
    member = f"{t}/{a}/{msg_id}"
    score = env.run(storage.index_score("outbox", member))
    assert env.run(env.rt.outbox.deliver(t, a, msg_id, wait=True)) == 1
    assert env.outbox_size() == 0
    # Put the entry back as the dead process left it.
    env.run(storage.commit(Batch().put(key, raw).index_add("outbox", member, score)))
    v = env.version(INBOX, "x-to")
    env.clock.advance(env.rt.config.outbox_grace + 1)
    assert env.run(env.rt.outbox.recover()) == 1
    assert env.state(INBOX, "x-to") == {"got": [4]} and env.version(INBOX, "x-to") == v
    assert env.outbox_size() == 0


# --------------------------------------------------------------------- idempotency window
def test_a_full_window_refuses_new_keys_until_its_records_expire_by_clock_age(env: Env) -> None:
    cfg = env.rt.config
    cfg.idempotency_records, cfg.idempotency_ttl = 5, 100.0
    env.create(COUNTER, "win", 0)
    start = env.clock.time()
    # The window is counted every TRIM_EVERY keyed commits, so it may be passed by that many.
    for i in range(TRIM_EVERY):
        assert env.call(COUNTER, "win", "add", 1, key=f"w{i}") == i + 1
    v = env.version(COUNTER, "win")
    with pytest.raises(IdempotencyWindowFullError) as refused:
        env.call(COUNTER, "win", "add", 1, key="one-more")
    assert refused.value.retry_after == pytest.approx(100.0)  # the oldest record's time left
    assert env.version(COUNTER, "win") == v
    assert env.call(COUNTER, "win", "add", 1, key="w0") == 1  # recorded keys still replay
    assert env.call(COUNTER, "win", "add", 1) == TRIM_EVERY + 1  # unkeyed calls are not limited
    # Records expire by age only: just short of the ttl, nothing is dropped.
    env.clock.advance(99)
    with pytest.raises(IdempotencyWindowFullError) as again:
        env.call(COUNTER, "win", "add", 1, key="one-more")
    assert again.value.retry_after == pytest.approx(1.0)
    index = idem_index(COUNTER.type_name, "win")
    assert env.run(env.rt.storage.index_count(index)) == TRIM_EVERY
    env.clock.advance(2)  # past the ttl (and past the once-a-second re-check)
    assert env.call(COUNTER, "win", "add", 1, key="after") == TRIM_EVERY + 2
    assert env.run(env.rt.storage.index_count(index)) == 1
    assert env.keys(COUNTER, "win", "idem/") == ["act/UnitCounter/win/idem/u%3Aafter"]
    assert env.state(COUNTER, "win")["count"] == TRIM_EVERY + 2
    assert env.clock.time() == start + 101
    assert not env.rt.turns.window.is_full("UnitCounter/win")


def test_a_trim_drops_exactly_the_records_older_than_the_ttl(env: Env) -> None:
    cfg = env.rt.config
    cfg.idempotency_records, cfg.idempotency_ttl = 1000, 50.0
    env.create(COUNTER, "trim", 0)
    for i in range(3):
        env.call(COUNTER, "trim", "add", 1, key=f"old{i}")
    env.clock.advance(30)
    for i in range(2):
        env.call(COUNTER, "trim", "add", 1, key=f"new{i}")
    index = idem_index(COUNTER.type_name, "trim")
    window = env.rt.turns.window
    env.clock.advance(19)  # the old ones are 49 s old
    env.run(window.trim(COUNTER.type_name, "trim"))
    assert env.run(env.rt.storage.index_count(index)) == 5
    env.clock.advance(1)  # the old ones are exactly 50 s old; the new ones 20 s
    env.run(window.trim(COUNTER.type_name, "trim"))
    assert env.run(env.rt.storage.index_count(index)) == 2
    assert [k.rsplit("%3A", 1)[1] for k in env.keys(COUNTER, "trim", "idem/")] == ["new0", "new1"]
    # A dropped key is a new key again: it runs (and records) once more.
    assert env.call(COUNTER, "trim", "add", 1, key="old0") == 6
    assert env.call(COUNTER, "trim", "add", 1, key="new0") == 4  # still recorded: replayed
    assert env.state(COUNTER, "trim")["count"] == 6


@pytest.mark.parametrize(
    ("new_module", "old_module", "new_name", "old_name"),
    [
        ("actorflow.actor._context", "actorflow.actor._runtime", "Message", "_Message"),
        ("actorflow.engine._dag", "actorflow.workflow._dag", "StepOptions", "StepOptions"),
    ],
)
def test_pickles_written_before_the_split_still_load(
    new_module: str, old_module: str, new_name: str, old_name: str
) -> None:
    """Outbox entries and workflow checkpoints stored before a class moved name their old home
    in the pickle (protocol 0 spells it out as text, as the old code's pickles did)."""
    import importlib
    import pickle

    from actorflow import _codec

    cls = getattr(importlib.import_module(new_module), new_name)
    value = (
        cls("T", "a", "m", (1,), {}, idem="k")
        if new_name == "Message"
        else cls(max_retries=2, catch_exceptions=True)
    )
    data = pickle.dumps(value, protocol=0)
    old = data.replace(f"{new_module}\n{new_name}\n".encode(), f"{old_module}\n{old_name}\n".encode())
    assert old != data
    assert _codec.loads(old) == value


def test_every_key_of_an_actor_and_its_sub_workflows_is_in_the_actors_group() -> None:
    """What a turn commits (state, listing, records, outbox, timers, a launched sub-workflow)
    is one group, hence one hash slot on Redis Cluster; spread directories are the listings."""
    from actorflow.actor import _keys as ak
    from actorflow.engine import _store as es
    from actorflow.storage._groups import dir_group, key_group, member_group

    t, a = "Shop", "cart:7"
    wid = ak.workflow_id(t, a, 12)
    group = key_group(ak.k_version(t, a))
    keys = [
        ak.k_version(t, a),
        ak.k_snapshot(t, a),
        ak.k_listing(t, a),
        ak.k_idem(t, a, "x/y"),
        ak.k_outbox(t, a, "m1"),
        ak.k_timer(t, a, "bell"),
        ak.k_timer_failure(t, a, "bell"),
        ak.k_failed(t, a, "e1"),
        es.k_meta(wid),
        es.k_index(wid),
        es.k_lease(wid),
        es.k_step(wid, "s1"),
        es.k_object(wid, "o1"),
        es.k_event(wid, "k"),
    ]
    assert {key_group(k) for k in keys} == {group} == {"Shop/cart:7"}
    assert member_group(ak.TIMER_INDEX, ak.timer_member(t, a, "bell")) == group
    assert member_group(ak.OUTBOX_INDEX, ak.outbox_member(t, a, "m1")) == group
    assert member_group(ak.idem_index(t, a), "any") == group
    assert key_group(es.k_meta("20261201-120000.abc")) == "wf:20261201-120000.abc"
    assert dir_group(ak.listing_prefix(t)) is None and dir_group(es.INDEX_PREFIX) is None
    # A directory inside a group lists only keys of that group.
    for key in [*keys, "x", "a/b/c", "wf/w/s/deep/er", "act/T", "acts//x", "wfs/a/b"]:
        directory = key[: key.rfind("/") + 1]
        assert dir_group(directory) in (None, key_group(key)), key


def test_a_commit_across_two_groups_is_refused_on_every_backend() -> None:
    import asyncio

    from actorflow.errors import StorageError
    from actorflow.storage import Batch, MemoryStorage

    async def attempt() -> None:
        s = MemoryStorage("")
        with pytest.raises(StorageError, match="one group"):
            await s.commit(Batch().put("act/T/a/v", b"1").put("act/T/b/v", b"1"))
        assert await s.get("act/T/a/v") is None

    asyncio.run(attempt())


def test_haproxy_listener_ports_are_outside_the_ephemeral_range() -> None:
    # A port from the ephemeral range can become the local end of one of Ray's connections
    # between the choice and HAProxy's bind ("Address already in use" at start-up).
    import shutil

    from actorflow.serve.ingress import haproxy_env, new_config_dir

    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    folder = new_config_dir()  # HAProxy's socket paths need a short one
    try:
        ports = [haproxy_env(config_dir=folder) for _ in range(20)]
    finally:
        shutil.rmtree(folder)
    for env in ports:
        for name in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
            assert 20000 <= int(env[name]) < low


def test_a_lease_dies_with_its_process_but_a_handed_one_only_by_its_expiry() -> None:
    """run_async and resume_async hand a lease to a runner in another process, and the caller
    may exit before that runner takes it over: the workflow must read RUNNING meanwhile."""
    import dataclasses
    import subprocess
    import sys

    from actorflow.engine._store import Lease, WorkflowStatus, effective_status

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(gone.stdout)
    running = {"status": WorkflowStatus.RUNNING.value}
    mine = dataclasses.replace(Lease.new(30.0), pid=dead_pid)
    assert not mine.alive() and effective_status(running, mine) is WorkflowStatus.RESUMABLE
    handed = Lease.new(30.0, handed=True)
    assert handed.pid == 0 and handed.alive()
    assert effective_status(running, handed) is WorkflowStatus.RUNNING
    lapsed = dataclasses.replace(handed, expires=handed.expires - 31.0)
    assert effective_status(running, lapsed) is WorkflowStatus.RESUMABLE


def test_commit_tokens_ignore_a_seeded_global_random_and_differ_after_a_fork() -> None:
    import os
    import random

    from actorflow.actor._state import new_token

    random.seed(7)
    first = new_token()
    random.seed(7)
    assert new_token() != first  # user code seeding random does not repeat tokens
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next token, then out at once
        os.write(write, new_token().encode())
        os._exit(0)
    os.close(write)
    try:
        child = os.read(read, 64).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert len(child) == 16 and child != new_token()
