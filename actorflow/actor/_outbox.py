"""Outboxes: messages between actors and events posted to them, delivered exactly once.

A message (``workflow.send``) is committed with its sender's turn in the sender's outbox and
delivered after the commit; an event is stored in its actor's outbox before the 202 and
delivered the same way. The receiver's idempotency key (``msg:{member}``, ``event:{name}:{id}``)
makes a repeated delivery harmless; a recovery pass delivers what a dead process left behind.
Only a receiver's own answer (its method raised, or the entry can never be delivered) takes
an entry out undelivered, and then the failure is recorded on the receiver.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import uuid
from collections.abc import Callable
from typing import Any

from actorflow import _codec, _metrics, _tracing
from actorflow.actor._class import VirtualActorClass, lookup
from actorflow.actor._config import ActorConfig
from actorflow.actor._context import Message
from actorflow.actor._idempotency import fingerprint
from actorflow.actor._keys import (
    FAILED_DIR,
    FAILMARK_DIR,
    OUT_DIR,
    OUTBOX_INDEX,
    actor_name,
    event_key,
    k_failed,
    k_failmark,
    k_idem,
    k_outbox,
    k_version,
    message_key,
    outbox_member,
    own_prefix,
)
from actorflow.actor._methods import is_method_error
from actorflow.actor._state import is_live
from actorflow.actor._turns import MAX_ATTEMPTS, Dropped, Inbox, Outcome, Request, Turns
from actorflow.errors import (
    ActorArgumentsError,
    ActorConflictError,
    ActorEventNotFoundError,
    ActorMethodNotFoundError,
    ActorNotFoundError,
    ActorTypeNotFoundError,
    IdempotencyKeyReusedError,
    UnencodableResultError,
)
from actorflow.storage import Batch, Storage

log = logging.getLogger("actorflow.actor")

#: Failed deliveries (events, messages whose handler raised) kept per actor, newest first.
FAILED_KEPT = 100
#: Outbox entries one recovery pass takes.
RECOVERY_BATCH = 500
#: Errors after which an outbox entry can never be delivered: it is dropped (and recorded).
NEVER_DELIVERABLE = (
    ActorNotFoundError,
    ActorTypeNotFoundError,
    ActorMethodNotFoundError,
    ActorEventNotFoundError,
    ActorArgumentsError,
    IdempotencyKeyReusedError,
)
#: What :meth:`Outbox.deliver` returns for an entry that was no longer there.
GONE = object()


class Outbox:
    """Deliveries for one runtime (see the module docstring)."""

    def __init__(self, storage: Storage, turns: Turns, config: ActorConfig) -> None:
        self.storage = storage
        self.turns = turns
        self.config = config
        self._background: set[asyncio.Future[Any]] = set()

    def spawn(self, sender_type: str, sender_id: str, msg_id: str) -> None:
        """Deliver an entry in the background (its failure is left for the recovery pass)."""
        task = asyncio.ensure_future(self.deliver(sender_type, sender_id, msg_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settled(self, timeout: float | None = None) -> bool:
        """Wait until the deliveries this process started in the background (and any they led
        to) have finished, for at most ``timeout`` seconds; whether they all did. For tests
        and orderly shutdown: nothing depends on it for correctness."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._background:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            await asyncio.wait(list(self._background), timeout=left)
        return True

    async def deliver(
        self,
        sender_type: str,
        sender_id: str,
        msg_id: str,
        *,
        wait: bool = False,
        encode: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Deliver one outbox entry and remove it.

        An entry addressed to its own actor (an event) is taken by the commit of the turn that
        handles it, so an entry a delete removed, or another delivery took, is never handled; a
        message to another actor is removed after the receiver's turn. If the receiver's method
        raises, the delivery is recorded as failed on the receiver (``failed/`` keys, shown by
        ``GET /v1/actors/{type}/{id}``) in the commit that removes the entry. Anything else
        (storage trouble, a refused keyed call, shutdown) leaves the entry for the recovery
        pass, ``outbox_retry`` seconds later. Returns the receiver's result (``encode``d), or
        :data:`GONE` when the entry was no longer there; with ``wait`` every error is raised,
        otherwise errors are logged.
        """
        key = k_outbox(sender_type, sender_id, msg_id)
        member = outbox_member(sender_type, sender_id, msg_id)
        raw: bytes | None = None
        msg: Message | None = None
        try:
            raw = await self.storage.get(key)
            if raw is None:  # taken meanwhile; drop an index entry it may have left
                await self.storage.commit(Batch().require(key, None).index_remove(OUTBOX_INDEX, member))
                return GONE
            msg = _codec.loads(raw)
            assert msg is not None
            own = (msg.target_type, msg.target_id) == (sender_type, sender_id)
            inbox = Inbox(key, raw, member) if own else None
            fp = fingerprint(msg.method, msg.args, msg.kwargs)
            request = Request(msg.idem or message_key(member), fp, encode=encode, inbox=inbox)
            target = lookup(msg.target_type)
            try:
                name = f"deliver {msg.target_type}.{msg.method}"
                kind = {"actorflow.message": member, "actorflow.event": msg.event or ""}
                with _tracing.span(name, parent=msg.trace, kind="consumer", attributes=kind):
                    call = self.turns.call(target, msg.target_id, msg.method, msg.args, msg.kwargs, request)
                    result = await call
            except Dropped:
                return GONE
            except NEVER_DELIVERABLE as exc:
                if not is_method_error(exc):  # (if the method raised it, it is handled below)
                    log.warning("message %s dropped: it can never be delivered: %s", member, exc)
                    await self._record_failure(key, raw, member, msg, exc)
                raise
            if inbox is None or not inbox.taken:  # a message, or a repeat answered from its record
                done = Batch().require(key, raw).delete(key).index_remove(OUTBOX_INDEX, member)
                await self.storage.commit(done)
            _metrics.inc("actorflow_messages_delivered", (msg.target_type,))
            return result
        except Exception as exc:
            final = is_method_error(exc) or isinstance(exc, UnencodableResultError)
            if final and raw is not None and msg is not None:
                log.warning("message %s: its handler raised %r", member, exc)
                await self._record_failure(key, raw, member, msg, exc)
            elif not isinstance(exc, NEVER_DELIVERABLE):
                # Storage trouble, shutdown, contention, a full idempotency window: not the
                # receiver's answer. The entry stays, and the recovery pass tries again later.
                log.info("message %s not delivered yet: %r", member, exc)
                receiver = msg.target_type if msg is not None else "unknown"
                _metrics.inc("actorflow_message_retries", (receiver,))
                try:
                    await self._postpone(key, member)
                except Exception as again:
                    log.info("could not postpone message %s: %r", member, again)
            if wait:
                raise
            return None

    async def _postpone(self, key: str, member: str) -> None:
        """Move an undelivered entry's turn in the recovery pass ``outbox_retry`` seconds on, so
        that entries that keep failing do not hold up the others behind them."""
        raw = await self.storage.get(key)
        if raw is not None:
            when = self.config.clock.time() + self.config.outbox_retry - self.config.outbox_grace
            await self.storage.commit(Batch().require(key, raw).index_add(OUTBOX_INDEX, member, when))

    async def _record_failure(
        self, key: str, raw: bytes, member: str, msg: Message, exc: BaseException
    ) -> None:
        """Remove the outbox entry as this delivery read it and, if the receiver still exists,
        record on it that the delivery failed and why, so that a failure is never lost, nor
        recorded (or handled) twice by two deliveries of one entry.

        For an event (the entry is the receiver's own) both go in one commit. A message's entry
        is its sender's, in another storage group, so they are two commits: the record first,
        with a marker of the message on the receiver that only one commit can create, then the
        entry's removal. A delivery that finds the marker (a crash came between the two, or
        another delivery recorded it) only removes the entry."""
        t, actor_id = msg.target_type, msg.target_id
        now = self.config.clock.time()
        failure = {
            "at": now,
            "method": msg.method,
            "error": f"{type(exc).__name__}: {exc}",
            "builtin": next(c.__name__ for c in type(exc).__mro__ if c.__module__ == "builtins"),
        }
        if msg.event is not None:
            failure.update(kind="event", event=msg.event, event_id=msg.event_id)
        else:
            failure.update(kind="message", sender=member.rsplit("/", 1)[0], message_id=member)
        # Time-ordered names, so the oldest are the first listed (and trimmed first).
        digest = hashlib.sha1(member.encode()).hexdigest()[:12]
        name = f"{int(now * 1000):013d}.{digest}"
        own = member.rsplit("/", 1)[0] == actor_name(t, actor_id)
        mark = k_failmark(t, actor_id, digest)
        for _ in range(MAX_ATTEMPTS):
            current, entry = await self.storage.get_many([k_version(t, actor_id), key])
            if entry != raw:
                return  # another delivery took it (and recorded what became of it)
            take = Batch().require(key, raw).delete(key).index_remove(OUTBOX_INDEX, member)
            note = Batch()
            if is_live(current):
                note.require(k_version(t, actor_id), current)
                note.put(k_failed(t, actor_id, name), _codec.json_dumps(failure))
            if own or not note:
                if await self.storage.commit(take.merge(note)):
                    break
            else:
                note.require(mark, None).put(mark, name.encode())
                if await self.storage.commit(note) or await self.storage.get(mark) is not None:
                    await self.storage.commit(take)  # recorded, now or before: the entry goes
                    break
            await asyncio.sleep(random.uniform(0, 0.01))  # the receiver committed meanwhile
        await self._trim_failures(t, actor_id)

    async def _trim_failures(self, t: str, actor_id: str) -> None:
        """Keep the newest ``FAILED_KEPT`` failure records of the actor, and the markers of
        those (a marker outlives its record by at most one trim)."""
        kept = await self.storage.list_keys(own_prefix(t, actor_id, FAILED_DIR))
        old = Batch()
        for k in kept[: max(0, len(kept) - FAILED_KEPT)]:
            old.delete(k)
        marks = await self.storage.list_keys(own_prefix(t, actor_id, FAILMARK_DIR))
        if marks:
            live = {k.rsplit("/", 1)[1] for k in kept[max(0, len(kept) - FAILED_KEPT) :]}
            for k, named in zip(marks, await self.storage.get_many(marks), strict=True):
                if named is not None and named.decode() not in live:
                    old.delete(k)
        if old:
            await self.storage.commit(old)

    async def pending_of(self, t: str, actor_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The actor's outbox entries not delivered yet (at most ``limit``, in id order):
        messages it sent, and events posted to it. Each: ``message_id``, ``kind`` (``message``
        or ``event``), ``to`` (``{type}/{id}``), ``method`` and, for an event, ``event``."""
        keys = await self.storage.list_keys(own_prefix(t, actor_id, OUT_DIR), limit=limit)
        out: list[dict[str, Any]] = []
        for key, raw in zip(keys, await self.storage.get_many(keys), strict=True):
            if raw is None:
                continue  # delivered meanwhile
            msg: Message = _codec.loads(raw)
            entry = {
                "message_id": outbox_member(t, actor_id, key.rsplit("/", 1)[1]),
                "kind": "event" if msg.event is not None else "message",
                "to": actor_name(msg.target_type, msg.target_id),
                "method": msg.method,
            }
            if msg.event is not None:
                entry["event"] = msg.event
            out.append(entry)
        return out

    async def failures_of(self, t: str, actor_id: str) -> list[dict[str, Any]]:
        """The actor's failed deliveries (events and messages whose handler raised), newest
        first, at most ``FAILED_KEPT``."""
        keys = await self.storage.list_keys(own_prefix(t, actor_id, FAILED_DIR))
        raws = await self.storage.get_many(keys)
        return [_codec.json_loads(r) for r in reversed(raws) if r is not None]

    async def recover(self) -> int:
        """Deliver entries left longer than the grace period (their sender's process died
        before delivering them, or their delivery failed). Returns how many were attempted."""
        horizon = self.config.clock.time() - self.config.outbox_grace
        pending = await self.storage.index_range(OUTBOX_INDEX, max_score=horizon, limit=RECOVERY_BATCH)
        for member, _ in pending:
            sender_type, sender_id, msg_id = member.rsplit("/", 2)
            await self.deliver(sender_type, sender_id, msg_id)
        return len(pending)

    async def size(self) -> int:
        """How many entries (messages and events) are stored and not yet delivered."""
        return await self.storage.index_count(OUTBOX_INDEX)

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
        _codec.check_json(payload, what="an event payload")
        event_id = event_id or uuid.uuid4().hex
        msg_id = "ev-" + hashlib.sha1(f"{event}\0{event_id}".encode()).hexdigest()[:24]
        request = Request(event_key(event, event_id), fingerprint(method, (payload,), {}))
        stored = await self._store_event(ac, actor_id, method, event, event_id, msg_id, payload, request)
        _metrics.inc("actorflow_events", (ac.type_name,))
        if isinstance(stored, Outcome):  # handled already: the recorded answer, nothing new
            return (True, await self.turns.finish(stored, encode)) if wait else (False, None)
        if stored == "pending" and not wait:
            return False, None  # its first delivery (or the recovery pass) handles it
        t = ac.type_name
        if not wait:
            self.spawn(t, actor_id, msg_id)
            return False, None
        try:
            result = await self.deliver(t, actor_id, msg_id, wait=True, encode=encode)
        except Exception as exc:
            if is_method_error(exc) or isinstance(exc, (UnencodableResultError, *NEVER_DELIVERABLE)):
                raise  # the handler's own answer, or an event that can never be handled
            return False, None  # accepted; it will be handled when it can
        if result is not GONE:
            return True, result
        # Another delivery took the entry meanwhile: answer from what it left.
        assert request.key is not None
        keys = [k_version(t, actor_id), k_idem(t, actor_id, request.key)]
        current, record = await self.storage.get_many(keys)
        if record is not None:
            outcome = self.turns.replay(t, actor_id, method, request, record)
            return True, await self.turns.finish(outcome, encode)
        if not is_live(current):
            raise ActorNotFoundError(t, actor_id)
        problem = f"event {event!r} {event_id!r} was handled by another delivery, which failed"
        raise ActorConflictError(t, actor_id, problem)

    async def _store_event(
        self,
        ac: VirtualActorClass,
        actor_id: str,
        method: str,
        event: str,
        event_id: str,
        msg_id: str,
        payload: Any,
        request: Request,
    ) -> str | Outcome:
        """Store the event on the actor's live version: ``"stored"``, ``"pending"`` (posted
        before and not handled yet), or the recorded outcome when it was handled already."""
        t = ac.type_name
        assert request.key is not None
        msg = Message(
            t,
            actor_id,
            method,
            (payload,),
            {},
            idem=request.key,
            event=event,
            event_id=event_id,
            trace=_tracing.carrier(),
        )
        blob, _ = _codec.dumps(msg, what="an event")
        key, member = k_outbox(t, actor_id, msg_id), outbox_member(t, actor_id, msg_id)
        for _ in range(MAX_ATTEMPTS):
            current, pending, record = await self.storage.get_many(
                [k_version(t, actor_id), key, k_idem(t, actor_id, request.key)]
            )
            if not is_live(current):
                raise ActorNotFoundError(t, actor_id)
            if record is not None:
                return self.turns.replay(t, actor_id, method, request, record)
            if pending is not None:
                stored: Message = _codec.loads(pending)
                if fingerprint(method, stored.args, {}) != request.fingerprint:
                    raise IdempotencyKeyReusedError(
                        t,
                        actor_id,
                        event_id,
                        f"event {event!r} with id {event_id!r} was already posted to {t}/{actor_id} "
                        "with another payload; the first one stands and this post changed nothing",
                    )
                return "pending"
            if self.turns.window.is_full(actor_name(t, actor_id)):
                await self.turns.window.check(t, actor_id)
            batch = Batch().require(k_version(t, actor_id), current).require(key, None)
            batch.put(key, blob).index_add(OUTBOX_INDEX, member, self.config.clock.time())
            if await self.storage.commit(batch):
                return "stored"
        raise ActorConflictError(t, actor_id, f"actor {t}/{actor_id}: storing an event kept failing")
