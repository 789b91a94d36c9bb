"""The actor runtime: the parts that run actors in this process, put together.

:class:`ActorRuntime` shares a :class:`~actorflow.engine.WorkflowRuntime`'s storage and event
loop and composes

* :mod:`~actorflow.actor._cache` (snapshots in memory, passivation, per-actor locks),
* :mod:`~actorflow.actor._methods` (where methods run),
* :mod:`~actorflow.actor._turns` (one call: load, run, compare-and-set commit),
* :mod:`~actorflow.actor._outbox` (messages and events, delivered exactly once),
* :mod:`~actorflow.actor._scheduler` (durable timers),
* :mod:`~actorflow.actor._lifecycle` (create and delete),

with the blocking facade that handles call (the :class:`~actorflow.actor._context.Invoker`
seam). Its background loops (timers; outbox recovery and passivation) start in :meth:`start`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

from actorflow.actor import _context
from actorflow.actor._cache import SnapshotCache
from actorflow.actor._class import VirtualActorClass
from actorflow.actor._config import ActorConfig
from actorflow.actor._idempotency import client_key, fingerprint
from actorflow.actor._keys import actor_name, k_version, listing_prefix
from actorflow.actor._lifecycle import Lifecycle
from actorflow.actor._methods import MethodRunner, mark_method_error
from actorflow.actor._outbox import Outbox
from actorflow.actor._scheduler import Scheduler
from actorflow.actor._state import Snapshot, capture, encode, is_live
from actorflow.actor._timers import TimerBell, due_count
from actorflow.actor._turns import Request, Turns, declared
from actorflow.engine import WorkflowRuntime, default_runtime, runtime_for
from actorflow.errors import ActorError

log = logging.getLogger("actorflow.actor")
T = TypeVar("T")

#: Seconds between two housekeeping passes (outbox recovery, passivation).
HOUSEKEEPING_INTERVAL = 1.0


class ActorRuntime:
    """Runs actor calls in this process against one storage (shared with a WorkflowRuntime).

    The blocking methods (``create``, ``submit``...) are what handles use from any thread; the
    async ones (``call``, ``post_event``...) run on the runtime's loop. ``config`` says how it
    behaves (:class:`~actorflow.actor.ActorConfig`).
    """

    def __init__(self, workflows: WorkflowRuntime, config: ActorConfig | None = None) -> None:
        self.workflows = workflows
        self.storage = workflows.storage
        self.loop = workflows.loop
        self.engine = workflows.engine
        self.config = config or ActorConfig()
        self.cache = SnapshotCache(self.storage, self.config)
        self.methods = MethodRunner(self.config.threads)
        bell = TimerBell()
        self.turns = Turns(
            self.storage, self.cache, self.methods, self.engine, self.config, self, self._deliver_later, bell
        )
        self.outbox = Outbox(self.storage, self.turns, self.config)
        self.scheduler = Scheduler(self.storage, self.turns, self.config, bell)
        self.lifecycle = Lifecycle(self.storage, self.cache, self.engine, self.config)
        self._loops: list[concurrent.futures.Future[Any]] = []

    def _deliver_later(self, sender_type: str, sender_id: str, msg_id: str) -> None:
        self.outbox.spawn(sender_type, sender_id, msg_id)

    def start(self) -> ActorRuntime:
        """Start the background loops: the timer scheduler, and outbox recovery with
        passivation. Idempotent; returns the runtime."""
        if not self._loops:
            for loop in (self.scheduler.run_forever(), self._housekeeping()):
                self._loops.append(asyncio.run_coroutine_threadsafe(loop, self.loop))
        return self

    async def _housekeeping(self) -> None:
        """Deliver what dead processes left in outboxes, and passivate idle actors."""
        while True:
            try:
                await self.outbox.recover()
            except Exception as exc:  # storage trouble: tried again next pass
                log.warning("outbox recovery pass failed; trying again: %r", exc)
            try:
                self.cache.passivate_idle()
            except Exception:  # a bug: keep the loop alive, and say so
                log.exception("passivating idle actors failed")
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)

    def close(self) -> None:
        for loop in self._loops:
            loop.cancel()
        self.methods.close()

    # ------------------------------------------------------------------ async API
    async def call(
        self,
        ac: VirtualActorClass,
        actor_id: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        idempotency_key: str | None = None,
        *,
        encode: Any = None,
    ) -> Any:
        """Run one call; ``idempotency_key`` is the *recorded* key (see :func:`client_key` for
        callers' keys) and ``encode`` turns the result into what is returned before the turn
        commits (see :meth:`~actorflow.actor._turns.Turns.call`)."""
        fp = fingerprint(method, args, kwargs) if idempotency_key is not None else None
        request = Request(idempotency_key, fp, encode=encode)
        return await self.turns.call(ac, actor_id, method, args, kwargs, request)

    async def post_event(
        self,
        ac: VirtualActorClass,
        actor_id: str,
        event: str,
        payload: Any,
        event_id: str | None,
        wait: bool,
        *,
        encode: Any = None,
    ) -> tuple[bool, Any]:
        """See :meth:`~actorflow.actor._outbox.Outbox.post_event`."""
        return await self.outbox.post_event(ac, actor_id, event, payload, event_id, wait, encode=encode)

    async def backlog(self) -> tuple[int, int]:
        """``(outbox entries not yet delivered, timers due and not claimed)`` in storage now
        (the second counted up to 10,000): what the backlog gauges of ``/metrics`` show."""
        return await self.outbox.size(), await due_count(self.storage, self.config.clock.time())

    async def read(self, ac: VirtualActorClass, actor_id: str) -> Snapshot:
        """The committed snapshot (``ActorNotFoundError`` if there is none)."""
        return await self.cache.read(ac, actor_id)

    # ------------------------------------------------------------------ blocking facade
    def blocking(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the runtime's loop from another thread and return its result."""
        return self.workflows.blocking(coro, timeout)

    def create(
        self, ac: VirtualActorClass, actor_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bool:
        """Create the actor unless it exists; return whether this call created it."""
        if self.workflows.blocking(self.lifecycle.exists(ac, actor_id)):
            return False
        try:
            instance = ac.new_instance(args, kwargs)  # user code runs in the caller's thread
        except Exception as exc:
            mark_method_error(exc)
            declared(ac, exc)
            raise
        state = encode(capture(instance, ac.custom_state), actor=actor_name(ac.type_name, actor_id))
        return bool(self.workflows.blocking(self.lifecycle.create(ac, actor_id, state)))

    def require(self, ac: VirtualActorClass, actor_id: str) -> None:
        """Raise ``ActorNotFoundError``, saying how to make the actor, unless it exists."""
        current = self.workflows.blocking(self.storage.get(k_version(ac.type_name, actor_id)))
        if not is_live(current):
            raise ac.not_found(actor_id, deleted=current is not None)

    def exists(self, ac: VirtualActorClass, actor_id: str) -> bool:
        return bool(self.workflows.blocking(self.lifecycle.exists(ac, actor_id)))

    def list_ids(
        self, type_name: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Ids of the actors of a type, in byte order."""
        prefix = listing_prefix(type_name)
        after = prefix + start_after if start_after is not None else None
        keys = self.workflows.blocking(self.storage.list_keys(prefix, start_after=after, limit=limit))
        return [k[len(prefix) :] for k in keys]

    def delete(self, ac: VirtualActorClass, actor_id: str) -> None:
        self.workflows.blocking(self.lifecycle.delete(ac, actor_id))

    def submit(
        self,
        ac: VirtualActorClass,
        actor_id: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        idempotency_key: str | None,
    ) -> concurrent.futures.Future[Any]:
        """Schedule a call (``idempotency_key``: the caller's); calls submitted in some order
        start their turns in that order."""
        call = self.call(ac, actor_id, method, args, kwargs, client_key(idempotency_key))
        return asyncio.run_coroutine_threadsafe(call, self.loop)

    def state(self, ac: VirtualActorClass, actor_id: str) -> Snapshot:
        """The committed snapshot of an actor (for inspection)."""
        return self.workflows.blocking(self.read(ac, actor_id))


_runtimes: weakref.WeakKeyDictionary[WorkflowRuntime, ActorRuntime] = weakref.WeakKeyDictionary()
_runtimes_lock = threading.Lock()


def actor_runtime(workflows: WorkflowRuntime) -> ActorRuntime:
    """The actor runtime sharing ``workflows``' storage and loop (created, and started, on
    first use)."""
    with _runtimes_lock:
        rt = _runtimes.get(workflows)
        if rt is None:
            rt = _runtimes[workflows] = ActorRuntime(workflows).start()
            workflows.on_close(rt.close)
        return rt


def adopt(workflows: WorkflowRuntime, actors: ActorRuntime) -> None:
    """Make ``actors`` the actor runtime of ``workflows`` (what handles on its storage use),
    in place of one :func:`actor_runtime` would start: for harnesses that drive its loops by
    hand (:mod:`actorflow.testing`). It closes with ``workflows``."""
    with _runtimes_lock:
        if _runtimes.get(workflows) not in (None, actors):
            raise ActorError("?", None, "this workflow runtime already has an actor runtime")
        _runtimes[workflows] = actors
    workflows.on_close(actors.close)


def _embedded(storage_url: str | None) -> ActorRuntime:
    return actor_runtime(default_runtime() if storage_url is None else runtime_for(storage_url))


# Handles find the embedded runtime through this (the seam in _context, below this module).
_context.use_embedded(_embedded)
