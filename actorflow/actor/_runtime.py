"""The actor runtime: load, run one turn, commit; deliver messages.

One turn of a writer method:

1. under a per-actor lock in this process (turns of one actor never overlap here),
2. rebuild a fresh instance from the last snapshot this process knows,
3. run the method (``async def`` methods on the loop; plain ones in a worker thread),
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
import json
import logging
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from actorflow import _codec
from actorflow._aio import start_now
from actorflow.actor._class import MethodInfo, VirtualActorClass, lookup
from actorflow.actor._state import Snapshot, Stamp, capture, encode, is_live, new_token, restore
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
    ActorEventNotFoundError,
    ActorMethodNotFoundError,
    ActorNotFoundError,
    ActorStateError,
    ActorTypeNotFoundError,
    IdempotencyKeyReusedError,
    IdempotencyWindowFullError,
    StorageUnavailableError,
    UnencodableResultError,
    WorkflowNotFoundError,
    WorkflowRunningError,
)
from actorflow.storage import Batch
from actorflow.workflow._compat import as_workflow
from actorflow.workflow._executor import lease_margin, ride_out
from actorflow.workflow._runtime import WorkflowRuntime
from actorflow.workflow._store import Lease

log = logging.getLogger("actorflow.actor")

MAX_ATTEMPTS = 200
OVERFLOW_THREADS = 1024  # created only as needed: at most as many as methods running at once
OUTBOX_INDEX = "outbox"
#: Keys deleted per commit when an actor is deleted (the first commit also writes the tombstone).
DELETE_CHUNK = 500
#: Keyed commits of one actor in this process between two trims of its idempotency records.
TRIM_EVERY = 100
#: Failed deliveries (events, messages whose handler raised) kept per actor, newest first.
FAILED_KEPT = 100


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


def k_failed(t: str, a: str, name: str) -> str:
    """A delivery to the actor (an event, a message) whose handler raised."""
    return f"act/{t}/{a}/failed/{name}"


#: The actor's own keys besides its version, snapshot and listing: what deletion removes.
_OWN_DIRS = ("idem/", "timer/", "timerfail/", "failed/", "out/")


#: Idempotency keys that callers choose (HTTP ``Idempotency-Key``, ``.options(idempotency_key=)``)
#: are stored under this prefix: the runtime's own keys (``timer:``, ``event:``, ``msg:``) live
#: beside them, and a caller must never be able to claim one (a call keyed ``timer:t:{due}``
#: would otherwise stand in for that tick, which would then never run).
CLIENT_KEY_PREFIX = "u:"


def client_key(key: str | None) -> str | None:
    """The key under which a caller's idempotency key is recorded."""
    return None if key is None else CLIENT_KEY_PREFIX + key


def fingerprint(method: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> str | None:
    """What an idempotency record remembers of its call's arguments: a hash of their canonical
    JSON, or ``None`` when they are not JSON (then only the method name is compared)."""
    try:
        text = json.dumps([list(args), kwargs], sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None
    return hashlib.sha256(f"{method}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass
class _Message:
    target_type: str
    target_id: str
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    idem: str | None = None  # the receiver's idempotency key (default: derived from the message id)
    event: str | None = None  # for an event posted to the actor: its name and id
    event_id: str | None = None


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


@dataclass(frozen=True)
class _Owned:
    """One key of an actor that deleting it removes, with its index entry if it has one."""

    key: str
    index: str | None = None
    member: str | None = None

    def add_to(self, batch: Batch) -> None:
        batch.delete(self.key)
        if self.index is not None and self.member is not None:
            batch.index_remove(self.index, self.member)


@dataclass
class _Cached:
    snapshot: Snapshot
    last_used: float


@dataclass
class _Outcome:
    """What a committed turn left to do outside the actor's lock."""

    result: Any = None
    encoded: bool = False  # ``result`` is already what the request's ``encode`` made of it
    workflow: tuple[str, Lease | None] | None = None
    messages: list[tuple[str, str, str]] = field(default_factory=list)  # (sender type, id, msg id)


_NOT_ENCODED = object()
_GONE = object()  # what _deliver returns for an outbox entry that was no longer there


#: Errors after which an outbox entry can never be delivered: it is dropped (and recorded).
_NEVER_DELIVERABLE = (
    ActorNotFoundError,
    ActorTypeNotFoundError,
    ActorMethodNotFoundError,
    ActorEventNotFoundError,
    ActorArgumentsError,
    IdempotencyKeyReusedError,
)


class _Dropped(Exception):
    """The delivery a turn was for is void: its inbox entry was taken (delivered, failed or
    deleted with the actor) or its timer tick's claim was lost (the timer replaced, cancelled,
    deleted, or claimed by another scheduler). The turn commits nothing."""


@dataclass
class _Inbox:
    """The outbox entry an event (or a message an actor sent itself) is delivered from: the
    turn that handles it requires the entry as read and removes it in its own commit, so an
    entry that a delete removed, or that another delivery took, is never handled."""

    key: str
    raw: bytes
    member: str
    taken: bool = False  # set when a turn's commit removed it


@dataclass(frozen=True)
class _Request:
    """How one writer call is to be run, besides its method and arguments."""

    key: str | None  # the idempotency key
    fingerprint: str | None  # of the arguments, recorded with the key (None: not JSON)
    check_reuse: bool  # whether a recorded key must match this call's method and arguments
    firing: Firing | None = None  # the timer tick this call fires
    completion: _Completion | None = None  # how that timer moves on, committed with the turn
    encode: Callable[[Any], Any] | None = None  # turns the result into what the caller sends
    inbox: _Inbox | None = None  # the outbox entry the call delivers, taken by its commit


@dataclass
class _Completion:
    """How a timer firing leaves its timer: committed in the same atomic write as the turn it
    fires (with the idempotency record), so a tick's effect and the record that it fired can
    never be separated. Only while the timer is still exactly as this firing claimed it."""

    timer: Timer
    key: str
    member: str
    claimed: bytes
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
    actor unused for ``idle_seconds`` is dropped from memory (passivated).

    Idempotency window: the result of a keyed call is kept ``idempotency_ttl`` seconds (24 h),
    and a repeat of the key within that time returns it without running the method again.
    Records are never dropped before their time; an actor holding ``idempotency_records``
    (100,000) unexpired ones refuses new keyed calls with :class:`IdempotencyWindowFullError`
    until some expire (checked every ``TRIM_EVERY`` keyed commits per process, so the bound
    may be passed by that many per process).
    """

    def __init__(
        self,
        workflows: WorkflowRuntime,
        *,
        cache_size: int = 10_000,
        idle_seconds: float = 600.0,
        threads: int = 64,
        idempotency_records: int = 100_000,
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
        self.outbox_retry = 5.0  # seconds before an entry whose delivery failed is tried again
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
        self._commits_since_trim: dict[str, int] = {}
        # Actors whose idempotency window was found full, with when that was last checked.
        self._full: dict[str, float] = {}
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
        try:
            instance = ac.new_instance(args, kwargs)  # user code runs in the caller's thread
        except Exception as exc:
            _mark_method_error(exc)
            raise
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
            self.call(ac, actor_id, method, args, kwargs, client_key(idempotency_key)), self.loop
        )

    def state(self, ac: VirtualActorClass, actor_id: str) -> Snapshot:
        """The committed snapshot of an actor (for inspection)."""
        snap: Snapshot = self._call(self._read(ac, actor_id))
        return snap

    # ------------------------------------------------------------------ storage helpers
    async def _exists(self, ac: VirtualActorClass, actor_id: str) -> bool:
        return is_live(await self.storage.get(k_version(ac.type_name, actor_id)))

    async def _create(self, ac: VirtualActorClass, actor_id: str, encoding: str, data: bytes) -> bool:
        """Store the first snapshot unless the actor exists. An id whose actor was deleted is
        swept of what that actor left (under its tombstone) first, and its version numbers
        continue from the tombstone's, so nothing of the old actor can pass for the new one's."""
        t = ac.type_name
        for _ in range(MAX_ATTEMPTS):
            current = await self.storage.get(k_version(t, actor_id))
            if current is None:
                version = 1
            else:
                stamp = Stamp.parse(current)
                if not stamp.deleted:
                    return False
                await self._sweep(t, actor_id, current)
                version = stamp.version + 1
            now = time.time()
            snap = Snapshot(version, ac.schema_version, t, encoding, now, now, data, new_token())
            batch = Batch().require(k_version(t, actor_id), current)
            batch.put(k_version(t, actor_id), snap.stamp).put(k_snapshot(t, actor_id), snap.pack())
            batch.put(k_listing(t, actor_id), b"")
            if await self.storage.commit(batch):
                self._remember(f"{t}/{actor_id}", snap, fresh=True)
                return True
            # Created (and perhaps deleted again) meanwhile by another caller: look again.
        raise ActorConflictError(t, actor_id, f"actor {t}/{actor_id}: creation kept conflicting")

    async def _read(self, ac: VirtualActorClass, actor_id: str, *, fresh: bool = False) -> Snapshot:
        """The stored snapshot. ``fresh``: it replaces whatever this process cached (a turn that
        found its cache stale); otherwise only a newer-numbered one does, so a slow reader
        cannot push an older snapshot over a newer one a turn just committed."""
        raw = await self.storage.get(k_snapshot(ac.type_name, actor_id))
        if raw is None:
            raise ActorNotFoundError(ac.type_name, actor_id)
        snap = Snapshot.unpack(raw)
        self._remember(f"{ac.type_name}/{actor_id}", snap, fresh=fresh)
        return snap

    def _remember(self, key: str, snap: Snapshot, *, fresh: bool = True) -> None:
        cached = self._cache.get(key)
        if fresh or cached is None or cached.snapshot.version < snap.version:
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
        """Delete the actor: one atomic commit replaces its version by a tombstone and removes
        its snapshot, listing and (up to ``DELETE_CHUNK``) its other keys; a sweep then removes
        any left, in commits that each require the tombstone. Every write to an actor's keys
        requires its live version, so nothing can be added after the tombstone, and a re-created
        actor sweeps whatever a crash left before it starts. Messages the actor sent to *other* actors stay
        and are still delivered (the turns that sent them were acknowledged). Idempotent."""
        t = ac.type_name
        key = f"{t}/{actor_id}"
        async with self._lock(key):
            for _ in range(MAX_ATTEMPTS):
                current = await self.storage.get(k_version(t, actor_id))
                if current is None:
                    return
                stamp = Stamp.parse(current)
                if stamp.deleted:
                    await self._sweep(t, actor_id, current)
                    break
                tomb = stamp.tombstone().encode()
                own = await self._own_keys(t, actor_id, DELETE_CHUNK + 1)
                batch = Batch().require(k_version(t, actor_id), current).put(k_version(t, actor_id), tomb)
                batch.delete(k_snapshot(t, actor_id)).delete(k_listing(t, actor_id))
                for gone in own[:DELETE_CHUNK]:
                    gone.add_to(batch)
                if await self.storage.commit(batch):
                    self._cache.pop(key, None)
                    # Writes that require the live version without changing it (a timer set
                    # over HTTP, an event, a failure record) may have landed after the listing
                    # above: none can land after the tombstone, so one sweep now finds them.
                    await self._sweep(t, actor_id, tomb)
                    break
                # A turn committed meanwhile: delete what it left too.
            else:
                raise ActorConflictError(t, actor_id, f"actor {key}: deletion kept conflicting")
        await self._delete_owned_workflows(t, actor_id, Stamp.parse(current).version)

    async def _own_keys(self, t: str, actor_id: str, limit: int) -> list[_Owned]:
        """Up to ``limit`` of the keys and index entries that deleting the actor removes."""
        out: list[_Owned] = []
        index = idem_index(t, actor_id)
        for member, _ in await self.storage.index_range(index, limit=limit):
            out.append(_Owned(k_idem(t, actor_id, member), index, member))
        for sub in _OWN_DIRS:
            prefix = f"act/{t}/{actor_id}/{sub}"
            after: str | None = None
            while len(out) < limit:
                keys = await self.storage.list_keys(prefix, start_after=after, limit=limit)
                if not keys:
                    break
                after = keys[-1]
                if sub == "out/":
                    keys = await self._inbox_only(t, actor_id, keys)
                for k in keys:
                    name = k[len(prefix) :]
                    if sub == "timer/":
                        out.append(_Owned(k, TIMER_INDEX, timer_member(t, actor_id, name)))
                    elif sub == "out/":
                        out.append(_Owned(k, OUTBOX_INDEX, f"{t}/{actor_id}/{name}"))
                    else:
                        out.append(_Owned(k))
            if len(out) >= limit:
                break
        return out[:limit]

    async def _inbox_only(self, t: str, actor_id: str, keys: list[str]) -> list[str]:
        """Of the actor's pending outbox entries, those addressed to itself (its events, its
        messages to itself): deleted with it. The rest are messages it sent others."""
        raws = await self.storage.get_many(keys)
        mine = []
        for k, raw in zip(keys, raws, strict=True):
            if raw is None:
                continue
            msg: _Message = _codec.loads(raw)
            if (msg.target_type, msg.target_id) == (t, actor_id):
                mine.append(k)
        return mine

    async def _sweep(self, t: str, actor_id: str, tomb: bytes) -> None:
        """Delete what a deleted actor left, in commits that each require its tombstone (so a
        sweep that runs late can never touch the keys of a re-created actor)."""
        while True:
            own = await self._own_keys(t, actor_id, DELETE_CHUNK)
            if not own:
                return
            batch = Batch().require(k_version(t, actor_id), tomb)
            for gone in own:
                gone.add_to(batch)
            if not await self.storage.commit(batch):
                return  # re-created meanwhile; its creator swept first

    async def _delete_owned_workflows(self, t: str, actor_id: str, upto: int) -> None:
        """Delete the finished sub-workflows the actor launched up to version ``upto``: ids
        ``{type}:{id}:{version}`` for exactly this id (``p``'s ``Flow:p:3``, never ``p:q``'s
        ``Flow:p:q:3``). Running ones are left to finish; they hold nothing of the actor's."""
        prefix = f"wfs/{t}:{actor_id}:"
        after: str | None = None
        while True:
            keys = await self.storage.list_keys(prefix, start_after=after, limit=200)
            if not keys:
                return
            after = keys[-1]
            for k in keys:
                version = k[len(prefix) :]
                if not version.isdigit() or int(version) > upto:
                    continue
                wid = k[len("wfs/") :]
                with contextlib.suppress(WorkflowRunningError, WorkflowNotFoundError):
                    meta, _, _ = await self.workflows.store.read_head(wid)
                    if meta.get("user_metadata", {}).get("actor") == f"{t}/{actor_id}":
                        await self.workflows._delete(wid)  # launched by it, not merely named so

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
        *,
        encode: Callable[[Any], Any] | None = None,
        check_reuse: bool = True,
        inbox: _Inbox | None = None,
    ) -> Any:
        """Run one call; see the module docstring for what is committed when.

        ``encode`` (for a caller that must send the result on, like the HTTP edge) turns the
        result into what this returns, and runs before the commit: a result it cannot encode
        (it raises) fails the call and leaves the actor unchanged. The output of a launched
        sub-workflow, which only exists after the commit, is encoded when it arrives.

        A keyed call whose key the actor recorded for another method, or for other arguments
        (compared when both are JSON), raises :class:`IdempotencyKeyReusedError` and changes
        nothing, unless ``check_reuse`` is false (timer firings, whose ``missed`` count may
        differ between attempts at one tick).
        """
        info = ac.method(method)
        info.check_args(ac.type_name, args, kwargs)
        if info.readonly:
            result = await self._call_readonly(ac, actor_id, info, args, kwargs)
            return result if encode is None else encode(result)
        key = f"{ac.type_name}/{actor_id}"
        request = _Request(
            idempotency_key,
            fingerprint(method, args, kwargs) if idempotency_key is not None and check_reuse else None,
            check_reuse,
            firing,
            completion,
            encode,
            inbox,
        )
        # The turn runs in a task of its own, so a caller that goes away (a cancelled await,
        # a client that disconnects) cannot interrupt a commit that has started.
        outcome: _Outcome = await asyncio.shield(
            start_now(self._locked_turn(key, ac, actor_id, info, args, kwargs, request))
        )
        for sender_type, sender_id, msg_id in outcome.messages:
            task = asyncio.ensure_future(self._deliver(sender_type, sender_id, msg_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return await self._finish(outcome, encode)

    async def _finish(self, outcome: _Outcome, encode: Callable[[Any], Any] | None) -> Any:
        """A turn's result as its caller gets it: the output of the sub-workflow it launched
        (run here if this turn launched it), ``encode``d if asked."""
        if outcome.workflow is not None:
            wid, lease = outcome.workflow
            if lease is None:  # a repeated call: the workflow exists already
                result = await self.workflows._resume(wid)
            else:
                # Committed with the turn, so it must start now: a storage blip only delays it.
                deadline = lease.expires - lease_margin(self.workflows.lease_ttl)
                specs, counters = await ride_out(
                    lambda: self.workflows.store.load_dag(wid), lambda: deadline, "starting a sub-workflow"
                )
                run = asyncio.ensure_future(self.workflows._execute(wid, lease, specs, counters, fresh=True))
                result = await asyncio.shield(run)
            return result if encode is None else encode(result)
        if encode is not None and not outcome.encoded:
            return encode(outcome.result)  # a replayed record
        return outcome.result

    async def _locked_turn(
        self,
        key: str,
        ac: VirtualActorClass,
        actor_id: str,
        info: MethodInfo,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        request: _Request,
    ) -> _Outcome:
        t = ac.type_name
        idem = request.key
        async with self._lock(key):
            for attempt in range(MAX_ATTEMPTS):
                cached = self._cache.get(key)
                if cached is not None and idem is None and request.firing is None and attempt == 0:
                    # An unkeyed call on a cached actor runs optimistically: the commit's
                    # compare-and-set catches a stale snapshot and the turn runs again below.
                    snap = cached.snapshot
                    cached.last_used = time.monotonic()
                else:
                    # One round trip: the current version (is the cached snapshot stale?) and,
                    # for a keyed call, whether it was already recorded, so a repeated key or a
                    # timer tick never runs the method again.
                    inbox = request.inbox
                    keys = [k_version(t, actor_id)]
                    keys += [k_idem(t, actor_id, idem)] if idem is not None else []
                    keys += [inbox.key] if inbox is not None else []
                    current, *rest = await self.storage.get_many(keys)
                    record = rest[0] if idem is not None else None
                    if not is_live(current):
                        self._cache.pop(key, None)
                        raise ActorNotFoundError(t, actor_id)
                    if record is not None:
                        return self._replay(t, actor_id, info.name, request, record)
                    if inbox is not None and rest[-1] != inbox.raw:
                        raise _Dropped(f"{inbox.member} was taken meanwhile")
                    if idem is not None and key in self._full:
                        await self._check_window(t, actor_id)
                    if cached is not None and cached.snapshot.stamp == current:
                        snap = cached.snapshot
                    else:
                        snap = await self._read(ac, actor_id, fresh=True)
                encoded: Any = _NOT_ENCODED
                try:
                    instance, turn, result = await self._invoke(
                        ac, actor_id, snap, info, args, kwargs, readonly=False, firing=request.firing
                    )
                    if request.encode is not None and as_workflow(result) is None:
                        encoded = request.encode(result)  # before the commit: unencodable fails it
                except Exception:
                    # Only a failure on the latest state counts: re-check before reporting it.
                    if await self._is_stale(t, actor_id, snap):
                        self._cache.pop(key, None)
                        continue
                    raise
                committed = await self._commit_turn(ac, actor_id, snap, instance, result, turn, info, request)
                if committed is not None:
                    if encoded is not _NOT_ENCODED:
                        committed.result, committed.encoded = encoded, True
                    return committed
                completion = request.completion
                if completion is not None and await self.storage.get(completion.key) != completion.claimed:
                    # The claim is lost: the timer was replaced, cancelled or deleted with the
                    # actor (then its tick must not fire on whatever holds the id now), or
                    # another scheduler took the tick over (it fires it under the same key).
                    raise _Dropped(f"the claim on {completion.member} was lost")
                self._cache.pop(key, None)
                await asyncio.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
        raise ActorConflictError(
            t, actor_id, f"actor {key}: gave up after {MAX_ATTEMPTS} conflicting commits"
        )

    async def _is_stale(self, t: str, actor_id: str, snap: Snapshot) -> bool:
        return await self.storage.get(k_version(t, actor_id)) != snap.stamp

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
        method's result. ``async def`` methods run on the loop; plain ones in the worker pool,
        so they may block, and the loop serves other turns meanwhile.
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

        def run() -> Any:
            _current_turn.set(turn)
            _current_firing.set(firing)
            try:
                return _call_plain(info, instance, args, kwargs)
            except Exception as exc:
                _mark_method_error(exc)
                raise

        job = self._submit_method(contextvars.copy_context().run, run)
        return instance, turn, await asyncio.wrap_future(job)

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

    def _replay(self, t: str, actor_id: str, method: str, request: _Request, raw: bytes) -> _Outcome:
        """The outcome a keyed call recorded, for a repeat of it (a reused key raises)."""
        header, blob = _codec.unpack(raw)
        if request.check_reuse:
            recorded_method, recorded_fp = header.get("m"), header.get("fp")
            other_method = recorded_method is not None and recorded_method != method
            if other_method or (request.fingerprint and recorded_fp and recorded_fp != request.fingerprint):
                what = f"method {recorded_method!r}" if other_method else "other arguments"
                key = str(request.key).removeprefix(CLIENT_KEY_PREFIX)
                raise IdempotencyKeyReusedError(
                    t,
                    actor_id,
                    key,
                    f"idempotency key {key!r} was already used on {t}/{actor_id} with {what}; "
                    "the first call's result stands and this call changed nothing",
                )
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
        info: MethodInfo,
        request: _Request,
    ) -> _Outcome | None:
        t = ac.type_name
        name = f"{t}/{actor_id}"
        idem = request.key
        encoding, data = encode(capture(instance, ac.custom_state), actor=name)
        new = snap.successor(encoding, data, ac.schema_version)
        batch = Batch().require(k_version(t, actor_id), snap.stamp)
        batch.put(k_version(t, actor_id), new.stamp).put(k_snapshot(t, actor_id), new.pack())
        outcome = _Outcome(result=result)
        wf = as_workflow(result)
        header: dict[str, Any] = {"at": time.time(), "m": info.name, "fp": request.fingerprint}
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
            # The token makes the id unique even where a rolled-back storage repeats numbers.
            msg_id = f"{new.version}.{new.token}.{i}"
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
            batch.require(k_idem(t, actor_id, idem), None)  # a key is recorded once
            batch.put(k_idem(t, actor_id, idem), _codec.pack(header, blob))
            batch.index_add(idem_index(t, actor_id), idem, now)
        completion = request.completion
        if completion is not None:
            completion.add_to(batch, turn.timers)
        inbox = request.inbox
        if inbox is not None:
            batch.require(inbox.key, inbox.raw).delete(inbox.key).index_remove(OUTBOX_INDEX, inbox.member)
        if not await self.storage.commit(batch):
            return None
        if completion is not None:
            completion.applied = True
        if inbox is not None:
            inbox.taken = True
        self._remember(name, new)
        if idem is not None:
            try:
                await self._maybe_trim(t, actor_id)
            except Exception as exc:  # the turn is committed: its caller must hear so
                log.warning("trimming the idempotency records of %s failed: %r", name, exc)
        return outcome

    async def _maybe_trim(self, t: str, actor_id: str) -> None:
        """Every ``TRIM_EVERY`` keyed commits of an actor in this process, trim its records."""
        name = f"{t}/{actor_id}"
        n = self._commits_since_trim.get(name, 0) + 1
        self._commits_since_trim[name] = n
        if n >= TRIM_EVERY:
            self._commits_since_trim[name] = 0
            await self._trim(t, actor_id)

    async def _trim(self, t: str, actor_id: str) -> None:
        """Drop the actor's idempotency records older than ``idempotency_ttl`` (never a younger
        one), then note whether it still holds ``idempotency_records`` of them: while it does,
        new keyed calls are refused (:meth:`_check_window`)."""
        name = f"{t}/{actor_id}"
        index = idem_index(t, actor_id)
        horizon = time.time() - self.idempotency_ttl
        for _ in range(MAX_ATTEMPTS):
            due = await self.storage.index_range(index, max_score=horizon, limit=DELETE_CHUNK)
            expired = [member for member, _ in due]
            keys = [k_idem(t, actor_id, m) for m in expired]
            # Each record exactly as read: a key deleted and written again meanwhile (by
            # another trim and a new call, or a delete and re-create) holds a fresh record
            # whose window has just begun.
            batch = Batch()
            for k, m, raw in zip(keys, expired, await self.storage.get_many(keys), strict=True):
                batch.require(k, raw).delete(k).index_remove(index, m)
            if expired and not await self.storage.commit(batch):
                continue
            if len(expired) < DELETE_CHUNK:
                break
        if await self.storage.index_count(index) >= self.idempotency_records:
            self._full[name] = time.monotonic()
        else:
            self._full.pop(name, None)

    async def _check_window(self, t: str, actor_id: str) -> None:
        """Refuse a new keyed call on an actor whose idempotency window is full (checked again
        at most once a second), rather than forget a record a retry may still need."""
        name = f"{t}/{actor_id}"
        if time.monotonic() - self._full.get(name, 0.0) >= 1.0:
            await self._trim(t, actor_id)
        if name not in self._full:
            return
        oldest = await self.storage.index_range(idem_index(t, actor_id), limit=1)
        retry_after = max(1.0, oldest[0][1] + self.idempotency_ttl - time.time()) if oldest else 1.0
        raise IdempotencyWindowFullError(
            t,
            actor_id,
            f"actor {name} holds {self.idempotency_records} idempotency records from the last "
            f"{self.idempotency_ttl:.0f} s, as many as it keeps; retry the call later",
            retry_after,
        )

    # ------------------------------------------------------------------ messages
    async def _deliver(
        self,
        sender_type: str,
        sender_id: str,
        msg_id: str,
        *,
        wait: bool = False,
        encode: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Deliver one outbox entry (a message, or an event posted to the actor) and remove it.

        The receiver's idempotency key makes a repeated delivery harmless. An entry addressed
        to its own actor (an event) is taken by the commit of the turn that handles it, so an
        entry a delete removed, or another delivery took, is never handled; a message to
        another actor is removed after the receiver's turn. If the receiver's method raises,
        the delivery is recorded as failed on the receiver (``failed/`` keys, shown by
        ``GET /v1/actors/{type}/{id}``) in the commit that removes the entry. Anything else
        (storage trouble, a refused keyed call, shutdown) leaves the entry for the recovery
        loop, a few seconds later. Returns the receiver's result (``encode``d), or ``_GONE``
        when the entry was no longer there; with ``wait`` every error is raised, otherwise
        errors are logged.
        """
        key = k_outbox(sender_type, sender_id, msg_id)
        member = f"{sender_type}/{sender_id}/{msg_id}"
        raw: bytes | None = None
        msg: _Message | None = None
        try:
            raw = await self.storage.get(key)
            if raw is None:  # taken meanwhile; drop an index entry it may have left
                await self.storage.commit(Batch().require(key, None).index_remove(OUTBOX_INDEX, member))
                return _GONE
            msg = _codec.loads(raw)
            assert msg is not None
            own = (msg.target_type, msg.target_id) == (sender_type, sender_id)
            inbox = _Inbox(key, raw, member) if own else None
            try:
                result = await self.call(
                    lookup(msg.target_type),
                    msg.target_id,
                    msg.method,
                    msg.args,
                    msg.kwargs,
                    msg.idem or f"msg:{member}",
                    encode=encode,
                    inbox=inbox,
                )
            except _NEVER_DELIVERABLE as exc:
                if not is_method_error(exc):  # (if the method raised it, it is handled below)
                    log.warning("message %s dropped: it can never be delivered: %s", member, exc)
                    await self._record_failure(key, raw, member, msg, exc)
                raise
            if inbox is None or not inbox.taken:  # a message, or a repeat answered from its record
                await self.storage.commit(
                    Batch().require(key, raw).delete(key).index_remove(OUTBOX_INDEX, member)
                )
            return result
        except Exception as exc:
            final = is_method_error(exc) or isinstance(exc, UnencodableResultError)
            if final and raw is not None and msg is not None:
                log.warning("message %s: its handler raised %r", member, exc)
                await self._record_failure(key, raw, member, msg, exc)
            elif not isinstance(exc, _NEVER_DELIVERABLE):
                # Storage trouble, shutdown, contention, a full idempotency window: not the
                # receiver's answer. The entry stays, and the recovery loop tries again later.
                log.info("message %s not delivered yet: %r", member, exc)
                with contextlib.suppress(Exception):
                    await self._postpone(key, member)
            if wait:
                raise
            return None

    async def _postpone(self, key: str, member: str) -> None:
        """Move an undelivered entry's turn in the recovery loop ``outbox_retry`` seconds on, so
        that entries that keep failing do not hold up the others behind them."""
        raw = await self.storage.get(key)
        if raw is not None:
            when = time.time() + self.outbox_retry - self.outbox_grace
            await self.storage.commit(Batch().require(key, raw).index_add(OUTBOX_INDEX, member, when))

    async def _record_failure(
        self, key: str, raw: bytes, member: str, msg: _Message, exc: BaseException
    ) -> None:
        """Remove the outbox entry as this delivery read it and, if the receiver still exists,
        record on it that the delivery failed and why; both in one commit, so a failure is
        never lost, nor recorded (or handled) twice by two deliveries of one entry."""
        t, actor_id = msg.target_type, msg.target_id
        now = time.time()
        record = {
            "at": now,
            "method": msg.method,
            "error": f"{type(exc).__name__}: {exc}",
            "builtin": next(c.__name__ for c in type(exc).__mro__ if c.__module__ == "builtins"),
        }
        if msg.event is not None:
            record.update(kind="event", event=msg.event, event_id=msg.event_id)
        else:
            sender = member.rsplit("/", 1)[0]
            record.update(kind="message", sender=sender, message_id=member)
        # Time-ordered names, so the oldest are the first listed (and trimmed first).
        name = f"{int(now * 1000):013d}.{hashlib.sha1(member.encode()).hexdigest()[:12]}"
        for _ in range(MAX_ATTEMPTS):
            current, entry = await self.storage.get_many([k_version(t, actor_id), key])
            if entry != raw:
                return  # another delivery took it (and recorded what became of it)
            batch = Batch().require(key, raw).delete(key).index_remove(OUTBOX_INDEX, member)
            if is_live(current):
                batch.require(k_version(t, actor_id), current)
                batch.put(k_failed(t, actor_id, name), _codec.json_dumps(record))
            if await self.storage.commit(batch):
                break
            await asyncio.sleep(random.uniform(0, 0.01))  # the receiver committed meanwhile
        prefix = f"act/{t}/{actor_id}/failed/"
        kept = await self.storage.list_keys(prefix)
        if len(kept) > FAILED_KEPT:
            old = Batch()
            for k in kept[: len(kept) - FAILED_KEPT]:
                old.delete(k)
            await self.storage.commit(old)

    async def failures_of(self, t: str, actor_id: str) -> list[dict[str, Any]]:
        """The actor's failed deliveries (events and messages whose handler raised), newest
        first, at most ``FAILED_KEPT``."""
        keys = await self.storage.list_keys(f"act/{t}/{actor_id}/failed/")
        raws = await self.storage.get_many(keys)
        return [_codec.json_loads(r) for r in reversed(raws) if r is not None]

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
        """The stored timers of one actor, by name (none for an actor that does not exist)."""
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
        for _ in range(MAX_ATTEMPTS):
            version = await self.storage.get(k_version(t, actor_id))
            if not is_live(version):
                raise ActorNotFoundError(t, actor_id)
            # Only on the live version: never on a deleted actor, whose keys must stay gone.
            batch = Batch().require(k_version(t, actor_id), version)
            batch.put(k_timer(t, actor_id, name), timer.encode())
            batch.index_add(TIMER_INDEX, timer_member(t, actor_id, name), timer.next_try)
            if await self.storage.commit(batch):
                return timer
        raise ActorConflictError(t, actor_id, f"actor {t}/{actor_id}: setting timer {name!r} kept failing")

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

        down = False  # storage unreachable: said once per outage, not on every pass
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
                if down:
                    log.warning("the timer scheduler reaches storage again")
                    down = False
            except StorageUnavailableError as exc:
                if not down:
                    log.warning("the timer scheduler cannot reach storage; trying again: %s", exc)
                    down = True
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
        failed = Batch()
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
                check_reuse=False,
            )
            if completion.applied:
                return "fired"  # the turn's commit advanced or removed the timer
        except _Dropped:
            return "skipped"  # the claim was lost: the timer changed, or another fires the tick
        except Exception as exc:
            gone = (ActorNotFoundError, ActorTypeNotFoundError, ActorMethodNotFoundError)
            if isinstance(exc, gone) and not is_method_error(exc):  # not one a nested call raised
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
            failed = Batch().put(k_timer_failure(t, actor_id, name), _codec.json_dumps(failure))
            log.warning(
                "timer %s failed %d times; giving up on tick %s: %r", member, timer.attempts, timer.due, exc
            )
            outcome = "failed"
        # The tick's turn did not carry the timer's next state (it was recorded already, or the
        # method gave up): drop a one-shot timer, move a periodic one to its next tick, as
        # long as it is still as this firing claimed it. A failure record goes with it, on the
        # actor's live version too (a deleted actor must keep nothing).
        for _ in range(MAX_ATTEMPTS):
            batch = Batch()
            if failed:
                current = await self.storage.get(k_version(t, actor_id))
                if is_live(current):
                    batch.merge(failed).require(k_version(t, actor_id), current)
            claim.add_to(batch)
            if await self.storage.commit(batch) or await self.storage.get(key) != claimed:
                break
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
        self,
        ac: VirtualActorClass,
        actor_id: str,
        event: str,
        payload: Any,
        event_id: str | None,
        wait: bool,
        *,
        encode: Callable[[Any], Any] | None = None,
    ) -> tuple[bool, Any]:
        """Store an external event for the actor's handler, then deliver it in a turn.

        Everything that can refuse the event is checked before it is stored (the handler
        exists and takes the payload, the actor exists, its idempotency window has room), so a
        refusal changes nothing. Once stored (durably, on the actor's live version: never for
        a deleted actor), it is accepted: delivered exactly once per event id (the handler's
        idempotency key is ``event:{name}:{id}``); posting it again changes nothing, and
        posting an id again with another payload raises :class:`IdempotencyKeyReusedError`.

        Returns ``(handled, result)``. Without ``wait``: ``(False, None)``, delivery goes on in
        the background. With ``wait``: ``(True, result)`` (``encode``d) once the handler ran;
        its error is raised (and recorded as a failed event on the actor); if it cannot run
        yet (storage trouble, a full window), ``(False, None)``: the event stays accepted.
        """
        method = ac.event_handler(event)
        ac.method(method).check_args(ac.type_name, (payload,), {})
        t = ac.type_name
        _codec.check_json(payload, what="an event payload")
        event_id = event_id or uuid.uuid4().hex
        msg_id = "ev-" + hashlib.sha1(f"{event}\0{event_id}".encode()).hexdigest()[:24]
        idem = f"event:{event}:{event_id}"
        msg = _Message(t, actor_id, method, (payload,), {}, idem=idem, event=event, event_id=event_id)
        blob, _ = _codec.dumps(msg, what="an event")
        member = f"{t}/{actor_id}/{msg_id}"
        key = k_outbox(t, actor_id, msg_id)
        request = _Request(idem, fingerprint(method, (payload,), {}), True)
        for _ in range(MAX_ATTEMPTS):
            current, pending, record = await self.storage.get_many(
                [k_version(t, actor_id), key, k_idem(t, actor_id, idem)]
            )
            if not is_live(current):
                raise ActorNotFoundError(t, actor_id)
            if record is not None:  # handled already: the recorded answer, nothing new
                outcome = self._replay(t, actor_id, method, request, record)
                return (True, await self._finish(outcome, encode)) if wait else (False, None)
            if pending is not None:  # posted already and not handled yet
                stored: _Message = _codec.loads(pending)
                if fingerprint(method, stored.args, {}) != request.fingerprint:
                    raise IdempotencyKeyReusedError(
                        t,
                        actor_id,
                        event_id,
                        f"event {event!r} with id {event_id!r} was already posted to {t}/{actor_id} "
                        "with another payload; the first one stands and this post changed nothing",
                    )
                if not wait:
                    return False, None  # its first delivery (or the recovery loop) handles it
                break
            if f"{t}/{actor_id}" in self._full:
                await self._check_window(t, actor_id)
            batch = Batch().require(k_version(t, actor_id), current).require(key, None)
            batch.put(key, blob).index_add(OUTBOX_INDEX, member, time.time())
            if await self.storage.commit(batch):
                break
        else:
            raise ActorConflictError(t, actor_id, f"actor {t}/{actor_id}: storing an event kept failing")
        if not wait:
            task = asyncio.ensure_future(self._deliver(t, actor_id, msg_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return False, None
        try:
            result = await self._deliver(t, actor_id, msg_id, wait=True, encode=encode)
        except Exception as exc:
            if is_method_error(exc) or isinstance(exc, (UnencodableResultError, *_NEVER_DELIVERABLE)):
                raise  # the handler's own answer, or an event that can never be handled
            return False, None  # accepted; it will be handled when it can
        if result is not _GONE:
            return True, result
        # Another delivery took the entry meanwhile: answer from what it left.
        current, record = await self.storage.get_many([k_version(t, actor_id), k_idem(t, actor_id, idem)])
        if record is not None:
            return True, await self._finish(self._replay(t, actor_id, method, request, record), encode)
        if not is_live(current):
            raise ActorNotFoundError(t, actor_id)
        raise ActorConflictError(
            t, actor_id, f"event {event!r} {event_id!r} was handled by another delivery, which failed"
        )

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
