"""Where workflow steps run: as Ray tasks (the default), or in threads of this process for
tests (:class:`InlineRunner`, what :mod:`actorflow.testing` uses).

A runner takes a step's body, its arguments and its :class:`~actorflow.engine._steps.StepContext`
and gives back a handle whose ``future`` (a :class:`concurrent.futures.Future`) settles with the
body's outcome tuple. The executor is the same either way: it commits what the future brings.
Only Ray tasks can be submitted ahead of the steps they consume (:attr:`StepRunner.ahead`):
their arguments may be the ``ref`` of a step still running (see :mod:`._ahead`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import threading
from typing import Any, Protocol

import cloudpickle

from actorflow._clock import Clock
from actorflow.engine._dag import StepOptions
from actorflow.engine._detached import run_detached
from actorflow.engine._steps import Ahead, StepContext, Verbatim, body_for, remote_for
from actorflow.engine._watching import Watcher


class Running(Protocol):
    """One submitted step; ``ref`` is what a step submitted ahead of it takes as an argument
    in its place (None where steps cannot be submitted ahead)."""

    future: concurrent.futures.Future[Any]
    ref: Any

    def cancel(self) -> None: ...


class StepRunner(Protocol):
    #: Whether a step may be submitted before the outputs it consumes are in (see ``_ahead``).
    ahead: bool

    def ready(self) -> None:
        """Make sure steps can run (start or connect to Ray); blocking, cheap once done."""

    def submit(
        self,
        func: Any,
        options: StepOptions,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ctx: StepContext,
        ahead: Ahead | None = None,
    ) -> Running: ...

    def run_workflow(self, runtime: Any, workflow_id: str, lease: bytes | None) -> Any:
        """Run a stored workflow of ``runtime`` in the background (``run_async``,
        ``resume_async``), under ``lease`` when one is handed over; a handle on its output."""

    def task_arg(self, value: Any, nested: bool) -> Any:
        """A step's output as an argument of a Ray DAG task (see :class:`~._dag.RayArg`)."""

    def output_of(self, ref: Any) -> Any:
        """The output in the outcome of a finished step's task, by its ``ref`` (only for
        runners whose steps go ahead)."""


@dataclasses.dataclass
class _RayTask:
    ref: Any
    future: concurrent.futures.Future[Any]

    def cancel(self) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.cancel(self.ref, force=True)  # a polite cancel cannot interrupt a blocking call


#: One for the process: it watches the tasks of every runner and workflow here.
_watcher = Watcher()

#: A step with more arguments than this gets them in one Ray object (see ``RayRunner.submit``).
PACK_ARGS_OVER = 64


class RayRunner:
    """Each step a Ray task (with the step's Ray options), anywhere in the cluster."""

    ahead = True

    def ready(self) -> None:
        from actorflow._ray import ensure_ray

        ensure_ray()

    def submit(
        self,
        func: Any,
        options: StepOptions,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ctx: StepContext,
        ahead: Ahead | None = None,
    ) -> Running:
        # The context as a plain tuple: Ray sends that without pickling (a dataclass it pickles).
        where: tuple[Any, ...] = (ctx.storage_url, ctx.workflow_id, ctx.step_id)
        if ctx.trace is not None:  # the run's trace context goes with the task
            where += (None, ctx.trace)
        remote = remote_for(func, options)
        extra = {"_actorflow_ahead": ahead} if ahead is not None else {}
        if len(args) + len(kwargs) > PACK_ARGS_OVER:
            # A wide join: one object instead of a task spec with an entry per argument, which
            # Ray builds and keeps in the driver (100,000 of them cost it ~100 MB).
            import ray

            packed = ray.put((args, kwargs))
            ref = remote.remote(_actorflow_ctx=where, _actorflow_packed=packed, **extra)
        else:
            ref = remote.remote(*args, _actorflow_ctx=where, **extra, **kwargs)
        return _RayTask(ref, _watcher.watch(ref))

    def run_workflow(self, runtime: Any, workflow_id: str, lease: bytes | None) -> Any:
        """In the storage's detached actor, where it outlives the caller: an ``ObjectRef``."""
        return run_detached(runtime.storage_url, runtime.lease_ttl, workflow_id, lease)

    def output_of(self, ref: Any) -> Any:
        import ray

        return ray.get(ref)[1]

    def task_arg(self, value: Any, nested: bool) -> Any:
        """As Ray passes it: nested, an ``ObjectRef`` (one the task returned, or one put now);
        at the top level the value, but an ``ObjectRef`` kept from Ray's resolving."""
        import ray

        if isinstance(value, ray.ObjectRef):
            return value if nested else Verbatim(value)
        return ray.put(value) if nested else value


@dataclasses.dataclass
class _Thread:
    future: concurrent.futures.Future[Any]
    ref: Any = None

    def cancel(self) -> None:
        self.future.cancel()  # a step already running runs on; its result is then ignored


class InlineRunner:
    """Each step in a thread of this process, with no Ray, reading time from ``clock``.

    Arguments are copied as Ray would copy them (pickled and unpickled), so a step cannot
    change its caller's objects. Ray's resource options (``num_cpus``...) mean nothing here;
    retries of application errors work as with Ray. ``busy()`` says how many steps run and are
    not waiting on the clock: what :mod:`actorflow.testing` waits on before it moves time.
    Steps are never submitted ahead here: each starts once the outputs it takes are stored.
    """

    ahead = False

    def __init__(self, clock: Clock, max_workers: int = 64) -> None:
        self.clock = clock
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="actorflow-step")
        self._lock = threading.Lock()
        self._running = 0

    def ready(self) -> None:
        pass

    def submit(
        self,
        func: Any,
        options: StepOptions,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ctx: StepContext,
        ahead: Ahead | None = None,
    ) -> Running:
        assert ahead is None, "the inline runner takes no steps ahead"
        args, kwargs = cloudpickle.loads(cloudpickle.dumps((args, kwargs)))
        body = body_for(func, options)
        ctx = dataclasses.replace(ctx, clock=self.clock)

        def run() -> Any:
            try:
                return body(*args, _actorflow_ctx=ctx, **kwargs)
            finally:
                with self._lock:
                    self._running -= 1

        with self._lock:
            self._running += 1
        try:
            return _Thread(self._pool.submit(run))
        except BaseException:
            with self._lock:
                self._running -= 1
            raise

    def task_arg(self, value: Any, nested: bool) -> Any:
        """The value itself, nested or not: steps run here with no Ray to hold an ``ObjectRef``."""
        return value

    def output_of(self, ref: Any) -> Any:
        raise TypeError("steps of the inline runner never go ahead: no output is held by reference")

    def run_workflow(self, runtime: Any, workflow_id: str, lease: bytes | None) -> Any:
        """On the runtime's own loop: a :class:`concurrent.futures.Future` of its output."""
        return asyncio.run_coroutine_threadsafe(runtime.engine.resume(workflow_id, lease), runtime.loop)

    def running(self) -> int:
        """Steps submitted and not yet returned (those asleep on the clock included)."""
        with self._lock:
            return self._running

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["InlineRunner", "RayRunner", "Running", "StepRunner"]
