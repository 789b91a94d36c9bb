"""Virtual actors in embedded mode, on both storage backends: one process, real storage."""

from __future__ import annotations

import asyncio
import itertools
import pathlib
import threading
import time
from typing import Any

import pytest

from actorflow import workflow
from actorflow.actor import actor_runtime, lookup
from actorflow.engine import default_runtime
from actorflow.errors import (
    ActorArgumentsError,
    ActorError,
    ActorMethodNotFoundError,
    ActorNotFoundError,
    ActorStateError,
    ActorTypeNotFoundError,
    ConfigError,
    IdempotencyKeyReusedError,
    IdempotencyWindowFullError,
    InvalidIdError,
    WorkflowNotFoundError,
)

pytestmark = pytest.mark.usefixtures("wf_storage")


@workflow.virtual_actor
class Counter:
    def __init__(self, start: int = 0) -> None:
        self.count = start
        self.log: list[str] = []

    def incr(self) -> int:
        self.count += 1
        return self.count

    def add(self, n: int) -> int:
        self.count += n
        return self.count

    def fail_after_change(self) -> None:
        self.count = -1000
        self.log.append("should vanish")
        raise ValueError("changed my mind")

    @workflow.virtual_actor.readonly
    def value(self) -> int:
        return self.count

    @workflow.virtual_actor.readonly
    def sneaky(self) -> int:
        self.count += 100
        return self.count

    @workflow.virtual_actor.readonly
    def slow_value(self) -> int:
        time.sleep(1)
        return self.count

    @workflow.virtual_actor.readonly
    def bad_readonly(self) -> Any:
        return double.step(self.count)


@workflow.step
def double(x: int) -> int:
    return 2 * x


def snapshot(handle: Any) -> Any:
    return actor_runtime(default_runtime()).state(handle.actor_class, handle.actor_id)


def test_get_or_create_get_list_delete() -> None:
    c = Counter.get_or_create("c1", 5)
    assert c.value.run() == 5
    again = Counter.get_or_create("c1", 99)  # init arguments are ignored when it exists
    assert again.value.run() == 5
    assert Counter.get("c1").incr.run() == 6
    Counter.get("nope")  # calls activate a Counter: a handle, nothing read or stored
    assert not Counter.exists("nope")
    with pytest.raises(ActorNotFoundError, match="StrictTap/nope: StrictTap is declared with activate=False"):
        StrictTap.get("nope")
    Counter.get_or_create("c2")
    assert Counter.list_ids() == ["c1", "c2"]
    assert Counter.list_ids(start_after="c1") == ["c2"]
    c.add.options(idempotency_key="k").run(1)
    Counter.delete("c1")
    Counter.delete("c1")  # idempotent
    assert Counter.list_ids() == ["c2"]
    with pytest.raises(ActorNotFoundError):
        c.incr.run()
    # A new actor with the same id starts fresh: no old idempotency records survive.
    fresh = Counter.get_or_create("c1", 0)
    assert fresh.add.options(idempotency_key="k").run(1) == 1


def test_raising_method_leaves_state_and_version_unchanged() -> None:
    c = Counter.get_or_create("raiser", 7)
    c.incr.run()
    before = snapshot(c)
    with pytest.raises(ValueError, match="changed my mind"):
        c.fail_after_change.run()
    after = snapshot(c)
    assert (after.version, after.data) == (before.version, before.data)
    assert c.value.run() == 8


def test_readonly_sees_committed_state_and_discards_changes() -> None:
    c = Counter.get_or_create("ro", 42)
    assert c.sneaky.run() == 142
    assert c.value.run() == 42
    v = snapshot(c).version
    assert [f.result() for f in [c.sneaky.run_async() for _ in range(10)]] == [142] * 10
    assert snapshot(c).version == v


def test_ten_concurrent_slow_readonly_calls() -> None:
    c = Counter.get_or_create("slow", 3)
    c.incr.run()
    start = time.monotonic()
    calls = [c.slow_value.run_async() for _ in range(10)]
    assert [call.result(timeout=30) for call in calls] == [4] * 10
    assert time.monotonic() - start < 5


def test_run_async_calls_from_one_thread_run_in_submission_order() -> None:
    c = Counter.get_or_create("order", 0)
    calls = [c.add.run_async(i) for i in range(1, 50)]
    assert [call.result(timeout=60) for call in calls] == list(itertools.accumulate(range(1, 50)))

    async def awaited() -> list[int]:
        return list(await asyncio.gather(*[c.add.run_async(1) for _ in range(5)]))

    assert asyncio.run(awaited()) == [1226, 1227, 1228, 1229, 1230]


def test_concurrent_writers_in_one_process_lose_nothing() -> None:
    c = Counter.get_or_create("threads", 0)
    results: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            r = c.incr.run()
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == list(range(1, 201))
    assert c.value.run() == 200


def test_idempotency_key_returns_recorded_result_and_changes_nothing() -> None:
    c = Counter.get_or_create("idem", 0)
    assert c.add.options(idempotency_key="pay-1").run(10) == 10
    v = snapshot(c).version
    assert c.add.options(idempotency_key="pay-1").run(10) == 10
    assert snapshot(c).version == v
    assert c.add.options(idempotency_key="pay/2 with spaces").run(1) == 11
    with pytest.raises(ConfigError):
        c.add.options(idempotency_key="x" * 300)


def test_a_reused_key_with_other_arguments_or_method_is_refused_and_changes_nothing() -> None:
    c = Counter.get_or_create("reuse", 0)
    assert c.add.options(idempotency_key="k").run(10) == 10
    v = snapshot(c).version
    with pytest.raises(IdempotencyKeyReusedError, match="other arguments"):
        c.add.options(idempotency_key="k").run(999)
    with pytest.raises(IdempotencyKeyReusedError, match="method 'add'"):
        c.incr.options(idempotency_key="k").run()
    assert snapshot(c).version == v and c.value.run() == 10
    assert c.add.options(idempotency_key="k").run(10) == 10  # the true repeat still replays


def test_idempotency_records_are_kept_for_their_whole_window() -> None:
    """A retry after 1,100 other keyed calls is still recognised (the old bound kept 1,000)."""
    c = Counter.get_or_create("window", 0)
    for i in range(1101):
        c.add.options(idempotency_key=f"w{i}").run(1)
    assert c.add.options(idempotency_key="w0").run(1) == 1
    assert c.value.run() == 1101


def test_a_full_idempotency_window_refuses_new_keys_and_forgets_nothing_early() -> None:
    """Records expire by age only; an actor holding as many as it may keep refuses new keyed
    calls (changing nothing) instead of forgetting a record a retry may still need."""
    rt = actor_runtime(default_runtime())
    old = rt.config.idempotency_records, rt.config.idempotency_ttl
    rt.config.idempotency_records = 150
    try:
        c = Counter.get_or_create("retention", 0)
        refused = None
        for i in range(400):  # the window is counted every TRIM_EVERY keyed commits
            try:
                c.add.options(idempotency_key=f"w{i}").run(1)
            except IdempotencyWindowFullError as exc:
                refused = i
                assert exc.retry_after >= 1.0
                break
        assert refused is not None and 150 <= refused <= 250
        before = c.value.run()
        assert before == refused
        with pytest.raises(IdempotencyWindowFullError):
            c.add.options(idempotency_key="one-more").run(1)
        assert c.value.run() == before
        assert c.add.options(idempotency_key="w0").run(1) == 1  # recorded keys still replay
        assert c.add.run(1) == before + 1  # unkeyed calls are not limited
        # Once the records are older than the window they go, and keyed calls work again.
        rt.config.idempotency_ttl = 0.0
        time.sleep(1.1)
        assert c.add.options(idempotency_key="after").run(1) == before + 2
        keys = asyncio.run_coroutine_threadsafe(
            rt.storage.list_keys("act/Counter/retention/idem/"), rt.loop
        ).result()
        assert len(keys) <= 1
    finally:
        rt.config.idempotency_records, rt.config.idempotency_ttl = old


@pytest.mark.usefixtures("ray_session")
def test_sub_workflow_runs_outside_the_actor_lock(tmp_path: pathlib.Path) -> None:
    gate = tmp_path / "gate"

    @workflow.step
    def wait_then_report(n: int) -> str:
        while not gate.exists():
            time.sleep(0.02)
        return f"report for {n}"

    @workflow.virtual_actor
    class Reporter:
        def __init__(self) -> None:
            self.requests = 0

        def start_report(self) -> Any:
            self.requests += 1  # commits together with the launch
            return wait_then_report.step(self.requests)

        def ping(self) -> str:
            return "pong"

        @workflow.virtual_actor.readonly
        def count(self) -> int:
            return self.requests

    r = Reporter.get_or_create("r1")
    call = r.start_report.run_async()
    deadline = time.monotonic() + 60
    while r.count.run() != 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert r.ping.run() == "pong"  # the actor serves writers while the workflow waits
    assert not call.done()
    wid = "Reporter:r1:2"
    assert workflow.get_status(wid) == workflow.WorkflowStatus.RUNNING
    gate.touch()
    assert call.result(timeout=60) == "report for 1"
    assert workflow.get_output(wid) == "report for 1"
    Reporter.delete("r1")  # the actor owns its finished sub-workflows
    with pytest.raises(WorkflowNotFoundError):
        workflow.get_status(wid)


@workflow.step
def flow_report(who: str, n: int) -> str:
    return f"{who} #{n}"


@workflow.virtual_actor(name="Flow")
class Flow:
    def __init__(self, who: str = "") -> None:
        self.who = who
        self.runs = 0

    def report(self) -> Any:
        self.runs += 1
        return flow_report.step(self.who, self.runs)


@pytest.mark.usefixtures("ray_session")
def test_deleting_an_actor_deletes_exactly_its_own_sub_workflows() -> None:
    """Actor ids may hold ':', so ``Flow/p``'s sub-workflow ids (``Flow:p:2``) share a prefix
    with ``Flow/p:q``'s (``Flow:p:q:2``); deleting ``p`` must leave ``p:q``'s alone, and a
    keyed replay of ``p:q``'s call must still answer. A re-created ``p`` continues its
    version numbers, so its sub-workflow ids never collide with the deleted actor's."""
    p, pq = Flow.get_or_create("p", "p"), Flow.get_or_create("p:q", "pq")
    assert p.report.run() == "p #1"
    assert pq.report.options(idempotency_key="r1").run() == "pq #1"
    assert workflow.get_status("Flow:p:2") == workflow.WorkflowStatus.SUCCESSFUL
    Flow.delete("p")
    with pytest.raises(WorkflowNotFoundError):
        workflow.get_status("Flow:p:2")
    assert workflow.get_output("Flow:p:q:2") == "pq #1"
    assert pq.report.options(idempotency_key="r1").run() == "pq #1"  # replayed, not a 404
    again = Flow.get_or_create("p", "again")
    assert again.report.run() == "again #1"
    assert workflow.get_output("Flow:p:4") == "again #1"  # created at 3, after the tombstone at 2


@pytest.mark.usefixtures("ray_session")
def test_actor_step_calls_the_actor_exactly_once() -> None:
    c = Counter.get_or_create("stepped", 0)
    assert add_one_twice.step(c.incr.step()).run(workflow_id="actor-step") == 3
    assert c.value.run() == 1
    # Simulate a crash after the actor call but before its step was checkpointed: drop the
    # checkpoint and resume. The step runs again, the actor does not.
    rt = default_runtime()
    asyncio.run_coroutine_threadsafe(rt.storage.delete("wf/actor-step/s/Counter.incr"), rt.loop).result()
    asyncio.run_coroutine_threadsafe(rt.storage.delete("wf/actor-step/s/add_one_twice"), rt.loop).result()
    meta = asyncio.run_coroutine_threadsafe(rt.engine.store.read_head("actor-step"), rt.loop).result()[0]
    meta["status"] = "FAILED"
    from actorflow.storage import Batch

    rt.blocking(rt.storage.commit(rt.engine.store.put_meta(Batch(), "actor-step", meta)))
    assert workflow.resume("actor-step") == 3
    assert c.value.run() == 1


@workflow.step
def add_one_twice(x: int) -> int:
    return x + 2


def test_sends_are_delivered_after_commit_exactly_once() -> None:
    @workflow.virtual_actor
    class Account:
        def __init__(self, balance: int = 0) -> None:
            self.balance = balance

        def deposit(self, amount: int) -> int:
            self.balance += amount
            return self.balance

        def transfer(self, to: Any, amount: int) -> int:
            self.balance -= amount
            workflow.send(to.deposit, amount)
            if self.balance < 0:
                raise ValueError("insufficient funds")  # nothing is sent either
            return self.balance

        @workflow.virtual_actor.readonly
        def read(self) -> int:
            return self.balance

    a = Account.get_or_create("a", 100)
    b = Account.get_or_create("b", 0)
    assert a.transfer.options(idempotency_key="t1").run(b, 30) == 70
    assert a.transfer.options(idempotency_key="t1").run(b, 30) == 70
    with pytest.raises(ValueError):
        a.transfer.run(b, 500)
    deadline = time.monotonic() + 30
    while b.read.run() != 30:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)
    assert (a.read.run(), b.read.run()) == (70, 30)
    with pytest.raises(ActorError, match="inside actor methods"):
        workflow.send(b.deposit, 1)


def test_state_without_getstate_uses_dict_and_pickles_when_not_json() -> None:
    @workflow.virtual_actor
    class Shapes:
        def __init__(self) -> None:
            self.points = {(0, 0): "origin"}  # tuple keys are not JSON

        def move(self) -> dict[tuple[int, int], str]:
            self.points[(1, 1)] = "moved"
            return self.points

    s = Shapes.get_or_create("s")
    assert s.move.run() == {(0, 0): "origin", (1, 1): "moved"}
    assert snapshot(s).encoding == "pickle"
    assert snapshot(Counter.get_or_create("json-state")).encoding == "json"


def test_schema_migration_hook() -> None:
    @workflow.virtual_actor(name="Profile")
    class ProfileV1:
        def __init__(self) -> None:
            self.name = "ada"

        def touch(self) -> None:
            pass

    p = ProfileV1.get_or_create("p1")
    p.touch.run()

    @workflow.virtual_actor(name="Profile", schema_version=2)
    class ProfileV2:
        def __init__(self) -> None:
            self.first, self.last = "", ""

        @staticmethod
        def __migrate__(state: dict[str, Any], version: int) -> dict[str, Any]:
            assert version == 1
            return {"first": state["name"], "last": "lovelace"}

        def full(self) -> str:
            return f"{self.first} {self.last}"

    assert ProfileV2.get("p1").full.run() == "ada lovelace"
    assert snapshot(ProfileV2.get("p1")).schema == 2


# ---------------------------------------------------------------- bad input changes nothing
def test_bad_input_gets_clear_errors_and_changes_nothing() -> None:
    c = Counter.get_or_create("strict", 1)
    v = snapshot(c).version
    with pytest.raises(ActorMethodNotFoundError, match="nosuch"):
        c.nosuch.run()
    with pytest.raises(ActorMethodNotFoundError):
        c._private  # noqa: B018
    with pytest.raises(ActorArgumentsError, match=r"Counter\.add"):
        c.add.run()
    with pytest.raises(ActorArgumentsError):
        c.add.run(1, 2, 3)
    with pytest.raises(ActorArgumentsError, match="__init__"):
        Counter.get_or_create("strict-2", 1, 2, 3)
    with pytest.raises(ActorError, match="cannot return a workflow step"):
        c.bad_readonly.run()
    with pytest.raises(TypeError, match=r"\.run\("):
        c.incr()
    with pytest.raises(TypeError, match="get_or_create"):
        Counter()
    assert snapshot(c).version == v
    assert Counter.list_ids() == ["strict"]
    with pytest.raises(ActorTypeNotFoundError):
        lookup("NoSuchType")


@pytest.mark.parametrize("bad", ["", ".", "..", "x" * 257, "a/b", "sp ace", "é"])
def test_bad_actor_ids(bad: str) -> None:
    with pytest.raises(InvalidIdError):
        Counter.get_or_create(bad)
    assert Counter.list_ids() == []


def test_unencodable_state_names_actor_and_attribute() -> None:
    @workflow.virtual_actor
    class Holder:
        def __init__(self) -> None:
            self.value = 1

        def grab_lock(self) -> None:
            self.lock = threading.Lock()

    h = Holder.get_or_create("h1")
    v = snapshot(h).version
    with pytest.raises(ActorStateError, match=r"Holder/h1.*'lock'"):
        h.grab_lock.run()
    assert snapshot(h).version == v
    with pytest.raises(ActorStateError, match="'lock'"):

        @workflow.virtual_actor
        class Born:
            def __init__(self) -> None:
                self.lock = threading.Lock()

        Born.get_or_create("b1")
    assert Born.list_ids() == []


def test_half_defined_state_protocol_is_rejected() -> None:
    with pytest.raises(ConfigError, match="__getstate__"):

        @workflow.virtual_actor
        class Half:
            def __getstate__(self) -> int:
                return 1


@pytest.mark.usefixtures("ray_session")
def test_run_async_result_as_object_ref_for_ray_get() -> None:
    import ray

    c = Counter.get_or_create("ray-get", 0)
    refs = [c.add.run_async(i).as_object_ref() for i in range(1, 6)]
    assert ray.get(refs, timeout=60) == [1, 3, 6, 10, 15]
    with pytest.raises(ValueError, match="changed my mind"):
        ray.get(c.fail_after_change.run_async().as_object_ref(), timeout=60)


@workflow.virtual_actor
class Inbox:
    def __init__(self) -> None:
        self.got: list[int] = []

    def push(self, n: int) -> int:
        self.got.append(n)
        return len(self.got)

    def forward(self, to: Any, n: int) -> None:
        workflow.send(to.push, n)

    @workflow.virtual_actor.readonly
    def items(self) -> list[int]:
        return self.got


def test_messages_that_fail_for_infrastructure_reasons_stay_in_the_outbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt = actor_runtime(default_runtime())
    sender, receiver = Inbox.get_or_create("sender"), Inbox.get_or_create("receiver")
    real_call = rt.turns.call
    failures = []

    async def flaky_call(ac: Any, actor_id: str, method: str, *rest: Any, **options: Any) -> Any:
        if method == "push" and not failures:
            failures.append(1)
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        return await real_call(ac, actor_id, method, *rest, **options)

    monkeypatch.setattr(rt.turns, "call", flaky_call)
    monkeypatch.setattr(rt.config, "outbox_grace", 0.0)
    monkeypatch.setattr(rt.config, "outbox_retry", 0.3)  # the next pass, 0.3 s on (not 5 s)
    sender.forward.run(receiver, 7)
    deadline = time.monotonic() + 30
    while receiver.items.run() != [7]:  # the recovery loop retries it
        assert time.monotonic() < deadline, "the message was lost"
        time.sleep(0.05)
    assert failures == [1]
    time.sleep(1.5)  # more recovery passes must not deliver it twice
    assert receiver.items.run() == [7]
    assert rt.workflows.blocking(rt.outbox.size()) == 0


def test_idle_actors_are_passivated_and_reload_from_storage() -> None:
    rt = actor_runtime(default_runtime())
    c = Counter.get_or_create("idle", 0)
    c.incr.run()
    assert "Counter/idle" in rt.cache
    old = rt.config.idle_seconds
    rt.config.idle_seconds = 0.2
    try:
        time.sleep(0.3)
        assert rt.cache.passivate_idle() >= 1
        assert "Counter/idle" not in rt.cache
        assert c.incr.run() == 2  # reloaded from storage, nothing lost
    finally:
        rt.config.idle_seconds = old


@workflow.virtual_actor(name="Tap")
class Tap:
    """No ``__init__`` arguments: a call activates it."""

    def __init__(self) -> None:
        self.drops = 0
        self.inits = 1

    def drip(self) -> int:
        self.drops += 1
        return self.drops

    @workflow.virtual_actor.readonly
    def seen(self) -> tuple[int, int]:
        return self.drops, self.inits


@workflow.virtual_actor(name="StrictTap", activate=False)
class StrictTap:
    def drip(self) -> int:
        return 1


def test_two_runtimes_racing_on_a_fresh_id_create_it_once(storage_url: str) -> None:
    """Two runtimes (two caches, one storage) call an id nobody created, 40 times each, at once:
    the actor is created once (one __init__ stored, version numbers from 1) and no call is lost."""
    from actorflow.engine import WorkflowRuntime

    second = WorkflowRuntime(storage_url)
    try:
        runtimes = [actor_runtime(default_runtime()), actor_runtime(second)]
        ac = lookup("Tap")
        results: list[int] = []
        barrier = threading.Barrier(2)

        def caller(rt: Any) -> None:
            barrier.wait()
            for _ in range(40):
                results.append(rt.submit(ac, "fresh", "drip", (), {}, None).result(timeout=60))

        threads = [threading.Thread(target=caller, args=(rt,)) for rt in runtimes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert sorted(results) == list(range(1, 81))
        assert runtimes[1].submit(ac, "fresh", "seen", (), {}, None).result(timeout=60) == (80, 1)
        state = runtimes[0].state(ac, "fresh")
        assert state.version == 80  # one commit per call: the first one created it
        assert Tap.list_ids() == ["fresh"]
    finally:
        second.close()
