"""When a plain (``def``) actor method may run on the event loop's thread instead of a worker's.

A worker thread keeps the loop free while a method runs, but handing a call to it and back
costs more than a short method itself does, and makes the turn suspend, which in a Serve
replica costs again (see :mod:`actorflow._aio`). So each runtime keeps a :class:`Pace` per
method:

- A method starts in the worker pool. Once it has run ``INLINE_AFTER`` times in a row in under
  ``INLINE_LIMIT`` seconds each, it runs on the loop's thread.
- The first time it runs there longer than the limit, it goes back to the pool, and needs four
  times as many fast runs in a row before it is trusted again (so a method that is sometimes
  slow soon stops blocking the loop at all).
- A method that uses actorflow's blocking API from inside (another actor's ``.run()``,
  ``get_or_create``, ``workflow.run``, ...) always runs in the pool: on the loop those would wait
  for the very loop they block. If a method trusted on the loop does so anyway (on a branch it
  had not taken before), it is stopped at that call, before the call does anything, and the
  turn runs again from the same snapshot in the pool. Nothing of the stopped run is kept: its
  instance, its sends and its timers are dropped, as when a turn runs again after a conflict.

While a method runs on the loop's thread the loop is hidden from it (``asyncio.run`` and
``asyncio.get_running_loop`` behave as they do in a worker thread).

A method there may also wait for other threads (threads it starts, a pool it hands work to)
whose actorflow calls need the very loop the method holds. A :class:`LoopSeat` breaks that
cycle: such a call waits for the method to end, and is refused with
:class:`~actorflow.errors.LoopBusyError` only once the method has held the loop for a while
(``GRACE``, 50 ms, for threads started after the method began; ``PATIENCE``, 1 s, for the
others) *and* is waiting inside :mod:`threading` at that moment. The method's turn is then
dropped and runs again in the pool, where the same calls go through, and the method stays in
the pool. Threads running actor methods of their own are never refused.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
import time
from asyncio import events
from dataclasses import dataclass, field

from actorflow.errors import LoopBusyError

INLINE_LIMIT = 0.001  # seconds: a run at most this long counts as fast
INLINE_AFTER = 8  # fast runs in a row before a method runs on the loop's thread
MAX_NEEDED = 1 << 16
# How long a method on the loop's thread may hold it, while waiting for another thread, before
# a call from a thread started after it (GRACE) or from any other thread (PATIENCE) is refused.
GRACE = 0.05
PATIENCE = 1.0
POLL = 0.02  # past that, how often a waiting thread looks again


@dataclass
class Pace:
    """How one method of one actor type has been running in this process."""

    fast_runs: int = 0  # fast runs in a row so far
    needed: int = INLINE_AFTER  # fast runs in a row needed before running on the loop
    inline: bool = False  # runs on the loop's thread now
    blocks: bool = False  # has used actorflow's blocking API: never on the loop

    def record(self, seconds: float, *, limit: float = INLINE_LIMIT) -> None:
        """Account one run that took ``seconds`` (on the loop if ``self.inline``)."""
        if self.blocks:
            self.inline = False
        elif seconds > limit:
            if self.inline:
                self.inline = False
                self.needed = min(self.needed * 4, MAX_NEEDED)
            self.fast_runs = 0
        elif not self.inline:
            self.fast_runs += 1
            if self.fast_runs >= self.needed:
                self.inline = True


@dataclass
class MethodRun:
    """The method run under way in this context (a context variable points at it)."""

    pace: Pace
    on_loop: bool
    name: str = ""  # Type.method, for messages
    left: bool = False  # it was stopped to run again in the pool
    refused: bool = False  # a thread was refused a call for it: run it again in the pool
    started: float = 0.0  # time.monotonic() when it took the loop's thread
    thread_id: int = 0  # the loop's thread
    threads_before: frozenset[threading.Thread] = field(default_factory=frozenset)  # alive then
    ended: threading.Event | None = None  # made when a thread starts waiting for it


class LeaveLoop(BaseException):
    """Stops a method running on the loop's thread at a blocking call, to run it again in the
    pool. A ``BaseException`` so that a method's ``except Exception`` does not swallow it."""


_run: contextvars.ContextVar[MethodRun | None] = contextvars.ContextVar("actorflow_method_run", default=None)


def current_run() -> contextvars.ContextVar[MethodRun | None]:
    """The context variable naming the method run under way (set by the runtime)."""
    return _run


def before_blocking() -> None:
    """Call before anything that waits for an actorflow runtime from synchronous code.

    Inside an actor method run it marks the method as one that blocks (it will always run in
    the worker pool); if the run is on the loop's thread, it raises :class:`LeaveLoop` so the
    turn runs again in the pool before the blocking call has done anything.
    """
    run = _run.get()
    if run is None:
        return
    run.pace.blocks = True
    if run.on_loop:
        run.left = True
        raise LeaveLoop()


def hide_loop() -> asyncio.AbstractEventLoop | None:
    """Make this thread look as if no loop ran on it; returns the loop to give back."""
    loop = events._get_running_loop()
    events._set_running_loop(None)
    return loop


def show_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    """Undo :func:`hide_loop`."""
    events._set_running_loop(loop)


class LoopSeat:
    """Which plain method holds a loop's thread right now, for threads about to wait on it.

    The loop's thread calls :meth:`take` and :meth:`give_back` around each method it runs;
    every other thread calls :meth:`admit` before it submits work to the loop and waits.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._run: MethodRun | None = None

    def take(self, run: MethodRun) -> None:
        """``run`` starts on the loop's thread (call from that thread)."""
        # The threads alive now (as objects: a new thread may reuse an old one's id) cannot
        # have been started by the method.
        run.threads_before = frozenset(threading._active.values())  # type: ignore[attr-defined]
        run.thread_id = threading.get_ident()
        run.started = time.monotonic()
        self._run = run

    def give_back(self, run: MethodRun) -> bool:
        """``run`` ended; returns whether a thread was refused a call for it (then nothing of
        the run may be kept)."""
        with self._lock:
            self._run = None
            if run.ended is not None:
                run.ended.set()
            return run.refused

    def admit(self) -> None:
        """Return when this thread may submit work to the loop and wait for it.

        Returns at once unless a method holds the loop's thread and this thread is not running
        a method itself. Then it waits for that method to end. The method is presumed to be
        waiting for this thread, and :class:`~actorflow.errors.LoopBusyError` is raised (the
        method's turn will run again in the pool, and stay there), only when both hold (or
        when this thread was started after the method began and another thread's call was
        refused for it meanwhile):

        - the method has held the loop for ``GRACE`` seconds if this thread was started after
          the method began (most likely by it), or ``PATIENCE`` seconds otherwise;
        - the method is, at that moment, waiting inside :mod:`threading` (a join, a future's
          result, a queue, an event): waiting for another thread. A method that merely runs
          long never causes a refusal.
        """
        run = self._run
        if run is None or _run.get() is not None:
            return
        with self._lock:
            if self._run is not run:
                return
            if run.ended is None:
                run.ended = threading.Event()
            ended = run.ended
        young = threading.current_thread() not in run.threads_before
        deadline = run.started + (GRACE if young else PATIENCE)
        while not ended.wait(max(0.0, deadline - time.monotonic())):
            if _waits_for_a_thread(run.thread_id):
                with self._lock:
                    if self._run is not run:
                        return
                    run.refused = True
                    run.pace.blocks = True
                raise _refusal(run)
            deadline = time.monotonic() + POLL
        if young and run.refused:
            # The run this thread waited for was dropped, and this thread most likely works
            # for it: its call must not go through on behalf of a run that will be redone.
            raise _refusal(run)


def _refusal(run: MethodRun) -> LoopBusyError:
    held = time.monotonic() - run.started
    return LoopBusyError(
        f"actor method {run.name} held the event loop's thread for {held:.2f} s while waiting "
        "for another thread, presumably this one, whose call needs that loop; the call was "
        "refused before it started, and the method's turn runs again in the worker pool, "
        "where such calls go through"
    )


def _waits_for_a_thread(thread_id: int) -> bool:
    """Whether the thread ``thread_id`` is blocked in one of :mod:`threading`'s waits (which
    also back ``Thread.join``, futures' ``result``, ``queue.Queue.get`` and the like)."""
    frame = sys._current_frames().get(thread_id)
    return frame is not None and frame.f_code.co_filename == threading.__file__
