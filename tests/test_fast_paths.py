"""The fast paths: eager starts, plain methods in worker threads, inline SQLite.

What must hold: the fast paths change nothing but speed. A task started eagerly is a task from
its first line; a plain method always runs in a worker thread and never deadlocks, however it
waits for other threads that call actors.
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

from actorflow import workflow
from actorflow._aio import start_now, within
from actorflow.actor import actor_runtime
from actorflow.engine import default_runtime
from actorflow.storage.sqlite import SQLiteStorage

SHARED_POOL = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="test-shared")


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


def test_start_now_of_a_coroutine_cancelled_in_its_first_step_gives_a_cancelled_future() -> None:
    async def main() -> None:
        async def gives_up() -> int:
            raise asyncio.CancelledError()

        fut = start_now(gives_up())
        assert fut.cancelled()

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


# ----------------------------------------------------------------------------- within
def test_within_sets_no_timer_for_a_coroutine_that_never_suspends() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers = len(loop._scheduled)  # type: ignore[attr-defined]
        assert await within(_no_suspension(1), loop.time() - 1) == 2  # even past the deadline
        assert len(loop._scheduled) == timers  # type: ignore[attr-defined]

    asyncio.run(main())


def test_within_finishes_a_suspended_coroutine_in_time_or_raises_timeout() -> None:
    async def late(delay: float, value: int) -> int:
        await asyncio.sleep(delay)
        return value

    async def fails() -> None:
        await asyncio.sleep(0.01)
        raise KeyError("inside")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert await within(late(0.02, 7), loop.time() + 5) == 7
        started = loop.time()
        with pytest.raises(TimeoutError):
            await within(late(5, 0), loop.time() + 0.05)
        assert loop.time() - started < 2
        with pytest.raises(KeyError, match="inside"):
            await within(fails(), loop.time() + 5)
        outer = asyncio.ensure_future(within(late(5, 0), loop.time() + 10))
        await asyncio.sleep(0.02)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        assert not loop._scheduled or all(h.cancelled() for h in loop._scheduled)  # type: ignore[attr-defined]

    asyncio.run(main())


# ----------------------------------------------------------------------------- plain methods
@workflow.virtual_actor
class Probe:
    def __init__(self) -> None:
        self.count = 0

    def bump(self, sleep: float = 0.0) -> str:
        self.count += 1
        if sleep:
            time.sleep(sleep)
        return threading.current_thread().name

    def use_asyncio_run(self) -> int:
        async def answer() -> int:
            await asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.001)
            return 42

        self.count += 1
        return asyncio.run(answer())

    def wait_for_others(self, how: str, others: list[str]) -> int:
        """Waits, in one of several ways, for other threads that call actors."""
        self.count += 1

        def call(o: str) -> str:
            return Probe.get_or_create(o).bump.run()

        if how == "new_threads":
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                return len(list(pool.map(call, others)))
        if how == "shared_pool":
            return len(list(SHARED_POOL.map(call, others)))
        done: list[str] = []
        if how == "sleep_poll":
            threading.Thread(target=lambda: done.extend(map(call, others))).start()
            while len(done) < len(others):
                time.sleep(0.001)
            return len(done)
        if how == "plain_lock":
            lock = threading.Lock()
            lock.acquire()

            def work() -> None:
                done.extend(map(call, others))
                lock.release()

            threading.Thread(target=work).start()
            lock.acquire()
            return len(done)
        if how == "asyncio_run":

            async def main() -> int:
                loop = asyncio.get_running_loop()
                return len(await asyncio.gather(*(loop.run_in_executor(None, call, o) for o in others)))

            return asyncio.run(main())
        raise ValueError(how)

    def call_other(self, other: str, sleep: float = 0.0) -> str:
        """Calls another actor from this method's own thread and waits for it."""
        self.count += 1
        time.sleep(sleep)
        return Probe.get_or_create(other).bump.run()

    def stop_early(self) -> None:
        self.count += 1
        raise StopIteration

    def leave(self, kind: str) -> None:
        self.count += 1
        raise {"exit": SystemExit(3), "interrupt": KeyboardInterrupt(), "cancel": asyncio.CancelledError()}[
            kind
        ]

    def time_out(self, sleep: float = 0.0) -> None:
        self.count += 1
        time.sleep(sleep)
        raise TimeoutError("the method's own")

    @workflow.virtual_actor.readonly
    def value(self) -> int:
        return self.count


@pytest.fixture
def runtime(wf_storage: str) -> Any:
    return actor_runtime(default_runtime())


@pytest.mark.parametrize("how", ["new_threads", "shared_pool", "sleep_poll", "plain_lock", "asyncio_run"])
def test_a_method_waiting_for_threads_that_call_actors_never_deadlocks(runtime: Any, how: str) -> None:
    p = Probe.get_or_create(f"waiter-{how}")
    callees = [f"callee-{how}-a", f"callee-{how}-b"]
    for c in callees:
        Probe.get_or_create(c)
    for _ in range(12):  # quick at first (nothing to wait for), then with calls to wait for
        assert p.wait_for_others.run(how, []) == 0
    for _ in range(3):
        assert p.wait_for_others.run(how, callees) == 2
    assert [Probe.get_or_create(c).value.run() for c in callees] == [3, 3]  # each call once
    assert p.value.run() == 15


def test_a_slow_plain_method_does_not_hold_up_other_actors(runtime: Any) -> None:
    slow, fast = Probe.get_or_create("slow"), Probe.get_or_create("fast")
    fast.bump.run()
    slow_call = slow.bump.run_async(sleep=0.5)
    start = time.monotonic()
    assert fast.bump.run().startswith("actorflow-actor")
    assert time.monotonic() - start < 0.4  # it did not wait for the slow one
    assert slow_call.result(30).startswith("actorflow-actor")
    assert (slow.value.run(), fast.value.run()) == (1, 2)


def test_errors_state_and_asyncio_run_in_plain_methods(runtime: Any) -> None:
    p = Probe.get_or_create("plain")
    for _ in range(3):
        assert p.use_asyncio_run.run() == 42
    for _ in range(3):  # in the pool and waited for in place alike, StopIteration fails the call
        with pytest.raises(RuntimeError, match="StopIteration"):
            p.stop_early.run()
    for sleep in (0.0, 0.0, 0.01, 0.0):  # its own TimeoutError, quick or not, is its error
        with pytest.raises(TimeoutError, match="the method's own"):
            p.time_out.run(sleep)
    for kind in ("exit", "interrupt", "cancel", "exit"):  # fail the call, not the runtime's loop
        with pytest.raises(RuntimeError, match="raised"):
            p.leave.run(kind)
    assert p.value.run() == 3  # no failed turn changed anything


def test_plain_writers_lose_nothing_under_concurrency(runtime: Any) -> None:
    p = Probe.get_or_create("busy")
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
    assert p.value.run() == 120


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


def test_a_sqlite_commit_that_meets_another_writer_tries_again_inline_then_waits_in_the_worker(
    tmp_path: pathlib.Path,
) -> None:
    """Another process's commit holds the write lock for tens of microseconds: a small commit
    that finds it held lets the loop turn and tries again on its own thread; only one that
    keeps finding it held goes to the worker, whose connection waits for the lock."""
    import sqlite3

    from actorflow.storage import Batch

    async def main() -> None:
        path = tmp_path / "s.db"
        storage = await SQLiteStorage.open(path)
        other = sqlite3.connect(path, isolation_level=None)
        hops = 0
        real_run = storage._run

        async def counted(fn: Any) -> Any:
            nonlocal hops
            hops += 1
            return await real_run(fn)

        storage._run = counted  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        try:
            other.execute("BEGIN IMMEDIATE")  # held until the loop's next turn
            loop.call_soon(other.execute, "COMMIT")
            assert await storage.commit(Batch().put("a", b"1"))
            assert hops == 0
            other.execute("BEGIN IMMEDIATE")  # held past every retry
            loop.call_later(0.2, other.execute, "COMMIT")
            assert await storage.commit(Batch().put("b", b"2"))
            assert hops == 1
            assert await storage.get_many(["a", "b"]) == [b"1", b"2"]
        finally:
            other.close()
            await storage.close()

    asyncio.run(main())


def test_a_handle_call_whose_runtime_future_is_cancelled_ends_instead_of_hanging() -> None:
    from actorflow.actor._handle import ActorCall

    inner: concurrent.futures.Future[Any] = concurrent.futures.Future()
    call = ActorCall.wrap(inner)
    inner.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        call.result(timeout=5)


def test_nested_synchronous_calls_never_wait_behind_their_own_callers(tmp_path: pathlib.Path) -> None:
    """Every worker taken by a method that calls another actor and waits: the callees' turns
    must still get threads."""
    from actorflow.actor import ActorConfig, ActorRuntime
    from actorflow.engine import WorkflowRuntime

    wf = WorkflowRuntime(f"sqlite://{tmp_path}/nested.db")
    rt = ActorRuntime(wf, ActorConfig(threads=2))
    try:
        callers = [f"nest-{i}" for i in range(6)]
        for c in [*callers, "nest-callee"]:
            rt.create(Probe, c, (), {})
        # The sleep lets every caller take a thread before any callee turn asks for one.
        jobs = [rt.submit(Probe, c, "call_other", ("nest-callee", 0.2), {}, None) for c in callers]
        names = [j.result(timeout=30) for j in jobs]
        assert any(n.startswith("actorflow-actor-overflow") for n in names)
        assert rt.submit(Probe, "nest-callee", "value", (), {}, None).result(timeout=30) == 6
    finally:
        rt.close()
        wf.close()


# ----------------------------------------------------------------------------- argument checks
def _m0(self: Any) -> None: ...
def _m1(self: Any, x: int) -> None: ...
def _m2(self: Any, x: int, y: int = 1) -> None: ...
def _m3(self: Any, x: int, /, y: int = 2) -> None: ...
def _m4(self: Any, *args: int) -> None: ...
def _m5(self: Any, x: int, *, k: int) -> None: ...
def _m6(self: Any, **kw: int) -> None: ...
def _m7(*args: Any) -> None: ...


@pytest.mark.parametrize("func", [_m0, _m1, _m2, _m3, _m4, _m5, _m6, _m7])
def test_the_quick_argument_check_agrees_with_signature_bind(func: Any) -> None:
    """Positional arguments alone are checked by their count where every parameter may be
    passed by position; the answer (and the message of a refusal) is what binding gives."""
    import inspect

    from actorflow.actor._class import MethodInfo
    from actorflow.errors import ActorArgumentsError

    quick = MethodInfo(func.__name__, func, False, False, inspect.signature(func))
    binding = MethodInfo(func.__name__, func, False, False, inspect.signature(func))
    object.__setattr__(binding, "_positional", None)  # always Signature.bind

    def answer(info: MethodInfo, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        try:
            info.check_args("T", args, kwargs)
        except ActorArgumentsError as exc:
            return str(exc)
        return "ok"

    for count in range(4):
        for kwargs in ({}, {"x": 1}, {"y": 1}, {"k": 1}, {"z": 1}):
            args = tuple(range(count))
            assert answer(quick, args, kwargs) == answer(binding, args, kwargs), (count, kwargs)
