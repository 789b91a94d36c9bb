"""The timer scheduler: claims due ticks, fires them in turns, retries failed ones.

Every runtime runs one (every ``ActorHost`` replica included). A tick is claimed with a
compare-and-set on its timer's record (many per commit), so of two schedulers that find it due
only one claims it; a claim lasts ``CLAIM_SECONDS``, after which another may take a tick whose
scheduler died. A firing calls the timer's method with the idempotency key
``timer:{name}:{setting}:{due}`` in a turn that also commits the timer's next state (its next tick, or
its removal), so the effect and the record that the tick fired never come apart. A tick whose
claim was lost meanwhile (the timer replaced, cancelled, deleted with its actor) is dropped.
A method that raises is retried with backoff, then recorded as failed on the actor. A scheduler
claims only the ticks of actor types its process has registered (see :func:`ours`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import uuid
from typing import Any

from actorflow import _codec
from actorflow._clock import SystemClock
from actorflow.actor._class import VirtualActorClass, lookup, registered_types
from actorflow.actor._config import ActorConfig
from actorflow.actor._keys import (
    TIMER_DIR,
    TIMER_INDEX,
    TIMERFAIL_DIR,
    k_timer,
    k_timer_failure,
    k_version,
    own_prefix,
    split_member,
    timer_key_of,
    timer_member,
)
from actorflow.actor._methods import is_method_error
from actorflow.actor._state import is_live
from actorflow.actor._timers import (
    CLAIM_BATCH,
    CLAIM_CONCURRENCY,
    CLAIM_SECONDS,
    MAX_ATTEMPTS,
    Completion,
    Firing,
    Timer,
    TimerBell,
    make_timer,
)
from actorflow.actor._turns import MAX_ATTEMPTS as MAX_COMMITS
from actorflow.actor._turns import Dropped, Request, Turns
from actorflow.errors import (
    ActorArgumentsError,
    ActorConflictError,
    ActorMethodNotFoundError,
    ActorNotFoundError,
    StorageUnavailableError,
)
from actorflow.storage import Batch, Storage

log = logging.getLogger("actorflow.actor")

#: Failure records deleted per commit by :meth:`Scheduler.purge_failures`.
PURGE_CHUNK = 500
#: Due timers a scheduler pass asks for first (it asks for its whole room when they all are).
FIRST_LOOK = 32


class Scheduler:
    """The timers of one runtime (see the module docstring)."""

    def __init__(self, storage: Storage, turns: Turns, config: ActorConfig, bell: TimerBell) -> None:
        self.storage = storage
        self.turns = turns
        self.config = config
        self.bell = bell
        self._background: set[asyncio.Future[Any]] = set()

    # ------------------------------------------------------------------ reading and setting
    async def timers_of(self, t: str, actor_id: str) -> dict[str, Timer]:
        """The stored timers of one actor, by name (none for an actor that does not exist)."""
        prefix = own_prefix(t, actor_id, TIMER_DIR)
        keys = await self.storage.list_keys(prefix)
        raws = await self.storage.get_many(keys)
        return {k[len(prefix) :]: Timer.decode(r) for k, r in zip(keys, raws, strict=True) if r is not None}

    async def timer_failures(self, t: str, actor_id: str) -> dict[str, Any]:
        """The ticks of the actor's timers that failed after all their retries, by timer."""
        prefix = own_prefix(t, actor_id, TIMERFAIL_DIR)
        keys = await self.storage.list_keys(prefix)
        raws = await self.storage.get_many(keys)
        return {
            k[len(prefix) :]: _codec.json_loads(r) for k, r in zip(keys, raws, strict=True) if r is not None
        }

    async def purge_failures(self, t: str, actor_id: str, *, dry_run: bool = False) -> list[str]:
        """Delete the actor's records of timer ticks that failed after all their retries (what
        :meth:`timer_failures` lists); return the names of the timers whose records went (with
        ``dry_run``, would go: nothing is deleted). The timers themselves are left as they are.
        Each commit requires the records it deletes to be as read, so a failure recorded
        meanwhile is never deleted unseen: it is read again and counted."""
        prefix = own_prefix(t, actor_id, TIMERFAIL_DIR)
        names: list[str] = []
        after: str | None = None
        conflicts = 0
        while True:
            keys = await self.storage.list_keys(prefix, start_after=after, limit=PURGE_CHUNK)
            raws = await self.storage.get_many(keys)
            found = [(k, r) for k, r in zip(keys, raws, strict=True) if r is not None]
            if found and not dry_run:
                batch = Batch()
                for key, raw in found:
                    batch.require(key, raw).delete(key)
                if not await self.storage.commit(batch):
                    conflicts += 1
                    if conflicts >= MAX_COMMITS:
                        raise ActorConflictError(
                            t, actor_id, f"actor {t}/{actor_id}: purging kept conflicting"
                        )
                    continue  # one changed meanwhile: read this chunk again
            names += [k[len(prefix) :] for k, _ in found]
            if len(keys) < PURGE_CHUNK:
                return names
            after = keys[-1]

    async def set_timer(self, ac: VirtualActorClass, actor_id: str, name: str, **spec: Any) -> Timer:
        """Set a timer from outside the actor (HTTP). The actor must exist; validated first."""
        timer = make_timer(ac, name, now=self.config.clock.time(), **spec)
        t = ac.type_name
        for _ in range(MAX_COMMITS):
            version = await self.storage.get(k_version(t, actor_id))
            if not is_live(version):
                raise ActorNotFoundError(t, actor_id)
            # Only on the live version: never on a deleted actor, whose keys must stay gone.
            batch = Batch().require(k_version(t, actor_id), version)
            batch.put(k_timer(t, actor_id, name), timer.encode())
            batch.index_add(TIMER_INDEX, timer_member(t, actor_id, name), timer.next_try)
            if await self.storage.commit(batch):
                self.bell.ring()
                return timer
        raise ActorConflictError(t, actor_id, f"actor {t}/{actor_id}: setting timer {name!r} kept failing")

    async def cancel_timer(self, ac: VirtualActorClass, actor_id: str, name: str) -> bool:
        """Cancel a timer (from outside the actor); whether there was one."""
        t = ac.type_name
        existed = await self.storage.get(k_timer(t, actor_id, name)) is not None
        member = timer_member(t, actor_id, name)
        gone = Batch().delete(k_timer(t, actor_id, name)).index_remove(TIMER_INDEX, member)
        await self.storage.commit(gone)
        return existed

    # ------------------------------------------------------------------ passes
    async def run_forever(self) -> None:
        """Claim the due timers and start firing them, without waiting for earlier firings to
        finish (so a busy moment delays what falls due after it no more than it must); then
        look again after ``tick_interval`` if something was due, else when the earliest timer
        in the index falls due, at most ``idle_tick_interval`` later, or as soon as this
        process sets or moves a timer (but never sooner than ``tick_interval``). Logs what it
        catches, a storage outage once."""
        limit = asyncio.Semaphore(self.config.timer_concurrency)
        pending = 0

        async def fire(claim: Completion) -> None:
            nonlocal pending
            try:
                async with limit:
                    await self.fire(claim)
            except Exception:
                log.exception("firing timer %s failed; it will be retried", claim.member)
            finally:
                pending -= 1

        down = False  # storage unreachable: said once per outage, not on every pass
        tick = self.config.tick_interval
        # Sleeping past a tick only on the system's clock: a test's clock jumps.
        idle = tick
        if isinstance(self.config.clock, SystemClock):
            idle = max(tick, self.config.idle_tick_interval)
        known: float | None = -math.inf  # the earliest timer as last read (-inf: read it again)
        while True:
            wait = tick
            rang = self.bell.take()  # and a timer set from here on wakes the sleep below
            try:
                # Claim no more than this process will soon fire: the rest stay unclaimed in
                # storage, for other schedulers to take.
                room = self.config.timer_backlog - pending
                due = []
                if room > 0:
                    now = self.config.clock.time()
                    # A small first look, which SQLite answers on the loop's own thread.
                    due = await self.storage.index_range(
                        TIMER_INDEX, max_score=now, limit=min(room, FIRST_LOOK)
                    )
                    if len(due) == FIRST_LOOK < room:
                        due = await self.storage.index_range(TIMER_INDEX, max_score=now, limit=room)
                    if not due and idle > tick:
                        # Nothing due: sleep until the earliest timer is. Read again only when
                        # this process set one, or the one read is past: one another process
                        # set is found by the look above, up to an idle wait late.
                        if rang or (known is not None and known <= now):
                            first = await self.storage.index_range(TIMER_INDEX, limit=1)
                            known = first[0][1] if first else None
                        # Up to a tick past it, at random: schedulers woken by one timer all at
                        # once would claim the same ticks, and all but one fail.
                        ahead = idle if known is None else known - now + random.uniform(0.001, tick)
                        wait = min(idle, max(tick, ahead))
                    elif due:
                        known = -math.inf
                for claim in await self.claim(ours(due)):
                    pending += 1
                    task = asyncio.ensure_future(fire(claim))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
                if down:
                    log.warning("the timer scheduler reaches storage again")
                    down = False
            except StorageUnavailableError as exc:
                known = -math.inf  # a ring this pass took may not have been read: read again
                if not down:
                    log.warning("the timer scheduler cannot reach storage; trying again: %s", exc)
                    down = True
            except Exception:
                known = -math.inf
                if self.storage.closed:
                    return  # closed under the loop: the runtime closing, or the interpreter exiting
                log.exception("the timer scheduler pass failed; trying again")
            await asyncio.sleep(tick)
            await self.bell.wait(wait - tick)

    async def next_due(self) -> float | None:
        """When the scheduler next has something to do: the earliest time in its index (a tick
        due, a retry, a claim that lapses), or None without timers."""
        first = await self.storage.index_range(TIMER_INDEX, limit=1)
        return first[0][1] if first else None

    async def fire_due(self, limit: int = 1000) -> dict[str, int]:
        """One pass: claim every timer due now, fire them and wait for the firings. Returns
        counts (fired, retried, failed; skipped: claimed elsewhere or changed meanwhile)."""
        counts = {"fired": 0, "retried": 0, "failed": 0, "skipped": 0}
        due = await self.storage.index_range(TIMER_INDEX, max_score=self.config.clock.time(), limit=limit)
        mine = ours(due)
        claims = await self.claim(mine)
        counts["skipped"] = len(mine) - len(claims)
        sem = asyncio.Semaphore(self.config.timer_concurrency)

        async def one(claim: Completion) -> None:
            async with sem:
                counts[await self.fire(claim)] += 1

        await asyncio.gather(*(one(c) for c in claims))
        return counts

    async def claim(self, members: list[str]) -> list[Completion]:
        """Claim these due timers (index members), one commit per actor (up to ``CLAIM_BATCH``
        timers each, ``CLAIM_CONCURRENCY`` actors at a time), each a compare-and-set on the timer's record; a
        claim lasts ``CLAIM_SECONDS``. A commit stays within one actor's keys, which on Redis
        Cluster is one hash slot."""
        by_actor: dict[tuple[str, str], list[str]] = {}
        for member in members:
            t, actor_id, _ = split_member(member)
            by_actor.setdefault((t, actor_id), []).append(member)
        chunks = [ms[i : i + CLAIM_BATCH] for ms in by_actor.values() for i in range(0, len(ms), CLAIM_BATCH)]
        lanes = asyncio.Semaphore(CLAIM_CONCURRENCY)

        async def one(chunk: list[str]) -> list[Completion]:
            async with lanes:
                return await self._claim_chunk(chunk)

        results = await asyncio.gather(*(one(chunk) for chunk in chunks))
        return [claim for result in results for claim in result]

    async def _claim_chunk(self, chunk: list[str]) -> list[Completion]:
        """Claim due timers of one actor in one commit (retried when some changed meanwhile)."""
        keys = [timer_key_of(m) for m in chunk]
        raws = await self.storage.get_many(keys)
        for _ in range(3):
            batch, taken = Batch(), []
            now = self.config.clock.time()
            for member, key, raw in zip(chunk, keys, raws, strict=True):
                if raw is None:  # cancelled: drop the stale index entry
                    stale = Batch().require(key, None).index_remove(TIMER_INDEX, member)
                    await self.storage.commit(stale)
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
                taken.append(Completion(timer, key, member, claimed))
            if not taken:
                return []
            if await self.storage.commit(batch):
                return taken
            # Another scheduler (or an actor) changed some of them: look again.
            raws = await self.storage.get_many(keys)
        return []

    # ------------------------------------------------------------------ one firing
    async def fire(self, claim: Completion) -> str:
        """Fire a claimed tick (see the module docstring); what became of it: ``fired``,
        ``retried``, ``failed`` or ``skipped`` (the claim was lost)."""
        timer, member = claim.timer, claim.member
        t, actor_id, name = split_member(member)
        now = self.config.clock.time()
        firing = Firing(name, timer.due, timer.missed_at(now), timer.attempts + 1)
        try:
            ac = lookup(t)
            kwargs = dict(timer.kwargs)
            info = ac.method(timer.method)
            if info.signature is not None and (
                "missed" in info.signature.parameters
                or any(p.kind is p.VAR_KEYWORD for p in info.signature.parameters.values())
            ):
                kwargs.setdefault("missed", firing.missed)
            request = Request(timer.tick_key(), None, False, firing, claim)
            await self.turns.call(ac, actor_id, timer.method, tuple(timer.args), kwargs, request)
            if claim.applied:
                return "fired"  # the turn's commit advanced or removed the timer
            failed = None  # the tick was recorded already: move the timer on below
        except Dropped:
            return "skipped"
        except Exception as exc:
            # Only a deleted actor drops its timer here. A type this process does not know (it
            # filtered them out, but a type can be unknown to the turn's own lookup too) or a
            # method it lacks (another version of the code, during an upgrade) are not the
            # timer's fault: the first is retried, the second counts as a failed attempt.
            gone = (ActorNotFoundError,)
            if isinstance(exc, gone) and not is_method_error(exc):  # not one a nested call raised
                drop = Batch().require(claim.key, claim.claimed).delete(claim.key)
                await self.storage.commit(drop.index_remove(TIMER_INDEX, member))
                return "failed"
            retry = self._retry_after(exc, timer)
            if retry is not None:
                timer.claim, timer.claim_until, timer.next_try = None, 0.0, self.config.clock.time() + retry
                await self._store_timer(claim, timer)
                return "retried"
            failed = {
                "due": timer.due,
                "attempts": timer.attempts,
                "error": f"{type(exc).__name__}: {exc}",
                "at": self.config.clock.time(),
            }
            log.warning(
                "timer %s failed %d times; giving up on tick %s: %r", member, timer.attempts, timer.due, exc
            )
        await self._move_on(claim, failed)
        return "failed" if failed is not None else "fired"

    def _retry_after(self, exc: Exception, timer: Timer) -> float | None:
        """Seconds until the tick is tried again, or ``None`` when it has had its attempts.
        Trouble that is not the method's (storage, contention) is tried again in a second."""
        counted = (ActorArgumentsError, ActorMethodNotFoundError)
        if not is_method_error(exc) and not isinstance(exc, counted):
            return 1.0
        timer.attempts += 1
        if timer.attempts < MAX_ATTEMPTS:
            return self.config.timer_backoff * 2 ** (timer.attempts - 1)
        return None

    async def _move_on(self, claim: Completion, failed: dict[str, Any] | None) -> None:
        """The tick's turn did not carry the timer's next state (it was recorded already, or the
        method gave up): drop a one-shot timer, move a periodic one to its next tick, as long as
        it is still as this firing claimed it. A failure record goes with it, on the actor's
        live version too (a deleted actor must keep nothing)."""
        t, actor_id, name = split_member(claim.member)
        for _ in range(MAX_COMMITS):
            batch = Batch()
            if failed is not None:
                current = await self.storage.get(k_version(t, actor_id))
                if is_live(current):
                    batch.require(k_version(t, actor_id), current)
                    batch.put(k_timer_failure(t, actor_id, name), _codec.json_dumps(failed))
            claim.add_to(batch, self.config.clock.time())
            if await self.storage.commit(batch):
                self.bell.ring()
                return
            if await self.storage.get(claim.key) != claim.claimed:
                return

    async def _store_timer(self, claim: Completion, timer: Timer) -> None:
        # Only if nobody replaced or cancelled the timer while it fired.
        batch = (
            Batch()
            .require(claim.key, claim.claimed)
            .put(claim.key, timer.encode())
            .index_add(TIMER_INDEX, claim.member, timer.next_try)
        )
        if await self.storage.commit(batch):
            self.bell.ring()


def ours(due: list[tuple[str, float]]) -> list[str]:
    """The due index members of actor types this process has registered. The others are left
    unclaimed for a process that knows them: one that imported fewer modules (a Ray worker
    running a workflow step, a script) must not take, and lose, another type's ticks."""
    known = registered_types()
    return [member for member, _ in due if split_member(member)[0] in known]
