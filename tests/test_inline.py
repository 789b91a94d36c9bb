"""Turns that never suspend: eager starts, plain methods on the loop's thread, inline SQLite.

What must hold: a method trusted on the loop's thread still behaves exactly as in a worker
thread (state, errors, calls to other actors, ``asyncio.run``), leaves the loop's thread as soon
as it runs slow or blocks, and a blocking call it makes on a new branch neither deadlocks nor
happens twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import pathlib
import threading
import time
from typing import Any

import pytest

from actorflow import _inline, workflow
from actorflow._aio import start_now
from actorflow._inline import INLINE_AFTER, Pace
from actorflow.actor import actor_runtime
from actorflow.storage.sqlite import SQLiteStorage
from actorflow.workflow._runtime import default_runtime
from deployments.backend import LocalBackend

LOOP_THREAD = "actorflow-loop"
SHARED_POOL = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="test-shared")
TEST_LIMIT = 0.05  # generous, so a busy test machine does not keep a trivial method off the loop


# ----------------------------------------------------------------------------- start_now
async def _no_suspension(x: int) -> int:
    return x + 1


def test_start_now_finishes_a_coroutine_that_never_suspends_without_the_loop() -> None:
    async def main() -> None:
        turned: list[int] = []
        asyncio.get_running_loop().call_soon(turned.append, 1)
        fut = start_now(_no_suspension(1))
        assert fut.done() and fut.result() == 2
        assert await asyncio.shield(fut) == 2
        assert turned == []  # nothing gave the loop a turn

    asyncio.run(main())


def test_start_now_hands_a_suspended_coroutine_to_a_task_that_outlives_its_caller() -> None:
    steps: list[str] = []
    release = asyncio.Event

    async def main() -> None:
        gate = release()

        async def work() -> str:
            steps.append("started")
            await gate.wait()
            steps.append("finished")
            return "done"

        fut = start_now(work())
        assert steps == ["started"] and not fut.done()
        waiter = asyncio.ensure_future(asyncio.shield(fut))
        await asyncio.sleep(0)
        waiter.cancel()  # the caller goes away; the work must not
        gate.set()
        assert await asyncio.wait_for(fut, 5) == "done"
        assert steps == ["started", "finished"]
        assert waiter.cancelled()

    asyncio.run(main())


def test_start_now_passes_exceptions_and_throws_into_the_coroutine() -> None:
    async def main() -> None:
        async def boom() -> None:
            raise KeyError("early")

        fut = start_now(boom())
        assert fut.done()
        with pytest.raises(KeyError, match="early"):
            await fut

        cleaned: list[str] = []

        async def interrupted() -> None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cleaned.append("cancelled inside")
                raise

        task = start_now(interrupted())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned == ["cancelled inside"]

    asyncio.run(main())


def test_start_now_runs_the_coroutine_as_its_own_task_from_its_first_line() -> None:
    async def main() -> None:
        caller = asyncio.current_task()
        seen: list[asyncio.Task[Any] | None] = []

        async def body() -> None:
            seen.append(asyncio.current_task())
            await asyncio.sleep(0)
            seen.append(asyncio.current_task())

        fut = start_now(body())
        assert asyncio.current_task() is caller  # the caller is the current task again
        await fut
        assert seen[0] is seen[1] is fut and fut is not caller

        # A timeout inside the coroutine expires on the coroutine, never on its caller.
        async def slow() -> str:
            try:
                async with asyncio.timeout(0.01):
                    await asyncio.sleep(30)
            except TimeoutError:
                return "timed out inside"
            return "not reached"

        assert await asyncio.wait_for(start_now(slow()), 5) == "timed out inside"
        assert caller is not None and caller.cancelling() == 0

    asyncio.run(main())


def test_start_now_cancelled_before_its_task_ran_still_cancels_the_coroutine() -> None:
    async def main() -> None:
        seen: list[str] = []

        async def body() -> None:
            seen.append("started")
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                seen.append("cancelled inside")
                raise
            finally:
                seen.append("cleaned up")

        task = start_now(body())
        task.cancel()  # before the loop ran a single step of the task
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == ["started", "cancelled inside", "cleaned up"]

        # What the coroutine waits for is cancelled with it, as it would be in any task.
        ran: list[str] = []

        async def child() -> None:
            await asyncio.sleep(0.05)
            ran.append("child finished")

        async def parent() -> None:
            await asyncio.ensure_future(child())

        task = start_now(parent())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)
        assert ran == []

    asyncio.run(main())


def test_start_now_reports_an_early_failure_once() -> None:
    reported: list[Any] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reported.append(ctx))

        async def boom() -> None:
            raise ValueError("early")

        fut = start_now(boom())
        with pytest.raises(ValueError):
            await fut
        for _ in range(3):
            await asyncio.sleep(0)

    asyncio.run(main())
    import gc

    gc.collect()
    assert reported == []  # no "exception was never retrieved" from the task behind it


def test_start_now_runs_in_a_copy_of_the_callers_context() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def main() -> None:
        var.set("caller")

        async def change() -> str:
            seen = var.get()
            var.set("inside")
            await asyncio.sleep(0)
            return seen + "/" + var.get()

        assert await start_now(change()) == "caller/inside"
        assert var.get() == "caller"

    asyncio.run(main())


# ----------------------------------------------------------------------------- Pace
def test_pace_trusts_after_fast_runs_and_backs_off_after_a_slow_one() -> None:
    pace = Pace()
    for _ in range(INLINE_AFTER - 1):
        pace.record(0.0001)
    assert not pace.inline
    pace.record(0.0001)
    assert pace.inline
    pace.record(0.5)  # slow on the loop: back to the pool, and four times the proof needed
    assert not pace.inline and pace.needed == 4 * INLINE_AFTER
    for _ in range(4 * INLINE_AFTER - 1):
        pace.record(0.0001)
    pace.record(0.5)  # one slow run in the pool restarts the count
    assert not pace.inline and pace.fast_runs == 0
    blocked = Pace(inline=True, blocks=True)
    blocked.record(0.0001)
    assert not blocked.inline


# ----------------------------------------------------------------------------- the runtime
@workflow.virtual_actor
class Probe:
    def __init__(self) -> None:
        self.count = 0
        self.threads: list[str] = []

    def bump(self, sleep: float = 0.0, fail: bool = False, other: str | None = None) -> str:
        """Counts, and says which thread ran it; optionally runs slow, raises, or calls
        another actor and waits for it."""
        self.count += 1
        name = threading.current_thread().name
        self.threads.append(name)
        if sleep:
            time.sleep(sleep)
        if other is not None:
            Probe.get_or_create(other).bump.run()
        if fail:
            raise ValueError("asked to fail")
        return name

    def use_asyncio_run(self) -> int:
        async def answer() -> int:
            await asyncio.sleep(0)
            return 42

        self.count += 1
        return asyncio.run(answer())

    def fan_out(self, others: list[str]) -> list[str]:
        """Calls other actors from threads of its own and waits for them."""
        self.count += 1
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda o: Probe.get_or_create(o).bump.run(), others))

    def via_pool(self, others: list[str]) -> list[str]:
        """Hands calls to a pool whose threads already existed, and waits for them."""
        self.count += 1
        return list(SHARED_POOL.map(lambda o: Probe.get_or_create(o).bump.run(), others))

    def stop_early(self) -> None:
        self.count += 1
        raise StopIteration

    @workflow.virtual_actor.readonly
    def value(self) -> int:
        return self.count


@pytest.fixture
def runtime(wf_storage: str) -> Any:
    rt = actor_runtime(default_runtime())
    rt.inline_limit = TEST_LIMIT
    return rt


def _promote(p: Any) -> list[str]:
    return [p.bump.run() for _ in range(INLINE_AFTER + 2)]


def test_a_fast_method_moves_to_the_loop_thread_and_back_when_slow(runtime: Any) -> None:
    p = Probe.get_or_create("fast")
    threads = _promote(p)
    assert all(t.startswith("actorflow-actor") for t in threads[:INLINE_AFTER])
    assert threads[INLINE_AFTER:] == [LOOP_THREAD, LOOP_THREAD]
    assert LocalBackend(default_runtime(), runtime).metrics()["actorflow_methods_on_loop"] == 1
    assert p.bump.run(sleep=TEST_LIMIT * 2) == LOOP_THREAD  # trusted, so it ran there...
    assert p.bump.run().startswith("actorflow-actor")  # ...and is not any more
    assert p.value.run() == INLINE_AFTER + 4
    assert LocalBackend(default_runtime(), runtime).metrics()["actorflow_methods_on_loop"] == 0


def test_errors_and_state_are_the_same_on_the_loop_thread(runtime: Any) -> None:
    p = Probe.get_or_create("errors")
    _promote(p)
    with pytest.raises(ValueError, match="asked to fail"):
        p.bump.run(fail=True)
    assert p.value.run() == INLINE_AFTER + 2  # the failed turn changed nothing
    assert p.use_asyncio_run.run() == 42  # works whichever thread it runs on
    for _ in range(INLINE_AFTER + 1):
        p.use_asyncio_run.run()
    assert runtime._paces[("Probe", "use_asyncio_run")].inline
    assert p.use_asyncio_run.run() == 42


def test_a_blocking_call_on_a_new_branch_moves_the_turn_to_the_pool_once(runtime: Any) -> None:
    p = Probe.get_or_create("caller")
    Probe.get_or_create("callee")
    _promote(p)
    assert runtime._paces[("Probe", "bump")].inline
    # On the loop's thread this would wait for the loop itself; it must run in the pool instead.
    thread = p.bump.run(other="callee")
    assert thread.startswith("actorflow-actor")
    assert Probe.get_or_create("callee").value.run() == 1  # called once, not twice
    assert p.value.run() == INLINE_AFTER + 3
    snap = runtime.state(Probe, "caller")
    assert snap.state()["threads"][-1] == thread  # the kept run is the pool's, not the stopped one
    assert not runtime._paces[("Probe", "bump")].inline  # and it stays in the pool
    assert p.bump.run().startswith("actorflow-actor")


def test_threads_a_method_on_the_loop_thread_starts_and_waits_for_do_not_deadlock(runtime: Any) -> None:
    p = Probe.get_or_create("fan")
    for _ in range(INLINE_AFTER + 1):
        assert p.fan_out.run([]) == []  # nothing to call: fast, so it moves to the loop's thread
    assert runtime._paces[("Probe", "fan_out")].inline
    # Now its threads call actors while it holds the loop and waits for them.
    results = p.fan_out.run(["fan-a", "fan-b"])
    assert all(t.startswith("actorflow-actor") for t in results)
    assert Probe.get_or_create("fan-a").value.run() == 1  # once each: the refused calls did nothing
    assert Probe.get_or_create("fan-b").value.run() == 1
    assert p.value.run() == INLINE_AFTER + 2
    assert runtime._paces[("Probe", "fan_out")].blocks  # and it stays in the pool
    assert len(p.fan_out.run(["fan-a"])) == 1
    assert Probe.get_or_create("fan-a").value.run() == 2


def test_a_pool_that_existed_before_the_method_does_not_deadlock_either(
    runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_inline, "PATIENCE", 0.2)
    p = Probe.get_or_create("pooled")
    list(SHARED_POOL.map(time.sleep, [0.01, 0.01]))  # its threads exist before any run
    for _ in range(INLINE_AFTER + 1):
        assert p.via_pool.run([]) == []
    assert runtime._paces[("Probe", "via_pool")].inline
    assert len(p.via_pool.run(["pooled-a", "pooled-b"])) == 2
    # Threads that existed before the method are not told apart from a program's own, so a
    # call one of them got through before the dropped run ended is made again by the rerun,
    # as any direct call is when a turn reruns (workflow.send is the exactly-once way).
    assert 1 <= Probe.get_or_create("pooled-a").value.run() <= 2
    assert 1 <= Probe.get_or_create("pooled-b").value.run() <= 2
    assert p.value.run() == INLINE_AFTER + 2  # the dropped run left nothing in the state
    assert runtime._paces[("Probe", "via_pool")].blocks


def test_a_program_thread_waits_for_a_method_on_the_loop_thread_and_is_never_refused(
    runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Held far past both limits, but not waiting for a thread: callers only wait.
    monkeypatch.setattr(_inline, "PATIENCE", 0.01)
    monkeypatch.setattr(_inline, "GRACE", 0.01)
    p = Probe.get_or_create("holder")
    other = Probe.get_or_create("waiter")
    _promote(p)
    runtime.inline_limit = 10.0  # let a slow run stay on the loop's thread
    holding = threading.Thread(target=lambda: p.bump.run(sleep=0.3))
    holding.start()
    time.sleep(0.1)  # the slow run holds the loop's thread now
    late: list[str] = []
    newcomer = threading.Thread(target=lambda: late.append(other.bump.run()))  # started after it
    newcomer.start()
    start = time.monotonic()
    thread = other.bump.run()  # not refused
    assert thread == LOOP_THREAD or thread.startswith("actorflow-actor")
    assert time.monotonic() - start > 0.1  # it waited for the slow run to end
    newcomer.join(timeout=30)
    holding.join(timeout=30)
    assert len(late) == 1  # not refused either
    assert p.value.run() == INLINE_AFTER + 3
    assert other.value.run() == 2


def test_a_method_raising_stop_iteration_fails_its_call_on_either_thread(runtime: Any) -> None:
    p = Probe.get_or_create("stopper")
    for _ in range(INLINE_AFTER + 2):  # in the pool first, then on the loop's thread
        with pytest.raises(RuntimeError, match="StopIteration"):
            p.stop_early.run()
    assert runtime._paces[("Probe", "stop_early")].inline
    assert p.value.run() == 0  # no failed turn changed anything


def test_writers_on_the_loop_thread_lose_nothing_under_concurrency(runtime: Any) -> None:
    p = Probe.get_or_create("busy")
    _promote(p)
    results: list[str] = []

    def worker() -> None:
        for _ in range(20):
            results.append(p.bump.run())

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 120
    assert p.value.run() == INLINE_AFTER + 2 + 120


# ----------------------------------------------------------------------------- inline SQLite
def test_sqlite_small_operations_do_not_suspend_but_long_runs_of_them_yield(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        storage = await SQLiteStorage.open(tmp_path / "s.db")
        try:
            from actorflow.storage import Batch

            assert await storage.commit(Batch().put("k", b"v"))
            await asyncio.sleep(0.01)
            turned: list[int] = []
            asyncio.get_running_loop().call_soon(turned.append, 1)
            assert await storage.get("k") == b"v"
            assert turned == []  # one small read: the loop did not turn

            ran = 0
            stop = False

            async def other_task() -> None:
                nonlocal ran
                while not stop:
                    ran += 1
                    await asyncio.sleep(0)

            task = asyncio.ensure_future(other_task())
            start = time.monotonic()
            reads = 0
            while time.monotonic() - start < 0.2:
                await storage.get("k")
                reads += 1
            stop = True
            await task
            # Other tasks got turns while the reads went on (every few ms, not once per read).
            assert 10 <= ran < reads
        finally:
            await storage.close()

    asyncio.run(main())
