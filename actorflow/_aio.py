"""Starting a coroutine on the caller's stack (what Python 3.12 calls an eager task, for 3.11).

Why it matters here: a Serve replica that answers an HTTP request without ever giving control
back to its event loop skips work Serve does otherwise (a task that asks the proxy, in another
process, whether the client went away). A call on a cached actor with the embedded storage can
finish without suspending at all, so it should not be sent through the loop just to be run in
a task of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


def start_now(coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """Run ``coro`` now, up to its first suspension, and return a future of its outcome.

    Guarantees:
    - A coroutine that finishes without suspending gives a future that is already done; it
      never went through the event loop.
    - Otherwise the rest of it runs as a task on the running loop, so it runs to its end even
      if whoever awaits the returned future is cancelled (await it under ``asyncio.shield``
      for that).
    - It runs in a copy of the caller's context, as a task would: context variables it sets
      are not seen by the caller.
    - Exceptions, including cancellation, come out of the future, never out of this call
      (except ``KeyboardInterrupt`` and ``SystemExit``, which propagate).
    """
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    try:
        yielded = ctx.run(coro.send, None)
    except StopIteration as stop:
        done: asyncio.Future[T] = loop.create_future()
        done.set_result(stop.value)
        return done
    except (KeyboardInterrupt, SystemExit):
        raise
    except asyncio.CancelledError:
        cancelled: asyncio.Future[T] = loop.create_future()
        cancelled.cancel()
        return cancelled
    except BaseException as exc:
        failed: asyncio.Future[T] = loop.create_future()
        failed.set_exception(exc)
        return failed
    return loop.create_task(_finish(coro, yielded), context=ctx)


async def _finish(coro: Coroutine[Any, Any, T], yielded: Any) -> T:
    return await _Rest(coro, yielded)


class _Rest:
    """Drives a started coroutine on for the task that now owns it: hands each value the
    coroutine yields to the task, and sends or throws back whatever the task resumes it with."""

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self._coro, self._yielded
        try:
            while True:
                try:
                    sent = yield yielded
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as exc:
                    yielded = coro.throw(exc)
                else:
                    yielded = coro.send(sent)
        except StopIteration as stop:
            return stop.value
