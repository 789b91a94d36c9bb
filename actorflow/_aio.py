"""Starting a coroutine on the caller's stack (what Python 3.12 calls an eager task, for 3.11).

Why it matters here: an actor turn runs as a task of its own (so that a caller that goes away
cannot interrupt a commit that has started), and most turns do little before their first
await. Running that part at once, instead of scheduling the task for the loop's next turn,
saves a trip through the loop per call: 14% of an embedded call's latency and a quarter of its
throughput on Redis here (``bench/actors.py``; docs/design.md has the measurements). Serve's
classic proxy also charged a replica for every suspension of its handler (a disconnect check
against the proxy process).
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextvars
import sys
from asyncio import tasks
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, TypeVar, cast

T = TypeVar("T")


def start_now(coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """Run ``coro`` now, up to its first suspension, as a task of its own; return its future.

    Guarantees:
    - The coroutine is the body of a task from its first line: ``asyncio.current_task()``
      inside it is that task, so ``asyncio.timeout``, task groups and cancellation act on it
      and never on the caller.
    - A coroutine that finishes without suspending gives a future that is already done; the
      caller does not wait for the event loop. (On Python 3.11 that future is not the task the
      coroutine ran as: that task ends quietly at the loop's next turn, with no result.)
    - Otherwise its task runs it to its end even if whoever awaits the returned future is
      cancelled (await it under ``asyncio.shield`` for that); cancelling the returned future
      cancels the coroutine, even before the task has run a step of its own.
    - It runs in a copy of the caller's context, as a task would: context variables it sets
      are not seen by the caller.
    - Exceptions, including cancellation, come out of the future, never out of this call
      (except ``KeyboardInterrupt`` and ``SystemExit``, which propagate).
    """
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    if sys.version_info >= (3, 12):
        return asyncio.Task(coro, loop=loop, context=ctx, eager_start=True)
    handover = _Handover(coro)
    # The task's first step is scheduled now; by then the coroutine has run its first part here
    # and the task only picks up where it stopped.
    task = loop.create_task(cast(Coroutine[Any, Any, T], handover), context=ctx)
    caller = tasks.current_task(loop)
    if caller is not None:
        tasks._leave_task(loop, caller)
    tasks._enter_task(loop, task)
    try:
        handover.first = ctx.run(coro.send, None)
    except StopIteration as stop:
        return _done(loop, handover, result=stop.value)
    except asyncio.CancelledError:
        return _done(loop, handover, cancelled=True)
    except (KeyboardInterrupt, SystemExit):
        handover.finished = True
        raise
    except BaseException as exc:
        return _done(loop, handover, error=exc)
    finally:
        tasks._leave_task(loop, task)
        if caller is not None:
            tasks._enter_task(loop, caller)
    return task


def _done(
    loop: asyncio.AbstractEventLoop,
    handover: _Handover,
    *,
    result: Any = None,
    error: BaseException | None = None,
    cancelled: bool = False,
) -> asyncio.Future[Any]:
    """The outcome of a coroutine that finished in its first part; its task then ends quietly."""
    handover.finished = True
    fut: asyncio.Future[Any] = loop.create_future()
    if cancelled:
        fut.cancel()
    elif error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
    return fut


_PENDING = object()


class _Handover:
    """What the task of :func:`start_now` runs (or :func:`within` awaits): a coroutine whose
    first part already ran.

    The task's first ``send`` gets what the coroutine yielded in that part (the future it waits
    for); after that every ``send``, ``throw`` and ``close`` goes straight to the coroutine, so
    the task drives it exactly as if it had started it. If the coroutine already finished, the
    task ends at its first step with nothing to report (the caller has the outcome).
    """

    __slots__ = ("_coro", "finished", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self.first: Any = _PENDING
        self.finished = False

    def send(self, value: Any) -> Any:
        if self.finished:
            raise StopIteration(None)
        first, self.first = self.first, _PENDING
        if first is not _PENDING:
            return first
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        first, self.first = self.first, _PENDING
        if self.finished:
            raise typ if val is None else val
        exc = typ if val is None else val
        if first is not _PENDING and isinstance(exc, asyncio.CancelledError) and asyncio.isfuture(first):
            # Cancelled before the task took over: cancel what the coroutine waits for, as a
            # task cancels the future it waits on; the task then wakes with the cancellation.
            if first.cancel(msg=exc.args[0] if exc.args else None):
                return first
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        if not self.finished:
            self._coro.close()

    # Awaited in the caller's own task too (:func:`within`): then it is its own iterator.
    def __await__(self) -> Generator[Any, Any, Any]:
        return cast("Generator[Any, Any, Any]", self)  # (an iterator with send and throw)

    def __next__(self) -> Any:
        return self.send(None)


# Tasks accept any object registered as a coroutine; _Handover is driven only by its task.
collections.abc.Coroutine.register(_Handover)


async def within(awaitable: Awaitable[T], deadline: float) -> T:
    """``await awaitable`` under ``asyncio.timeout_at(deadline)`` (``TimeoutError`` past it),
    with no timer at all when it is a coroutine that finishes without suspending.

    The edge reads every request body under a deadline, and a body that has arrived is read
    without a suspension: setting and clearing a timer for it would cost more than reading it.
    A coroutine runs in the caller's task either way.
    """
    if not isinstance(awaitable, collections.abc.Coroutine):
        async with asyncio.timeout_at(deadline):
            return await awaitable
    handover = _Handover(awaitable)
    try:
        handover.first = awaitable.send(None)
    except StopIteration as stop:
        return cast(T, stop.value)
    async with asyncio.timeout_at(deadline):
        return cast(T, await handover)
