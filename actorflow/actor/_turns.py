"""One call on an actor: load, run the method, commit with a compare-and-set; or read-only.

A writer turn, under the actor's lock in this process:

1. take the snapshot: an unkeyed call on a cached actor runs on the cached one at once (the
   commit catches a stale one); otherwise one round trip reads the version (and, for a keyed
   call, whether the key was recorded, so a repeat never runs the method again);
2. run the method on a fresh instance restored from it (:mod:`actorflow.actor._methods`);
3. commit in ONE atomic batch the new snapshot and version stamp, the idempotency record, the
   messages the turn sent (an outbox), the timers it set, the sub-workflow it launched, the
   next state of the timer it fired and the inbox entry it handled, on the condition that the
   version stamp is still the one the turn started from.

If another process committed in between, the commit fails, the snapshot is read again and the
turn runs again, so no update is ever lost. A method that raises commits nothing (a failure is
only reported once re-checked against the latest state). Read-only methods read the committed
snapshot and commit nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from actorflow import _codec, _metrics, _tracing
from actorflow._aio import start_now
from actorflow.actor import _idempotency
from actorflow.actor._cache import SnapshotCache, instance_of
from actorflow.actor._class import MethodInfo, VirtualActorClass
from actorflow.actor._config import ActorConfig
from actorflow.actor._context import Turn
from actorflow.actor._keys import (
    OUTBOX_INDEX,
    TIMER_INDEX,
    actor_name,
    idem_index,
    k_idem,
    k_listing,
    k_outbox,
    k_snapshot,
    k_timer,
    k_version,
    outbox_member,
    timer_member,
    workflow_id,
)
from actorflow.actor._methods import MethodRunner, is_method_error, mark_method_error, set_error_status
from actorflow.actor._state import Snapshot, capture, encode, is_live
from actorflow.actor._timers import Completion, Firing, TimerBell
from actorflow.engine import Lease, WorkflowEngine, as_workflow
from actorflow.errors import ActorConflictError, ActorError, ActorNotFoundError
from actorflow.storage import Batch, Storage

log = logging.getLogger("actorflow.actor")

#: Conflicting commits a turn runs again before it gives up (``ActorConflictError``).
MAX_ATTEMPTS = 200
_NOT_ENCODED = object()


class Dropped(Exception):
    """The delivery a turn was for is void: its inbox entry was taken (delivered, failed or
    deleted with the actor) or its timer tick's claim was lost (the timer replaced, cancelled,
    deleted, or claimed by another scheduler). The turn commits nothing."""


@dataclass
class Inbox:
    """The outbox entry an event (or a message an actor sent itself) is delivered from: the
    turn that handles it requires the entry as read and removes it in its own commit, so an
    entry that a delete removed, or that another delivery took, is never handled."""

    key: str
    raw: bytes
    member: str
    taken: bool = False  # set when a turn's commit removed it


@dataclass(frozen=True)
class Request:
    """How one writer call is to be run, besides its method and arguments."""

    key: str | None = None  # the idempotency key
    fingerprint: str | None = None  # of the arguments, recorded with the key (None: not JSON)
    check_reuse: bool = True  # whether a recorded key must match this call's method and arguments
    firing: Firing | None = None  # the timer tick this call fires
    completion: Completion | None = None  # how that timer moves on, committed with the turn
    encode: Callable[[Any], Any] | None = None  # turns the result into what the caller sends
    inbox: Inbox | None = None  # the outbox entry the call delivers, taken by its commit


@dataclass
class Outcome:
    """What a committed (or recorded) turn left to do outside the actor's lock."""

    result: Any = None
    encoded: bool = False  # ``result`` is already what the request's ``encode`` made of it
    workflow: tuple[str, Lease | None] | None = None  # launched (with its lease) or recorded
    messages: list[tuple[str, str, str]] = field(default_factory=list)  # (sender type, id, msg id)


def declared(ac: VirtualActorClass, exc: BaseException) -> None:
    """Note on an exception user code raised the status its class declared for it."""
    if is_method_error(exc):
        status = ac.error_status(exc)
        if status is not None:
            set_error_status(exc, status)


class Turns:
    """Runs the calls of one runtime. ``sent`` is told of every message a committed turn sent
    (to deliver it); the runtime passes its outbox's."""

    def __init__(
        self,
        storage: Storage,
        cache: SnapshotCache,
        methods: MethodRunner,
        engine: WorkflowEngine,
        config: ActorConfig,
        runtime: Any,
        sent: Callable[[str, str, str], None],
        bell: TimerBell,
    ) -> None:
        self.storage = storage
        self.cache = cache
        self.methods = methods
        self.engine = engine
        self.config = config
        self.runtime = runtime  # what a method's handles call into (Turn.runtime)
        self.sent = sent
        self.bell = bell  # rung by a commit that sets, moves or removes a timer
        self.window = _idempotency.Window(storage, config)

    async def call(
        self,
        ac: VirtualActorClass,
        actor_id: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        request: Request,
    ) -> Any:
        """Run one call and return its result (``request.encode``d).

        ``encode`` (for a caller that must send the result on, like the HTTP edge) runs before
        the commit: a result it cannot encode (it raises) fails the call and leaves the actor
        unchanged. The output of a launched sub-workflow, which only exists after the commit,
        is encoded when it arrives. A keyed call whose key the actor recorded for another
        method, or for other arguments, raises ``IdempotencyKeyReusedError`` unless
        ``check_reuse`` is false (timer firings, whose ``missed`` count may differ between
        attempts at one tick).
        """
        info = ac.method(method)
        info.check_args(ac.type_name, args, kwargs)
        started = time.perf_counter()
        timer: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if request.firing is not None:
            if request.firing.attempt == 1:
                lateness = max(0.0, self.config.clock.time() - request.firing.due)
                _metrics.observe("actorflow_timer_lateness_seconds", lateness, (ac.type_name,))
            setter = request.completion.timer.trace if request.completion is not None else None
            timer = _tracing.span(f"timer {ac.type_name}.{request.firing.name}", link=setter)
        attributes = {"actorflow.actor_type": ac.type_name, "actorflow.method": info.name}
        with timer, _tracing.span(f"turn {ac.type_name}.{info.name}", attributes=attributes):
            return await self._call(ac, actor_id, info, args, kwargs, request, started)

    async def _call(
        self,
        ac: VirtualActorClass,
        actor_id: str,
        info: MethodInfo,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        request: Request,
        started: float,
    ) -> Any:
        status = "error"
        try:
            if info.readonly:
                result = await self._call_readonly(ac, actor_id, info, args, kwargs)
                result = result if request.encode is None else request.encode(result)
            else:
                # The turn and what follows from it (its messages handed to the outbox, the
                # sub-workflow it launched) run in a task of their own, so a caller that goes
                # away (a cancelled await, a client that disconnects) interrupts none of it.
                turn = self._locked_turn(ac, actor_id, info, args, kwargs, request)
                result = await asyncio.shield(start_now(self._writer(turn, request.encode)))
            status = "ok"
            return result
        finally:
            labels = (ac.type_name, info.name, status)
            _metrics.inc("actorflow_calls", labels)
            _metrics.observe("actorflow_call_duration_seconds", time.perf_counter() - started, labels)

    async def _writer(self, turn: Awaitable[Outcome], encode: Callable[[Any], Any] | None) -> Any:
        """A writer call after its arguments were checked: ``turn``, then its messages handed to
        the outbox and its result as :meth:`finish` gives it."""
        outcome = await turn
        for message in outcome.messages:
            self.sent(*message)
        return await self.finish(outcome, encode)

    async def finish(self, outcome: Outcome, encode: Callable[[Any], Any] | None) -> Any:
        """A turn's result as its caller gets it: the output of the sub-workflow it launched
        (run here if this turn launched it), ``encode``d if asked."""
        if outcome.workflow is not None:
            wid, lease = outcome.workflow
            if lease is None:  # a repeated call: the workflow exists already
                result = await self.engine.resume(wid)
            else:
                result = await asyncio.shield(asyncio.ensure_future(self.engine.run_committed(wid, lease)))
            return result if encode is None else encode(result)
        if encode is not None and not outcome.encoded:
            return encode(outcome.result)  # a replayed record
        return outcome.result

    def replay(self, t: str, actor_id: str, method: str, request: Request, raw: bytes) -> Outcome:
        """The outcome a keyed call recorded, for a repeat of its key (a reused key raises)."""
        assert request.key is not None
        _metrics.inc("actorflow_idempotent_replays", (t,))
        result, wid = _idempotency.replay(
            t, actor_id, request.key, method, request.fingerprint, request.check_reuse, raw
        )
        return Outcome(workflow=(wid, None)) if wid is not None else Outcome(result=result)

    async def _locked_turn(
        self,
        ac: VirtualActorClass,
        actor_id: str,
        info: MethodInfo,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        request: Request,
    ) -> Outcome:
        t, key = ac.type_name, actor_name(ac.type_name, actor_id)
        async with self.cache.lock(key):
            for attempt in range(MAX_ATTEMPTS):
                _tracing.event("attempt", {"attempt": attempt + 1})
                cached = self.cache.get(key)
                if cached is not None and request.key is None and request.firing is None and attempt == 0:
                    # An unkeyed call on a cached actor runs optimistically: the commit's
                    # compare-and-set catches a stale snapshot and the turn runs again below.
                    snap = cached.snapshot
                    cached.last_used = self.config.clock.monotonic()
                else:
                    read = await self._snapshot_for(ac, actor_id, info, request, cached)
                    if isinstance(read, Outcome):
                        return read
                    snap = read
                encoded: Any = _NOT_ENCODED
                try:
                    ran = await self._invoke(ac, actor_id, snap, info, args, kwargs, request)
                    instance, turn, result = ran
                    if request.encode is not None and as_workflow(result) is None:
                        encoded = request.encode(result)  # before the commit: unencodable fails it
                except Exception:
                    # Only a failure on the latest state counts: re-check before reporting it.
                    if await self._is_stale(t, actor_id, snap):
                        self.cache.pop(key)
                        _metrics.inc("actorflow_turn_reruns", (t,))
                        continue
                    raise
                committed = await self._commit(ac, actor_id, snap, instance, result, turn, info, request)
                if committed is not None:
                    if encoded is not _NOT_ENCODED:
                        committed.result, committed.encoded = encoded, True
                    return committed
                completion = request.completion
                if completion is not None and await self.storage.get(completion.key) != completion.claimed:
                    # The claim is lost: the timer was replaced, cancelled or deleted with the
                    # actor (then its tick must not fire on whatever holds the id now), or
                    # another scheduler took the tick over (it fires it under the same key).
                    raise Dropped(f"the claim on {completion.member} was lost")
                self.cache.pop(key)
                if attempt + 1 < MAX_ATTEMPTS:
                    _metrics.inc("actorflow_turn_reruns", (t,))
                await asyncio.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
        problem = f"actor {key}: gave up after {MAX_ATTEMPTS} conflicting commits"
        raise ActorConflictError(t, actor_id, problem)

    async def _snapshot_for(
        self, ac: VirtualActorClass, actor_id: str, info: MethodInfo, request: Request, cached: Any
    ) -> Snapshot | Outcome:
        """One round trip: the current version (is the cached snapshot stale?) and, for a keyed
        call, whether it was already recorded (then its outcome), so a repeated key or a timer
        tick never runs the method again; and for a delivery, whether its entry is still there."""
        t = ac.type_name
        inbox = request.inbox
        keys = [k_version(t, actor_id)]
        keys += [k_idem(t, actor_id, request.key)] if request.key is not None else []
        keys += [inbox.key] if inbox is not None else []
        current, *rest = await self.storage.get_many(keys)
        record = rest[0] if request.key is not None else None
        if not is_live(current):
            self.cache.pop(actor_name(t, actor_id))
            if current is not None or not ac.activates:
                raise ac.not_found(actor_id, deleted=current is not None)
            if inbox is not None and rest[-1] != inbox.raw:
                raise Dropped(f"{inbox.member} was taken meanwhile")
            return await self.first_state(ac, actor_id)
        if record is not None:
            return self.replay(t, actor_id, info.name, request, record)
        if inbox is not None and rest[-1] != inbox.raw:
            raise Dropped(f"{inbox.member} was taken meanwhile")
        if request.key is not None and self.window.is_full(actor_name(t, actor_id)):
            await self.window.check(t, actor_id)
        if cached is not None and cached.snapshot.stamp == current:
            return cached.snapshot
        return await self.cache.read(ac, actor_id, fresh=True)

    async def first_state(self, ac: VirtualActorClass, actor_id: str) -> Snapshot:
        """The ``initial`` snapshot of an actor that a call activates: ``__init__()`` run in a
        worker thread (user code), its state encoded as a commit would store it."""
        try:
            instance = await asyncio.to_thread(ac.new_instance, (), {})
        except Exception as exc:
            mark_method_error(exc)
            declared(ac, exc)
            raise
        state = encode(capture(instance, ac.custom_state), actor=actor_name(ac.type_name, actor_id))
        return Snapshot.first(ac.type_name, ac.schema_version, state, self.config.clock.time())

    async def _is_stale(self, t: str, actor_id: str, snap: Snapshot) -> bool:
        return await self.storage.get(k_version(t, actor_id)) != snap.expect

    async def _invoke(
        self,
        ac: VirtualActorClass,
        actor_id: str,
        snap: Snapshot,
        info: MethodInfo,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        request: Request | None,
    ) -> tuple[Any, Turn, Any]:
        """Run the method on a fresh instance restored from ``snap``: the instance, the turn
        (the messages it sent, the timers it set) and the method's result."""
        turn = Turn(ac.type_name, actor_id, readonly=request is None, runtime=self.runtime)
        instance = instance_of(ac, snap)
        firing = request.firing if request is not None else None
        try:
            return instance, turn, await self.methods.run(info, instance, args, kwargs, turn, firing)
        except Exception as exc:
            declared(ac, exc)
            raise

    async def _call_readonly(
        self,
        ac: VirtualActorClass,
        actor_id: str,
        info: MethodInfo,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        try:
            snap = await self.cache.read(ac, actor_id)
        except ActorNotFoundError:
            current = await self.storage.get(k_version(ac.type_name, actor_id))
            if is_live(current):
                snap = await self.cache.read(ac, actor_id)  # created since the first read
            elif current is not None or not ac.activates:
                raise ac.not_found(actor_id, deleted=current is not None) from None
            else:
                snap = await self.first_state(ac, actor_id)  # what a first call would see
        _, _, result = await self._invoke(ac, actor_id, snap, info, args, kwargs, None)
        if as_workflow(result) is not None:
            problem = f"read-only method {ac.type_name}.{info.name} cannot return a workflow step"
            raise ActorError(ac.type_name, actor_id, problem)
        return result

    async def _commit(
        self,
        ac: VirtualActorClass,
        actor_id: str,
        snap: Snapshot,
        instance: Any,
        result: Any,
        turn: Turn,
        info: MethodInfo,
        request: Request,
    ) -> Outcome | None:
        """Commit the turn (see the module docstring); ``None`` if the compare-and-set failed."""
        t, name = ac.type_name, actor_name(ac.type_name, actor_id)
        now = self.config.clock.time()
        state = encode(capture(instance, ac.custom_state), actor=name)
        new = snap.successor(state, ac.schema_version, now)
        batch = Batch().require(k_version(t, actor_id), snap.expect)
        batch.put(k_version(t, actor_id), new.stamp).put(k_snapshot(t, actor_id), new.pack())
        if snap.initial:  # this call activates the actor: it is listed from this commit on
            batch.put(k_listing(t, actor_id), b"")
        outcome = Outcome(result=result)
        wf = as_workflow(result)
        launched = None
        if wf is not None:
            await asyncio.to_thread(self.engine.runner.ready)
            launched = workflow_id(t, actor_id, new.version)
            prepared = self.engine.prepare(wf, launched, {"actor": name, "version": new.version})
            batch.merge(prepared.batch)
            outcome = Outcome(workflow=(launched, prepared.lease))
            result = None
        self._add_messages(batch, turn, new, outcome, now)
        self._add_timers(batch, turn)
        if request.key is not None:
            what = f"the result of {name}"
            blob = _idempotency.record(now, info.name, request.fingerprint, result, launched, what)
            batch.require(k_idem(t, actor_id, request.key), None)  # a key is recorded once
            batch.put(k_idem(t, actor_id, request.key), blob)
            batch.index_add(idem_index(t, actor_id), request.key, now)
        if request.completion is not None:
            request.completion.add_to(batch, now, turn.timers)
        inbox = request.inbox
        if inbox is not None:
            batch.require(inbox.key, inbox.raw).delete(inbox.key).index_remove(OUTBOX_INDEX, inbox.member)
        started = time.perf_counter()
        with _tracing.span("commit", attributes={"actorflow.component": "actor"}) as current:
            applied = await self.storage.commit(batch)
            if current is not None:
                current.set_attribute("actorflow.conflict", not applied)
        _metrics.observe("actorflow_commit_duration_seconds", time.perf_counter() - started, ("actor",))
        if not applied:
            _metrics.inc("actorflow_commit_conflicts", (t,))
            return None
        if snap.initial:
            _metrics.inc("actorflow_actors_created", (t,))
        if request.completion is not None:
            request.completion.applied = True
        if inbox is not None:
            inbox.taken = True
        if turn.timers or request.completion is not None:
            self.bell.ring()
        self.cache.remember(name, new)
        if request.key is not None:
            await _logged(self.window.committed(t, actor_id), f"trimming the idempotency records of {name}")
        return outcome

    @staticmethod
    def _add_messages(batch: Batch, turn: Turn, new: Snapshot, outcome: Outcome, now: float) -> None:
        t, actor_id = turn.actor_type, turn.actor_id
        for i, msg in enumerate(turn.messages):
            # The token makes the id unique even where a rolled-back storage repeats numbers.
            msg_id = f"{new.version}.{new.token}.{i}"
            blob, _ = _codec.dumps(msg, what=f"a message from {t}/{actor_id}")
            batch.put(k_outbox(t, actor_id, msg_id), blob)
            batch.index_add(OUTBOX_INDEX, outbox_member(t, actor_id, msg_id), now)
            outcome.messages.append((t, actor_id, msg_id))

    @staticmethod
    def _add_timers(batch: Batch, turn: Turn) -> None:
        t, actor_id = turn.actor_type, turn.actor_id
        for timer_name, timer in turn.timers.items():
            member = timer_member(t, actor_id, timer_name)
            if timer is None:
                batch.delete(k_timer(t, actor_id, timer_name)).index_remove(TIMER_INDEX, member)
            else:
                batch.put(k_timer(t, actor_id, timer_name), timer.encode())
                batch.index_add(TIMER_INDEX, member, timer.next_try)


async def _logged(work: Awaitable[None], what: str) -> None:
    """Housekeeping after a commit: its failure is logged, never passed to the committed call."""
    try:
        await work
    except Exception as exc:
        log.warning("%s failed: %r", what, exc)
