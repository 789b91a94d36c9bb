"""Nothing acknowledged is lost: two runtimes on one storage, with deletes, re-creates and a
storage rolled back under them, on both backends.

Each runtime is a separate event loop, storage connection and actor cache, as two processes
or two Serve replicas would have; they share nothing but the storage. Every case counts what
was acknowledged and what survived.
"""

from __future__ import annotations

import concurrent.futures
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import _rollback
import pytest

from actorflow import workflow
from actorflow.actor import ActorRuntime, actor_runtime, lookup
from actorflow.engine import WorkflowRuntime
from actorflow.errors import ActorNotFoundError


@workflow.virtual_actor(name="LostTally")
class Tally:
    def __init__(self) -> None:
        self.n = 0
        self.seen: list[str] = []

    def incr(self, tag: str = "") -> int:
        self.n += 1
        if tag:
            self.seen.append(tag)
        return self.n

    def incr_seeded(self, tag: str = "") -> int:
        """``incr`` for a method that seeds Python's global ``random`` (a reproducible
        simulation step): commit tokens must not come from that generator."""
        random.seed(1234)
        return self.incr(tag)

    @workflow.virtual_actor.readonly
    def value(self) -> int:
        return self.n


AC = lookup("LostTally")


class Process:
    """One runtime, used through its blocking facade as a process's handles would.
    ``background=False`` stops its timer scheduler and outbox recovery, for tests that drive
    those steps by hand."""

    def __init__(self, url: str, background: bool = True) -> None:
        self.workflows = WorkflowRuntime(url)
        # Not started: no timer scheduler, no outbox recovery.
        self.actors = actor_runtime(self.workflows) if background else ActorRuntime(self.workflows)

    def run(self, coro: Any) -> Any:
        return self.workflows.blocking(coro)

    def create(self, actor_id: str) -> bool:
        return self.actors.create(AC, actor_id, (), {})

    def incr(self, actor_id: str, key: str | None = None, tag: str = "", method: str = "incr") -> int:
        result: int = self.actors.submit(AC, actor_id, method, (tag,), {}, key).result(timeout=60)
        return result

    def value(self, actor_id: str) -> int:
        result: int = self.actors.submit(AC, actor_id, "value", (), {}, None).result(timeout=60)
        return result

    def state(self, actor_id: str) -> Any:
        return self.actors.state(AC, actor_id).state()

    def delete(self, actor_id: str) -> None:
        self.actors.delete(AC, actor_id)

    def close(self) -> None:
        self.actors.close()
        self.workflows.close()


@workflow.virtual_actor(name="LostLog")
class Log:
    def __init__(self) -> None:
        self.log: list[str] = []

    def arm(self, tag: str, after: float) -> None:
        workflow.timers.set("t", after=after, method="ring", args=[tag])

    def ring(self, tag: str) -> str:
        self.log.append(tag)
        return tag

    def slow(self) -> str:
        time.sleep(1.0)
        return "slow"

    @workflow.virtual_actor.event("ping")
    def on_ping(self, payload: str) -> str:
        self.log.append(payload)
        return payload

    @workflow.virtual_actor.event("bad")
    def on_bad(self, payload: str) -> None:
        self.log.append(payload)
        raise ValueError("no")

    def fail_timer(self) -> None:
        raise ValueError("always")


LOG = lookup("LostLog")


@pytest.fixture
def quiet(storage_url: str) -> Iterator[tuple[Process, Process]]:
    """Two runtimes with no scheduler or recovery running: the tests drive those by hand."""
    a, b = Process(storage_url, background=False), Process(storage_url, background=False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def two(storage_url: str) -> Iterator[tuple[Process, Process]]:
    a, b = Process(storage_url), Process(storage_url)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("keyed", [False, True])
def test_delete_and_recreate_elsewhere_never_brings_back_the_old_actor(
    two: tuple[Process, Process], keyed: bool
) -> None:
    """P1 has the actor cached at version 6; P2 deletes it, re-creates it and increments it
    5 times (version 6 again before tokens). P1's next increment must land on P2's actor, as
    its 6th, not on P1's deleted state."""
    p1, p2 = two
    key = iter(range(1000))

    def k() -> str | None:
        return f"k{next(key)}" if keyed else None

    assert p1.create("a")
    assert [p1.incr("a", k()) for _ in range(5)] == [1, 2, 3, 4, 5]
    p2.delete("a")
    assert p2.create("a")
    assert [p2.incr("a", k(), tag="p2") for _ in range(5)] == [1, 2, 3, 4, 5]
    assert p1.incr("a", k(), tag="p1") == 6
    assert p2.value("a") == 6 and p1.value("a") == 6
    assert p2.state("a")["seen"] == ["p2"] * 5 + ["p1"]


@pytest.mark.parametrize(("keyed", "method"), [(False, "incr"), (True, "incr"), (False, "incr_seeded")])
def test_a_storage_rollback_never_lets_a_stale_cache_commit(
    two: tuple[Process, Process], storage_url: str, keyed: bool, method: str
) -> None:
    """A reaches version 6; the storage goes back to version 3; B increments 3 times (version 6
    again, acknowledged); A's next increment must not overwrite B's three. Also when the
    method seeds ``random`` (each turn's token would be the same if drawn from it)."""
    a, b = two
    key = iter(range(1000))

    def k() -> str | None:
        return f"k{next(key)}" if keyed else None

    assert a.create("r")
    assert [a.incr("r", k(), "a", method) for _ in range(2)] == [1, 2]
    saved = _rollback.save(storage_url)  # the actor at version 3
    assert [a.incr("r", k(), "lost", method) for _ in range(3)] == [3, 4, 5]  # these the crash loses
    _rollback.restore(storage_url, saved)
    assert [b.incr("r", k(), "b", method) for _ in range(3)] == [3, 4, 5]
    assert a.incr("r", k(), "a2", method) == 6
    assert b.state("r")["seen"] == ["a", "a", "b", "b", "b", "a2"]


def race_once(p1: Process, p2: Process, actor: str) -> dict[str, Any]:
    """``p1`` creates and increments ``actor`` while ``p2`` deletes it, both let go at once."""
    barrier = threading.Barrier(2)
    outcome: dict[str, Any] = {}

    def creator() -> None:
        barrier.wait()
        outcome["created"] = p1.create(actor)
        try:
            outcome["n"] = p1.incr(actor)
        except ActorNotFoundError:
            outcome["n"] = None  # deleted between the two: not acknowledged

    def deleter() -> None:
        barrier.wait()
        p2.delete(actor)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(creator), pool.submit(deleter)]:
            f.result(timeout=60)
    return outcome


def test_delete_racing_create_and_call_loses_no_acknowledged_update(two: tuple[Process, Process]) -> None:
    """One runtime creates an actor and increments it while the other deletes it, many times
    over. Whatever the order, an actor that exists afterwards is listed, readable, and holds
    every increment acknowledged since its creation; one that is listed always exists."""
    p1, p2 = two
    rounds = 120
    lost: list[Any] = []
    orphans: list[Any] = []
    for i in range(rounds):
        actor = f"race{i % 6}"
        if not p1.actors.exists(AC, actor):
            p1.create(actor)
        outcome = race_once(p1, p2, actor)
        listed = actor in p2.actors.list_ids("LostTally")
        exists = p2.actors.exists(AC, actor)
        if listed != exists:
            orphans.append((i, listed, exists))
        # The actor existed when the round began, and only this round's delete removes it:
        # if the creator made it anew, the delete came first and the new actor must hold its
        # acknowledged increment; if the creator found it, the delete came last and it is gone.
        if outcome["created"]:
            if not exists or p2.value(actor) != outcome["n"]:
                lost.append((i, outcome, exists))
        elif exists:
            lost.append((i, outcome, "an acknowledged delete was undone"))
    assert orphans == [] and lost == []


def test_a_delete_still_cleaning_up_never_wipes_the_actor_created_after_it(
    two: tuple[Process, Process],
) -> None:
    """The deterministic form of the race above: the moment the deleting runtime's first
    commit has removed the actor, the other runtime re-creates it and makes a keyed call; only
    then does the deletion go on with the rest of the old actor's keys (600 idempotency
    records, more than one commit holds)."""
    p1, p2 = two
    assert p1.create("slow")
    for i in range(600):
        p1.incr("slow", key=f"old{i}")
    storage = p2.workflows.storage
    real_commit = storage.commit
    version_key = "act/LostTally/slow/v"
    acknowledged: list[int] = []

    async def commit(batch: Any) -> bool:
        applied = await real_commit(batch)
        removes = version_key in batch.deletes or b"deleted" in batch.puts.get(version_key, b"")
        if applied and removes and not acknowledged:
            # Runs on p1's own loop; p2's loop (this thread) only waits for it.
            assert p1.create("slow")
            acknowledged.append(p1.incr("slow", key="new-1", tag="new"))
        return applied

    storage.commit = commit  # type: ignore[method-assign]
    try:
        p2.delete("slow")
    finally:
        storage.commit = real_commit  # type: ignore[method-assign]
    assert acknowledged == [1]
    assert "slow" in p1.actors.list_ids("LostTally")
    assert p1.state("slow") == {"n": 1, "seen": ["new"]}
    assert p2.incr("slow", key="new-1", tag="new") == 1  # its idempotency record survived too
    assert p2.incr("slow", key="old5") == 2  # the old actor's records did not


def test_a_tick_claimed_before_a_delete_never_fires_on_the_recreated_actor(
    quiet: tuple[Process, Process],
) -> None:
    p1, p2 = quiet
    assert p1.actors.create(LOG, "x", (), {})
    p1.actors.submit(LOG, "x", "arm", ("old", 0), {}, None).result(30)
    time.sleep(0.01)
    (claim,) = p1.run(p1.actors.scheduler.claim(["LostLog/x/t"]))  # p1's scheduler takes the due tick
    p2.actors.delete(LOG, "x")
    assert p2.actors.create(LOG, "x", (), {})
    p2.actors.submit(LOG, "x", "arm", ("new", 3600), {}, None).result(30)
    assert p1.run(p1.actors.scheduler.fire(claim)) == "skipped"
    assert p2.actors.state(LOG, "x").state() == {"log": []}
    timers = p2.run(p2.actors.scheduler.timers_of("LostLog", "x"))
    assert [t.args for t in timers.values()] == [["new"]]


def test_an_event_accepted_before_a_delete_is_never_applied_to_the_recreated_actor(
    quiet: tuple[Process, Process],
) -> None:
    p1, p2 = quiet
    assert p1.actors.create(LOG, "x", (), {})
    slow = p1.actors.submit(LOG, "x", "slow", (), {}, None)  # p1 holds x's lock for a second
    time.sleep(0.1)
    # Accepted (202): stored, and p1's delivery has read it and waits for the lock.
    assert p1.run(p1.actors.post_event(LOG, "x", "ping", "old-event", "e1", False)) == (False, None)
    time.sleep(0.1)
    p2.actors.delete(LOG, "x")  # removes the pending event
    assert p2.actors.create(LOG, "x", (), {})
    assert slow.result(30) == "slow"
    time.sleep(0.5)
    assert p2.actors.state(LOG, "x").state() == {"log": []}


def test_a_failing_event_posted_twice_runs_and_is_recorded_once(quiet: tuple[Process, Process]) -> None:
    p1, p2 = quiet
    assert p1.actors.create(LOG, "x", (), {})
    slow = p1.actors.submit(LOG, "x", "slow", (), {}, None)
    time.sleep(0.1)
    for p in (p1, p2, p1):  # the client retries its post; another process recovers it too
        p.run(p.actors.post_event(LOG, "x", "bad", "b", "e1", False))
    (entry,) = p2.run(p2.actors.storage.list_keys("act/LostLog/x/out/"))
    p2.run(p2.actors.outbox.deliver("LostLog", "x", entry.rsplit("/", 1)[-1]))  # p2 gets it first
    slow.result(30)
    time.sleep(0.5)
    failures = p1.run(p1.actors.outbox.failures_of("LostLog", "x"))
    assert [(f["event_id"], f["error"]) for f in failures] == [("e1", "ValueError: no")]
    assert p1.actors.state(LOG, "x").state() == {"log": []}


@pytest.mark.parametrize("other", ["trims", "recreates"])
def test_trimming_never_deletes_a_record_written_since_it_looked(
    two: tuple[Process, Process], other: str
) -> None:
    """p1's trim has read that key K's record expired; before it commits, p2 trims too (or
    deletes and re-creates the actor) and records K again for a new call. p1's trim must not
    delete that fresh record: a retry of the new call would then apply twice."""
    p1, p2 = two
    for p in (p1, p2):
        p.actors.config.idempotency_ttl = 0.5
    assert p1.create("t")
    assert p1.incr("t", key="K") == 1
    time.sleep(0.7)
    storage = p1.workflows.storage
    real_commit = storage.commit
    interleaved: list[int] = []

    async def commit(batch: Any) -> bool:
        if not interleaved and any("/idem/" in k for k in batch.deletes):
            if other == "trims":
                p2.run(p2.actors.turns.window.trim("LostTally", "t"))
            else:
                p2.delete("t")
                assert p2.create("t")
            interleaved.append(p2.incr("t", key="K"))
        return await real_commit(batch)

    storage.commit = commit  # type: ignore[method-assign]
    try:
        p1.run(p1.actors.turns.window.trim("LostTally", "t"))
    finally:
        storage.commit = real_commit  # type: ignore[method-assign]
    new = interleaved[0]
    assert p2.incr("t", key="K") == new  # the retry, inside its window: replayed
    assert p2.value("t") == new


def test_a_timer_failure_recorded_during_a_delete_leaves_nothing_behind(
    quiet: tuple[Process, Process],
) -> None:
    from actorflow.actor._timers import MAX_ATTEMPTS

    p1, p2 = quiet
    assert p1.actors.create(LOG, "x", (), {})
    p1.actors.submit(LOG, "x", "arm", ("x", 0), {}, None).result(30)
    p1.run(p1.actors.scheduler.set_timer(LOG, "x", "t", method="fail_timer", after=0))
    time.sleep(0.01)
    (claim,) = p1.run(p1.actors.scheduler.claim(["LostLog/x/t"]))
    claim.timer.attempts = MAX_ATTEMPTS - 1  # this firing is the tick's last attempt
    storage = p2.workflows.storage
    real_commit = storage.commit
    outcomes: list[str] = []

    async def commit(batch: Any) -> bool:
        if not outcomes and b"deleted" in batch.puts.get("act/LostLog/x/v", b""):
            outcomes.append(p1.run(p1.actors.scheduler.fire(claim)))  # lands between listing and tombstone
        return await real_commit(batch)

    storage.commit = commit  # type: ignore[method-assign]
    try:
        p2.actors.delete(LOG, "x")
    finally:
        storage.commit = real_commit  # type: ignore[method-assign]
    assert outcomes == ["failed"]
    assert p2.run(p2.workflows.storage.list_keys("act/LostLog/x/timerfail/")) == []
