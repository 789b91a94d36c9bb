"""The actor runtime: load, run one turn, commit; deliver messages.

One turn of a writer method:

1. under a per-actor lock in this process (turns of one actor never overlap here),
2. rebuild a fresh instance from the last snapshot this process knows,
3. run the method (``async def`` methods on the loop; plain ones in a worker thread, which the
   loop waits for in place for up to ``SYNC_WAIT`` before it awaits the rest),
4. commit in ONE atomic batch: the new snapshot and version, the idempotency record, the
   messages the turn sent (an outbox) and the sub-workflow it launched, on the condition that
   the version is still the one the turn started from (compare-and-set).

If another process committed in between, the commit fails, the snapshot is re-read and the turn
runs again, so no update is ever lost, whichever processes touch the actor. A method that raises
commits nothing. Read-only methods read the committed snapshot and commit nothing.

Messages (``workflow.send``) are delivered after the commit, each with its own idempotency key
at the receiver, and retried from the outbox until delivered, so each takes effect exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import hashlib
import logging
import random
import threading
import time
import uuid
import weakref
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from actorflow import _codec
from actorflow._aio import start_now
from actorflow.actor._class import MethodInfo, VirtualActorClass, lookup
from actorflow.actor._state import Snapshot, capture, encode, restore
from actorflow.actor._timers import (
    CLAIM_BATCH,
    CLAIM_SECONDS,
    TIMER_INDEX,
    Firing,
    Timer,
    _current_firing,
    k_timer,
    k_timer_failure,
    make_timer,
    timer_member,
)
from actorflow.actor._timers import MAX_ATTEMPTS as TIMER_MAX_ATTEMPTS
from actorflow.errors import (
    ActorArgumentsError,
    ActorConflictError,
    ActorError,
    ActorMethodNotFoundError,
    ActorNotFoundError,
    ActorStateError,
    ActorTypeNotFoundError,
    WorkflowNotFoundError,
    WorkflowRunningError,
)
from actorflow.storage import Batch
from actorflow.workflow._compat import as_workflow
from actorflow.workflow._runtime import WorkflowRuntime
from actorflow.workflow._store import Lease

log = logging.getLogger("actorflow.actor")

MAX_ATTEMPTS = 200
# Seconds the loop waits in place for a quick plain method in the worker pool. Handing its
# result back through the loop instead makes the turn suspend, which in a Serve replica costs
# about a millisecond (see actorflow._aio); blocking the loop this long at most is cheaper.
SYNC_WAIT = 0.001
OVERFLOW_THREADS = 1024  # created only as needed: at most as many as methods running at once
OUTBOX_INDEX = "outbox"


def k_version(t: str, a: str) -> str:
    return f"act/{t}/{a}/v"


def k_snapshot(t: str, a: str) -> str:
    return f"act/{t}/{a}/snap"


def k_listing(t: str, a: str) -> str:
    return f"acts/{t}/{a}"


def k_idem(t: str, a: str, key: str) -> str:
    return f"act/{t}/{a}/idem/{quote(key, safe='')}"


def idem_index(t: str, a: str) -> str:
    return f"idem:{t}/{a}"


def _timer_key(member: str) -> str:
    t, a, name = member.split("/", 2)
    return k_timer(t, a, name)


def k_outbox(t: str, a: str, msg: str) -> str:
    return f"act/{t}/{a}/out/{msg}"


@dataclass
class _Message:
    target_type: str
    target_id: str
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    idem: str | None = None  # the receiver's idempotency key (default: derived from the message id)


@dataclass
class Turn:
    """What one running method does besides changing ``self``; committed with the state."""

    actor_type: str
    actor_id: str
    readonly: bool
    runtime: ActorRuntime | None = None
    messages: list[_Message] = field(default_factory=list)
    timers: dict[str, Timer | None] = field(default_factory=dict)  # None: cancel


_current_turn: contextvars.ContextVar[Turn | None] = contextvars.ContextVar("actorflow_turn", default=None)


def current_turn() -> Turn | None:
    """The actor turn running in this context, if any."""
    return _current_turn.get()


def send(method: Any, *args: Any, **kwargs: Any) -> None:
    """Send a one-way message to another actor's method from inside an actor method.

    ``workflow.send(other.deposit, 10)``. The message is committed with the sender's turn (if
    the method raises, it is never sent) and delivered after the commit, exactly once, even if
    processes crash in between. Arguments are checked against the receiving method now.
    """
    from actorflow.actor._handle import ActorMethod

    turn = _current_turn.get()
    if turn is None:
        raise ActorError("?", None, "workflow.send() works inside actor methods; elsewhere use .run()")
    if turn.readonly:
        raise ActorError(turn.actor_type, turn.actor_id, "a read-only method cannot send messages")
    if not isinstance(method, ActorMethod):
        raise TypeError(f"send() takes an actor method like handle.deposit, got {method!r}")
    ac = method.handle.actor_class
    ac.method(method.name).check_args(ac.type_name, args, kwargs)
    _codec.dumps((args, kwargs), what=f"the arguments of a message to {method!r}")
    turn.messages.append(_Message(ac.type_name, method.handle.actor_id, method.name, args, kwargs))


_METHOD_ERROR_MARK = "_actorflow_raised_by_method"


def _mark_method_error(exc: BaseException) -> None:
    with contextlib.suppress(AttributeError, TypeError):
        setattr(exc, _METHOD_ERROR_MARK, True)


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


def is_method_error(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by an actor method itself (not by actorflow or storage)."""
    return bool(getattr(exc, _METHOD_ERROR_MARK, False))


@dataclass
class _Cached:
    snapshot: Snapshot
    last_used: float


@dataclass
class _Outcome:
    """What a committed turn left to do outside the actor's lock."""

    result: Any = None
    workflow: tuple[str, Lease | None] | None = None
    messages: list[tuple[str, str, str]] = field(default_factory=list)  # (sender type, id, msg id)


@dataclass
class _Completion:
    """How a timer firing leaves its timer: committed in the same atomic write as the turn it
    fires (with the idempotency record), so a tick's effect and the record that it fired can
    never be separated. Only while the timer is still exactly as this firing claimed it."""

    timer: Timer
    key: str
    member: str
    claimed: bytes
    active: bool = True  # False once the timer was replaced or cancelled meanwhile
    applied: bool = False  # set when a turn committed it

    def add_to(self, batch: Batch, written: Collection[str] = ()) -> None:
        """Add the timer's next state to ``batch``, on the condition that the claim is intact;
        ``written``: timer names the batch sets or cancels already (those writes win)."""
        batch.require(self.key, self.claimed)
        if self.timer.name in written:
            return  # the fired method set or cancelled this very timer
        if self.timer.every:
            nxt = self.timer.following(time.time())
            after = dataclasses.replace(
                self.timer, due=nxt, next_try=nxt, attempts=0, claim=None, claim_until=0.0
            )
            batch.put(self.key, after.encode()).index_add(TIMER_INDEX, self.member, nxt)
        else:
            batch.delete(self.key).index_remove(TIMER_INDEX, self.member)


class ActorRuntime:
    """Runs actor calls in this process against one storage (shared with a WorkflowRuntime).

    ``cache_size`` bounds the snapshots kept in memory (least recently used go first), and an
    actor unused for ``idle_seconds`` is dropped from memory (passivated);
    ``idempotency_records`` and ``idempotency_ttl`` bound the recorded results per actor.
    """

    def __init__(
        self,
        workflows: WorkflowRuntime,
        *,
        cache_size: int = 10_000,
        idle_seconds: float = 600.0,
        threads: int = 64,
        idempotency_records: int = 1000,
        idempotency_ttl: float = 24 * 3600.0,
        outbox_grace: float = 2.0,
    ) -> None:
        self.workflows = workflows
        self.storage = workflows.storage
        self.loop = workflows.loop
        self.cache_size = cache_size
        self.idle_seconds = idle_seconds
        self.idempotency_records = idempotency_records
        self.idempotency_ttl = idempotency_ttl
        self.outbox_grace = outbox_grace
        self._cache: collections.OrderedDict[str, _Cached] = collections.OrderedDict()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="actorflow-actor")
        # Methods that call other actors synchronously hold their worker while the callee's turn
        # needs one: once every worker is taken, further methods run in an overflow pool, so
        # such nested calls never wait behind their own callers.
        self.threads = threads
        self._overflow: concurrent.futures.ThreadPoolExecutor | None = None
        self._in_pool = 0
        self._in_pool_lock = threading.Lock()
        # (type, method) -> whether its last run took at most sync_wait (then the loop waits
        # for the next one in place).
        self._quick: dict[tuple[str, str], bool] = {}
        # How long the loop waits in place for a plain method before it awaits the rest (0: never).
        self.sync_wait = SYNC_WAIT
        self._commits_since_trim: dict[str, int] = {}
        self._background: set[asyncio.Future[Any]] = set()
        self.tick_interval = 0.05  # how often the scheduler looks for due timers
        self.timer_concurrency = 64  # firings under way at once in this process
        self.timer_backlog = 512  # ticks claimed by this process and not yet fired, at most
        self.timer_backoff = 1.0  # first retry delay of a timer whose method raised; doubles
        self._recovery: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(
            self._recover_outbox_forever(), self.loop
        )
        self._scheduler: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(
            self._fire_timers_forever(), self.loop
        )

    # ------------------------------------------------------------------ sync facade
    def _call(self, coro: Any) -> Any:
        return self.workflows._call(coro)

    def create(
        self, ac: VirtualActorClass, actor_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bool:
        """Create the actor unless it exists; return whether this call created it."""
        if self._call(self._exists(ac, actor_id)):
            return False
        instance = ac.new_instance(args, kwargs)  # user code runs in the caller's thread
        encoding, data = encode(capture(instance, ac.custom_state), actor=f"{ac.type_name}/{actor_id}")
        return bool(self._call(self._create(ac, actor_id, encoding, data)))

    def require(self, ac: VirtualActorClass, actor_id: str) -> None:
        if not self.exists(ac, actor_id):
            raise ActorNotFoundError(ac.type_name, actor_id)

    def exists(self, ac: VirtualActorClass, actor_id: str) -> bool:
        return bool(self._call(self._exists(ac, actor_id)))

    def list_ids(
        self, type_name: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        prefix = f"acts/{type_name}/"
        after = prefix + start_after if start_after is not None else None
        keys = self._call(self.storage.list_keys(prefix, start_after=after, limit=limit))
        return [k[len(prefix) :] for k in keys]

    def delete(self, ac: VirtualActorClass, actor_id: str) -> None:
        self._call(self._delete(ac, actor_id))

    def submit(
        self,
        ac: VirtualActorClass,
        actor_id: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        idempotency_key: str | None,
    ) -> concurrent.futures.Future[Any]:
        """Schedule a call; calls submitted in some order start their turns in that order."""
        return asyncio.run_coroutine_threadsafe(
            self.call(ac, actor_id, method, args, kwargs, idempotency_key), self.loop
        )

    def state(self, ac: VirtualActorClass, actor_id: str) -> Snapshot:
        """The committed snapshot of an actor (for inspection)."""
        snap: Snapshot = self._call(self._read(ac, actor_id))
        return snap

    # ------------------------------------------------------------------ storage helpers
    async def _exists(self, ac: VirtualActorClass, actor_id: str) -> bool:
        return await self.storage.get(k_version(ac.type_name, actor_id)) is not None

    async def _create(self, ac: VirtualActorClass, actor_id: str, encoding: str, data: bytes) -> bool:
        t = ac.type_name
        now = time.time()
        snap = Snapshot(1, ac.schema_version, t, encoding, now, now, data)
        batch = Batch().require(k_version(t, actor_id), None)
        batch.put(k_version(t, actor_id), b"1").put(k_snapshot(t, actor_id), snap.pack())
        batch.put(k_listing(t, actor_id), b"")
        return await self.storage.commit(batch)

    async def _read(self, ac: VirtualActorClass, actor_id: str) -> Snapshot:
        raw = await self.storage.get(k_snapshot(ac.type_name, actor_id))
        if raw is None:
            raise ActorNotFoundError(ac.type_name, actor_id)
        snap = Snapshot.unpack(raw)
        self._remember(f"{ac.type_name}/{actor_id}", snap)
        return snap

    def _remember(self, key: str, snap: Snapshot) -> None:
        cached = self._cache.get(key)
        if cached is None or cached.snapshot.version <= snap.version:
            self._cache[key] = _Cached(snap, time.monotonic())
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _instance(self, ac: VirtualActorClass, snap: Snapshot) -> Any:
        state = snap.state()
        if snap.schema != ac.schema_version:
            if snap.schema > ac.schema_version:
                raise ActorStateError(
                    ac.type_name,
                    None,
                    f"stored schema {snap.schema} is newer than the code's {ac.schema_version}",
                )
            if ac.migrate is None:
                raise ActorStateError(
                    ac.type_name,
                    None,
                    f"stored schema {snap.schema} is older than {ac.schema_version} "
                    "and the class has no __migrate__",
                )
            state = ac.migrate(state, snap.schema)
        return restore(ac.cls, state, ac.custom_state)

    async def _delete(self, ac: VirtualActorClass, actor_id: str) -> None:
        t = ac.type_name
        key = f"{t}/{actor_id}"
        async with self._lock(key):
            outbox = await self.storage.list_keys(f"act/{t}/{actor_id}/out/")
            gone = (
                Batch()
                .delete(k_version(t, actor_id))
                .delete(k_snapshot(t, actor_id))
                .delete(k_listing(t, actor_id))
            )
            for k in outbox:
                gone.index_remove(OUTBOX_INDEX, f"{t}/{actor_id}/{k.rsplit('/', 1)[-1]}")
            for member, _ in await self.storage.index_range(idem_index(t, actor_id)):
                gone.index_remove(idem_index(t, actor_id), member)
            for timer_name in await self.timers_of(t, actor_id):
                gone.index_remove(TIMER_INDEX, timer_member(t, actor_id, timer_name))
            await self.storage.commit(gone)
            await self.storage.delete_prefix(f"act/{t}/{actor_id}/")
            self._cache.pop(key, None)
        await self._delete_owned_workflows(t, actor_id)

    async def _delete_owned_workflows(self, t: str, actor_id: str) -> None:
        """Delete the finished sub-workflows the actor launched (ids ``{type}:{id}:{version}``).
        Running ones are left to finish; they hold nothing of the actor's."""
        prefix = f"wfs/{t}:{actor_id}:"
        after = prefix
        while True:
            keys = [
                k
                for k in await self.storage.list_keys("wfs/", start_after=after, limit=200)
                if k.startswith(prefix)
            ]
            if not keys:
                return
            after = keys[-1]
            for k in keys:
                with contextlib.suppress(WorkflowRunningError, WorkflowNotFoundError):
                    await self.workflows._delete(k[len("wfs/") :])

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    # ------------------------------------------------------------------ calls
    async def call(
        self,
        ac: VirtualActorClass,
        actor_id: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        idempotency_key: str | None = None,
        firing: Firing | None = None,
        completion: _Completion | None = None,
    ) -> Any:
        """Run one call; see the module docstring for what is committed when."""
        info = ac.method(method)
        info.check_args(ac.type_name, args, kwargs)
        if info.readonly:
            return await self._call_readonly(ac, actor_id, info, args, kwargs)
        key = f"{ac.type_name}/{actor_id}"
        # The turn runs in a task of its own, so a caller that goes away (a cancelled await,
        # a client that disconnects) cannot interrupt a commit that has started.
        outcome: _Outcome = await asyncio.shield(
            start_now(
                self._locked_turn(key, ac, actor_id, info, args, kwargs, idempotency_key, firing, completion)
            )
        )
        for sender_type, sender_id, msg_id in outcome.messages:
            task = asyncio.ensure_future(self._deliver(sender_type, sender_id, msg_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        if outcome.workflow is not None:
            wid, lease = outcome.workflow
            if lease is None:  # a repeated call: the workflow exists already
                return await self.workflows._resume(wid)
            specs, counters = await self.workflows.store.load_dag(wid)
            run = asyncio.ensure_future(self.workflows._execute(wid, lease, specs, counters, fresh=True))
            return await asyncio.shield(run)
        return outcome.result

    async def _locked_turn(
        self,
        key: str,
        ac: VirtualActorClass,
        actor_id: str,
        info: MethodInfo,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        idem: str | None,
        firing: Firing | None = None,
        completion: _Completion | None = None,
    ) -> _Outcome:
        t = ac.type_name
        async with self._lock(key):
            for attempt in range(MAX_ATTEMPTS):
                cached = self._cache.get(key)
                if cached is not None and idem is None and firing is None and attempt == 0:
                    # An unkeyed call on a cached actor runs optimistically: the commit's
                    # compare-and-set catches a stale snapshot and the turn runs again below.
                    snap = cached.snapshot
                    cached.last_used = time.monotonic()
                else:
                    # One round trip: the current version (is the cached snapshot stale?) and,
                    # for a keyed call, whether it was already recorded, so a repeated key or a
                    # timer tick never runs the method again.
                    keys = [k_version(t, actor_id)] + (
                        [k_idem(t, actor_id, idem)] if idem is not None else []
                    )
                    current, *record = await self.storage.get_many(keys)
                    if record and record[0] is not None:
                        return self._decode_record(record[0])
                    if current is None:
                        raise ActorNotFoundError(t, actor_id)
                    if cached is not None and cached.snapshot.version == int(current):
                        snap = cached.snapshot
                    else:
                        snap = await self._read(ac, actor_id)
                try:
                    instance, turn, result = await self._invoke(
                        ac, actor_id, snap, info, args, kwargs, readonly=False, firing=firing
                    )
                except Exception:
                    # Only a failure on the latest state counts: re-check before reporting it.
                    if await self._is_stale(t, actor_id, snap):
                        self._cache.pop(key, None)
                        continue
                    raise
                committed = await self._commit_turn(
                    ac, actor_id, snap, instance, result, turn, idem, completion
                )
                if committed is not None:
                    return committed
                if completion is not None and completion.active:
                    # Was it the claim that failed (the timer replaced or cancelled meanwhile)?
                    # Then the tick's effect commits without touching the timer.
                    completion.active = await self.storage.get(completion.key) == completion.claimed
                self._cache.pop(key, None)
                await asyncio.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
        raise ActorConflictError(
            t, actor_id, f"actor {key}: gave up after {MAX_ATTEMPTS} conflicting commits"
        )

    async def _is_stale(self, t: str, actor_id: str, snap: Snapshot) -> bool:
        raw = await self.storage.get(k_version(t, actor_id))
        return raw is None or int(raw) != snap.version

    async def _invoke(
        self,
        ac: VirtualActorClass,
        actor_id: str,
        snap: Snapshot,
        info: MethodInfo,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        readonly: bool,
        firing: Firing | None = None,
    ) -> tuple[Any, Turn, Any]:
        """Run the method on a fresh instance restored from ``snap``.

        Returns the instance, the turn (the messages it sent, the timers it set) and the
        method's result. ``async def`` methods run on the loop; plain ones in the worker pool.
        For a plain method whose last run took at most ``sync_wait`` the loop waits in place
        (blocking, for at most ``sync_wait``) before it awaits the rest.
        """
        turn = Turn(ac.type_name, actor_id, readonly=readonly, runtime=self)
        instance = self._instance(ac, snap)
        if info.is_async:
            token = _current_turn.set(turn)
            _current_firing.set(firing)
            try:
                return instance, turn, await info.func(instance, *args, **kwargs)
            except Exception as exc:
                _mark_method_error(exc)
                raise
            finally:
                _current_turn.reset(token)

        key = (ac.type_name, info.name)
        took = [0.0]

        def run() -> Any:
            _current_turn.set(turn)
            _current_firing.set(firing)
            try:
                return _call_plain(info, instance, args, kwargs)
            except Exception as exc:
                _mark_method_error(exc)
                raise
            finally:
                took[0] = time.perf_counter() - submitted  # queueing counts: a busy pool is slow

        submitted = time.perf_counter()
        job = self._submit_method(contextvars.copy_context().run, run)
        wait = self.sync_wait
        if wait > 0 and self._quick.get(key, True):
            # A quick method is done before a hand-off through the loop would be: wait for it
            # here, so the turn does not suspend. The wait is bounded, so a method that waits
            # for other threads calling into this loop only delays them by that much.
            try:
                return instance, turn, job.result(timeout=wait)
            except TimeoutError:
                if job.done():  # done just after the wait ran out, or it raised TimeoutError itself
                    return instance, turn, job.result()
        try:
            result = await asyncio.wrap_future(job)
        finally:
            self._quick[key] = took[0] <= wait
        return instance, turn, result

    def _submit_method(self, fn: Any, *args: Any) -> concurrent.futures.Future[Any]:
        """Run a plain method in the worker pool, or in the overflow pool when every worker is
        taken (some may be waiting for the very turns this one would queue behind)."""
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

    async def _call_readonly(
        self,
        ac: VirtualActorClass,
        actor_id: str,
        info: MethodInfo,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        snap = await self._read(ac, actor_id)
        _, _, result = await self._invoke(ac, actor_id, snap, info, args, kwargs, readonly=True)
        if as_workflow(result) is not None:
            raise ActorError(
                ac.type_name,
                actor_id,
                f"read-only method {ac.type_name}.{info.name} cannot return a workflow step",
            )
        return result

    @staticmethod
    def _decode_record(raw: bytes) -> _Outcome:
        header, blob = _codec.unpack(raw)
        if "workflow" in header:
            return _Outcome(workflow=(header["workflow"], None))
        return _Outcome(result=_codec.loads(blob))

    async def _commit_turn(
        self,
        ac: VirtualActorClass,
        actor_id: str,
        snap: Snapshot,
        instance: Any,
        result: Any,
        turn: Turn,
        idem: str | None,
        completion: _Completion | None = None,
    ) -> _Outcome | None:
        t = ac.type_name
        name = f"{t}/{actor_id}"
        encoding, data = encode(capture(instance, ac.custom_state), actor=name)
        new = snap.successor(encoding, data, ac.schema_version)
        batch = Batch().require(k_version(t, actor_id), str(snap.version).encode())
        batch.put(k_version(t, actor_id), str(new.version).encode()).put(k_snapshot(t, actor_id), new.pack())
        outcome = _Outcome(result=result)
        wf = as_workflow(result)
        header: dict[str, Any] = {"at": time.time()}
        if wf is not None:
            from actorflow.workflow._raysupport import ensure_ray

            await asyncio.to_thread(ensure_ray)
            wid = f"{t}:{actor_id}:{new.version}"
            _, wbatch, lease = self.workflows._prepare(wf, wid, {"actor": name, "version": new.version})
            batch.merge(wbatch)
            outcome = _Outcome(workflow=(wid, lease))
            header["workflow"] = wid
            result = None
        now = time.time()
        for i, msg in enumerate(turn.messages):
            msg_id = f"{new.version}.{i}"
            blob, _ = _codec.dumps(msg, what=f"a message from {name}")
            batch.put(k_outbox(t, actor_id, msg_id), blob)
            batch.index_add(OUTBOX_INDEX, f"{t}/{actor_id}/{msg_id}", now)
            outcome.messages.append((t, actor_id, msg_id))
        for timer_name, timer in turn.timers.items():
            member = timer_member(t, actor_id, timer_name)
            if timer is None:
                batch.delete(k_timer(t, actor_id, timer_name)).index_remove(TIMER_INDEX, member)
            else:
                batch.put(k_timer(t, actor_id, timer_name), timer.encode())
                batch.index_add(TIMER_INDEX, member, timer.next_try)
        if idem is not None:
            blob, _ = _codec.dumps(result, what=f"the result of {name}")
            batch.put(k_idem(t, actor_id, idem), _codec.pack(header, blob))
            batch.index_add(idem_index(t, actor_id), idem, now)
        completing = completion if completion is not None and completion.active and idem else None
        if completing is not None and idem is not None:
            batch.require(k_idem(t, actor_id, idem), None)  # a tick is recorded once
            completing.add_to(batch, turn.timers)
        if not await self.storage.commit(batch):
            return None
        if completing is not None:
            completing.applied = True
        self._remember(name, new)
        if idem is not None:
            await self._maybe_trim(t, actor_id)
        return outcome

    async def _maybe_trim(self, t: str, actor_id: str) -> None:
        """Keep at most ``idempotency_records`` records per actor, none older than the TTL."""
        name = f"{t}/{actor_id}"
        n = self._commits_since_trim.get(name, 0) + 1
        self._commits_since_trim[name] = n
        if n < max(1, self.idempotency_records // 10):
            return
        self._commits_since_trim[name] = 0
        index = idem_index(t, actor_id)
        members = await self.storage.index_range(index)
        expired = [m for m, score in members if score < time.time() - self.idempotency_ttl]
        excess = len(members) - len(expired) - self.idempotency_records
        if excess > 0:
            expired += [m for m, _ in members[len(expired) : len(expired) + excess]]
        if expired:
            batch = Batch()
            for m in expired:
                batch.delete(k_idem(t, actor_id, m)).index_remove(index, m)
            await self.storage.commit(batch)

    # ------------------------------------------------------------------ messages
    async def _deliver(self, sender_type: str, sender_id: str, msg_id: str) -> None:
        key = k_outbox(sender_type, sender_id, msg_id)
        member = f"{sender_type}/{sender_id}/{msg_id}"
        try:
            raw = await self.storage.get(key)
            if raw is not None:
                msg: _Message = _codec.loads(raw)
                target = lookup(msg.target_type)
                try:
                    await self.call(
                        target, msg.target_id, msg.method, msg.args, msg.kwargs, msg.idem or f"msg:{member}"
                    )
                except (
                    ActorNotFoundError,
                    ActorTypeNotFoundError,
                    ActorMethodNotFoundError,
                    ActorArgumentsError,
                ) as exc:
                    log.warning("message %s dropped: it can never be delivered: %s", member, exc)
                except Exception as exc:
                    if not is_method_error(exc):
                        # Storage trouble, shutdown, contention: not the receiver's answer.
                        # The message stays in the outbox and the recovery loop retries it.
                        log.info("message %s not delivered yet: %r", member, exc)
                        return
                    log.warning(
                        "message %s: %s.%s raised %r; dropped", member, msg.target_type, msg.method, exc
                    )
            await self.storage.commit(Batch().delete(key).index_remove(OUTBOX_INDEX, member))
        except Exception:
            log.exception("delivering message %s failed; it will be retried", member)

    async def _recover_outbox_forever(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.recover_outbox()
            self.passivate_idle()
            await asyncio.sleep(1.0)

    def passivate_idle(self) -> int:
        """Drop cached actors unused for ``idle_seconds`` (their state is in storage; the next
        call reloads it). Returns how many were dropped."""
        horizon = time.monotonic() - self.idle_seconds
        idle = [key for key, entry in self._cache.items() if entry.last_used < horizon]
        for key in idle:
            del self._cache[key]
        return len(idle)

    async def recover_outbox(self) -> int:
        """Deliver messages left in outboxes longer than the grace period (their sender's
        process died before delivering them). Returns how many were attempted."""
        pending = await self.storage.index_range(
            OUTBOX_INDEX, max_score=time.time() - self.outbox_grace, limit=500
        )
        for member, _ in pending:
            sender_type, sender_id, msg_id = member.rsplit("/", 2)
            await self._deliver(sender_type, sender_id, msg_id)
        return len(pending)

    # ------------------------------------------------------------------ timers
    async def timers_of(self, t: str, actor_id: str) -> dict[str, Timer]:
        """The stored timers of one actor, by name."""
        prefix = f"act/{t}/{actor_id}/timer/"
        keys = await self.storage.list_keys(prefix)
        raws = await self.storage.get_many(keys)
        return {k[len(prefix) :]: Timer.decode(r) for k, r in zip(keys, raws, strict=True) if r is not None}

    async def timer_failures(self, t: str, actor_id: str) -> dict[str, Any]:
        prefix = f"act/{t}/{actor_id}/timerfail/"
        keys = await self.storage.list_keys(prefix)
        raws = await self.storage.get_many(keys)
        return {
            k[len(prefix) :]: _codec.json_loads(r) for k, r in zip(keys, raws, strict=True) if r is not None
        }

    async def set_timer(self, ac: VirtualActorClass, actor_id: str, name: str, **spec: Any) -> Timer:
        """Set a timer from outside the actor (HTTP). The actor must exist; validated first."""
        timer = make_timer(ac, name, **spec)
        t = ac.type_name
        version = await self.storage.get(k_version(t, actor_id))
        if version is None:
            raise ActorNotFoundError(t, actor_id)
        batch = Batch().require(k_version(t, actor_id), version)  # not while it is being deleted
        batch.put(k_timer(t, actor_id, name), timer.encode())
        batch.index_add(TIMER_INDEX, timer_member(t, actor_id, name), timer.next_try)
        if not await self.storage.commit(batch):
            return await self.set_timer(ac, actor_id, name, **spec)
        return timer

    async def cancel_timer(self, ac: VirtualActorClass, actor_id: str, name: str) -> bool:
        t = ac.type_name
        existed = await self.storage.get(k_timer(t, actor_id, name)) is not None
        batch = (
            Batch()
            .delete(k_timer(t, actor_id, name))
            .index_remove(TIMER_INDEX, timer_member(t, actor_id, name))
        )
        await self.storage.commit(batch)
        return existed

    async def _fire_timers_forever(self) -> None:
        """The scheduler: every ``tick_interval`` it claims the due timers and starts firing
        them, without waiting for earlier firings to finish (so a busy moment delays what falls
        due after it no more than it must)."""
        limit = asyncio.Semaphore(self.timer_concurrency)
        pending = 0

        async def fire(claim: _Completion) -> None:
            nonlocal pending
            try:
                async with limit:
                    await self._fire(claim)
            except Exception:
                log.exception("firing timer %s failed; it will be retried", claim.member)
            finally:
                pending -= 1

        while True:
            try:
                # Claim no more than this process will soon fire: the rest stay unclaimed in
                # storage, for other schedulers to take.
                room = self.timer_backlog - pending
                due = []
                if room > 0:
                    due = await self.storage.index_range(TIMER_INDEX, max_score=time.time(), limit=room)
                for claim in await self._claim([member for member, _ in due]):
                    pending += 1
                    task = asyncio.ensure_future(fire(claim))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
            except Exception:
                log.exception("the timer scheduler pass failed; trying again")
            await asyncio.sleep(self.tick_interval)

    async def fire_due(self, limit: int = 1000) -> dict[str, int]:
        """One scheduler pass: claim every timer due now, fire them and wait for the firings.
        Returns counts (fired, retried, failed; skipped: claimed elsewhere or changed meanwhile)."""
        counts = {"fired": 0, "retried": 0, "failed": 0, "skipped": 0}
        due = await self.storage.index_range(TIMER_INDEX, max_score=time.time(), limit=limit)
        claims = await self._claim([member for member, _ in due])
        counts["skipped"] = len(due) - len(claims)
        sem = asyncio.Semaphore(self.timer_concurrency)

        async def one(claim: _Completion) -> None:
            async with sem:
                counts[await self._fire(claim)] += 1

        await asyncio.gather(*(one(c) for c in claims))
        return counts

    async def _claim(self, members: list[str]) -> list[_Completion]:
        """Claim these due timers (index members), many per commit: each claim is a
        compare-and-set on the timer's record, so of two schedulers that find the same tick due
        only one claims it. A claim lasts ``CLAIM_SECONDS``; a scheduler that dies holding one
        leaves the tick to be fired by another once it lapses."""
        claims: list[_Completion] = []
        for start in range(0, len(members), CLAIM_BATCH):
            chunk = members[start : start + CLAIM_BATCH]
            keys = [_timer_key(m) for m in chunk]
            raws = await self.storage.get_many(keys)
            for _ in range(3):
                batch, taken = Batch(), []
                now = time.time()
                for member, key, raw in zip(chunk, keys, raws, strict=True):
                    if raw is None:  # cancelled: drop the stale index entry
                        await self.storage.commit(
                            Batch().require(key, None).index_remove(TIMER_INDEX, member)
                        )
                        continue
                    timer = Timer.decode(raw)
                    if timer.claim and timer.claim_until > now:
                        continue  # another scheduler is firing it
                    if not timer.claim and timer.next_try > now:
                        continue  # fired and moved on since the index was read
                    timer.claim, timer.claim_until = uuid.uuid4().hex, now + CLAIM_SECONDS
                    claimed = timer.encode()
                    batch.require(key, raw).put(key, claimed)
                    batch.index_add(TIMER_INDEX, member, timer.claim_until)
                    taken.append(_Completion(timer, key, member, claimed))
                if not taken:
                    break
                if await self.storage.commit(batch):
                    claims += taken
                    break
                # Another scheduler (or an actor) changed some of them: look again.
                raws = await self.storage.get_many(keys)
        return claims

    async def _fire(self, claim: _Completion) -> str:
        """Fire a claimed timer: call its method with the tick's idempotency key, in a turn
        that also advances (periodic) or removes (one-shot) the timer."""
        timer, key, member, claimed = claim.timer, claim.key, claim.member, claim.claimed
        t, actor_id, name = member.split("/", 2)
        now = time.time()
        missed = timer.missed_at(now)
        firing = Firing(name, timer.due, missed, timer.attempts + 1)
        completion = claim
        kwargs = dict(timer.kwargs)
        outcome = "fired"
        try:
            ac = lookup(t)
            info = ac.method(timer.method)
            if info.signature is not None and (
                "missed" in info.signature.parameters
                or any(p.kind is p.VAR_KEYWORD for p in info.signature.parameters.values())
            ):
                kwargs.setdefault("missed", missed)
            await self.call(
                ac,
                actor_id,
                timer.method,
                tuple(timer.args),
                kwargs,
                f"timer:{name}:{timer.due}",
                firing,
                completion,
            )
            if completion.applied:
                return "fired"  # the turn's commit advanced or removed the timer
        except Exception as exc:
            if isinstance(exc, (ActorNotFoundError, ActorTypeNotFoundError, ActorMethodNotFoundError)):
                await self.storage.commit(
                    Batch().require(key, claimed).delete(key).index_remove(TIMER_INDEX, member)
                )
                return "failed"
            if not is_method_error(exc) and not isinstance(exc, ActorArgumentsError):
                timer.claim, timer.claim_until, timer.next_try = None, 0.0, time.time() + 1.0
                await self._store_timer(key, claimed, member, timer)
                return "retried"
            timer.attempts += 1
            if timer.attempts < TIMER_MAX_ATTEMPTS:
                timer.claim, timer.claim_until = None, 0.0
                timer.next_try = time.time() + self.timer_backoff * 2 ** (timer.attempts - 1)
                await self._store_timer(key, claimed, member, timer)
                return "retried"
            failure = {
                "due": timer.due,
                "attempts": timer.attempts,
                "error": f"{type(exc).__name__}: {exc}",
                "at": time.time(),
            }
            await self.storage.put(k_timer_failure(t, actor_id, name), _codec.json_dumps(failure))
            log.warning(
                "timer %s failed %d times; giving up on tick %s: %r", member, timer.attempts, timer.due, exc
            )
            outcome = "failed"
        # The tick's turn did not carry the timer's next state (it was recorded already, the
        # timer changed meanwhile, or the method gave up): drop a one-shot timer, move a
        # periodic one to its next tick, as long as it is still as this firing claimed it.
        batch = Batch()
        claim.add_to(batch)
        await self.storage.commit(batch)
        return outcome

    async def _store_timer(self, key: str, claimed: bytes, member: str, timer: Timer) -> None:
        # Only if nobody replaced or cancelled the timer while it fired.
        batch = (
            Batch()
            .require(key, claimed)
            .put(key, timer.encode())
            .index_add(TIMER_INDEX, member, timer.next_try)
        )
        await self.storage.commit(batch)

    # ------------------------------------------------------------------ external events
    async def post_event(
        self, ac: VirtualActorClass, actor_id: str, event: str, payload: Any, event_id: str | None, wait: bool
    ) -> Any:
        """Store an external event for the actor's handler, then deliver it in a turn.

        Stored durably before this returns (the 202 promise); delivered exactly once per event
        id (the handler's idempotency key is ``event:{id}``). With ``wait`` the handler's
        result is returned; otherwise delivery happens in the background.
        """
        method = ac.event_handler(event)
        t = ac.type_name
        if await self.storage.get(k_version(t, actor_id)) is None:
            raise ActorNotFoundError(t, actor_id)
        _codec.check_json(payload, what="an event payload")
        event_id = event_id or uuid.uuid4().hex
        msg_id = "ev-" + hashlib.sha1(f"{event}\0{event_id}".encode()).hexdigest()[:24]
        msg = _Message(t, actor_id, method, (payload,), {}, idem=f"event:{event}:{event_id}")
        blob, _ = _codec.dumps(msg, what="an event")
        member = f"{t}/{actor_id}/{msg_id}"
        batch = Batch().put(k_outbox(t, actor_id, msg_id), blob).index_add(OUTBOX_INDEX, member, time.time())
        await self.storage.commit(batch)
        if wait:
            result = await self.call(ac, actor_id, method, (payload,), {}, msg.idem)
            await self.storage.commit(
                Batch().delete(k_outbox(t, actor_id, msg_id)).index_remove(OUTBOX_INDEX, member)
            )
            return result
        task = asyncio.ensure_future(self._deliver(t, actor_id, msg_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return None

    async def outbox_size(self) -> int:
        return len(await self.storage.index_range(OUTBOX_INDEX))

    def close(self) -> None:
        self._recovery.cancel()
        self._scheduler.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._overflow is not None:
            self._overflow.shutdown(wait=False, cancel_futures=True)


_runtimes: weakref.WeakKeyDictionary[WorkflowRuntime, ActorRuntime] = weakref.WeakKeyDictionary()
_runtimes_lock = threading.Lock()


def actor_runtime(workflows: WorkflowRuntime) -> ActorRuntime:
    """The actor runtime sharing ``workflows``' storage and loop (created on first use)."""
    with _runtimes_lock:
        rt = _runtimes.get(workflows)
        if rt is None:
            rt = _runtimes[workflows] = ActorRuntime(workflows)
            workflows.on_close(rt.close)
        return rt
