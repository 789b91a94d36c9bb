"""Where actor methods run: ``async def`` ones on the runtime's loop, plain ones in threads.

A plain method may block, sleep, start threads and call other actors synchronously, so it runs
in a worker thread and its turn awaits it; the loop serves other actors meanwhile. Once every
worker is taken, further methods run in an overflow pool whose threads are made only as needed:
a method that calls another actor synchronously holds its worker while the callee's turn needs
one, and must never queue behind its own caller.

An exception a method raises is marked as the method's own (:func:`is_method_error`), so the
layers above can tell the method's answer from actorflow's or storage's failures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import threading
from typing import Any

from actorflow.actor import _context
from actorflow.actor._class import MethodInfo
from actorflow.actor._context import Turn
from actorflow.actor._timers import Firing, current_firing

#: Threads of the overflow pool, at most (made only as needed: as many as methods running at once).
OVERFLOW_THREADS = 1024
_ERROR_STATUS = "_actorflow_status"
_METHOD_ERROR_MARK = "_actorflow_raised_by_method"


def mark_method_error(exc: BaseException) -> None:
    """Note on ``exc`` that user code (a method, ``__init__``) raised it."""
    with contextlib.suppress(AttributeError, TypeError):
        setattr(exc, _METHOD_ERROR_MARK, True)


def is_method_error(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by an actor method itself (not by actorflow or storage)."""
    return bool(getattr(exc, _METHOD_ERROR_MARK, False))


def set_error_status(exc: BaseException, status: int) -> None:
    """Note on a method's exception the HTTP status its class declared for it (``errors=``)."""
    with contextlib.suppress(AttributeError, TypeError):
        setattr(exc, _ERROR_STATUS, status)


def error_status(exc: BaseException) -> int | None:
    """The status declared for a method's exception (it travels with the exception, pickles
    included), or ``None``: then it is a server fault, 500."""
    status = getattr(exc, _ERROR_STATUS, None)
    return status if isinstance(status, int) else None


def _call_plain(info: MethodInfo, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call a plain method. A ``StopIteration`` it raises becomes a ``RuntimeError``, as it does
    in a coroutine: raised as it is, it would end the coroutine waiting for the method's result
    instead of failing the call (and a future cannot hold one). So does anything that is not an
    ``Exception`` (``SystemExit``, ``KeyboardInterrupt``, ``CancelledError``): raised on the
    event loop it would stop the loop or pass for a cancelled turn; it fails this call only."""
    try:
        return info.func(instance, *args, **kwargs)
    except StopIteration as exc:
        raise RuntimeError(f"{info.name} raised StopIteration") from exc
    except Exception:
        raise
    except BaseException as exc:
        raise RuntimeError(f"{info.name} raised {type(exc).__name__}: {exc}") from exc


class MethodRunner:
    """Runs methods for one runtime: ``threads`` workers, then the overflow pool."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="actorflow-actor")
        self._overflow: concurrent.futures.ThreadPoolExecutor | None = None
        self._in_pool = 0
        self._in_pool_lock = threading.Lock()

    async def run(
        self,
        info: MethodInfo,
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        turn: Turn,
        firing: Firing | None,
    ) -> Any:
        """The method's result, with ``turn`` (and the timer ``firing``, if any) current while
        it runs; its exception, marked as the method's."""
        if info.is_async:
            token = _context.current.set(turn)
            current_firing.set(firing)
            try:
                return await info.func(instance, *args, **kwargs)
            except Exception as exc:
                mark_method_error(exc)
                raise
            finally:
                _context.current.reset(token)

        def run() -> Any:
            _context.current.set(turn)
            current_firing.set(firing)
            try:
                return _call_plain(info, instance, args, kwargs)
            except Exception as exc:
                mark_method_error(exc)
                raise

        job = self._submit(contextvars.copy_context().run, run)
        return await asyncio.wrap_future(job)

    def _submit(self, fn: Any, *args: Any) -> concurrent.futures.Future[Any]:
        """Run in the worker pool, or in the overflow pool when every worker is taken (some may
        be waiting for the very turns this one would queue behind)."""
        with self._in_pool_lock:
            use_pool = self._in_pool < self.threads
            if use_pool:
                self._in_pool += 1
        if not use_pool:
            if self._overflow is None:
                self._overflow = concurrent.futures.ThreadPoolExecutor(
                    OVERFLOW_THREADS, thread_name_prefix="actorflow-actor-overflow"
                )
            return self._overflow.submit(fn, *args)
        job = self._pool.submit(fn, *args)
        job.add_done_callback(self._left_pool)
        return job

    def _left_pool(self, _job: concurrent.futures.Future[Any]) -> None:
        with self._in_pool_lock:
            self._in_pool -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._overflow is not None:
            self._overflow.shutdown(wait=False, cancel_futures=True)
