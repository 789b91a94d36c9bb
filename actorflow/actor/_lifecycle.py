"""Creating and deleting actors, so that nothing of a deleted actor meets its successor.

Create stores the first snapshot unless the actor exists. Delete is one atomic commit that
replaces the version by a tombstone and removes the snapshot, the listing entry and (up to
``DELETE_CHUNK``) the actor's other keys; a sweep then removes any left, in commits that each
require the tombstone. Every write to an actor's keys requires its live version, so nothing
can be added after the tombstone, and creating a tombstoned id sweeps first and continues the
version numbers: the new actor's sub-workflow ids and message ids never meet the old one's.
Messages the actor sent to *other* actors stay and are still delivered (the turns that sent
them were acknowledged).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from actorflow import _codec
from actorflow.actor._cache import SnapshotCache
from actorflow.actor._class import VirtualActorClass
from actorflow.actor._config import ActorConfig
from actorflow.actor._context import Message
from actorflow.actor._keys import (
    OUT_DIR,
    OUTBOX_INDEX,
    OWN_DIRS,
    TIMER_DIR,
    TIMER_INDEX,
    actor_name,
    idem_index,
    k_idem,
    k_listing,
    k_snapshot,
    k_version,
    listing_prefix,
    outbox_member,
    own_prefix,
    timer_member,
    version_of,
    workflow_prefix,
)
from actorflow.actor._state import Encoded, Snapshot, Stamp, is_live, new_token
from actorflow.actor._turns import MAX_ATTEMPTS
from actorflow.engine import WorkflowEngine
from actorflow.errors import ActorConflictError, WorkflowNotFoundError, WorkflowRunningError
from actorflow.storage import Batch, Storage

#: Keys deleted per commit when an actor is deleted (the first commit also writes the tombstone).
DELETE_CHUNK = 500


@dataclass(frozen=True)
class Owned:
    """One key of an actor that deleting it removes, with its index entry if it has one."""

    key: str
    index: str | None = None
    member: str | None = None

    def add_to(self, batch: Batch) -> None:
        batch.delete(self.key)
        if self.index is not None and self.member is not None:
            batch.index_remove(self.index, self.member)


class Lifecycle:
    """Creates and deletes the actors of one runtime (see the module docstring)."""

    def __init__(
        self, storage: Storage, cache: SnapshotCache, engine: WorkflowEngine, config: ActorConfig
    ) -> None:
        self.storage = storage
        self.cache = cache
        self.engine = engine
        self.config = config

    async def exists(self, ac: VirtualActorClass, actor_id: str) -> bool:
        return is_live(await self.storage.get(k_version(ac.type_name, actor_id)))

    async def create(self, ac: VirtualActorClass, actor_id: str, state: Encoded) -> bool:
        """Store the first snapshot (of the encoded ``state``) unless the actor exists; whether
        this call created it. An id whose actor was deleted is swept first."""
        t = ac.type_name
        for _ in range(MAX_ATTEMPTS):
            current = await self.storage.get(k_version(t, actor_id))
            if current is None:
                version = 1
            else:
                stamp = Stamp.parse(current)
                if not stamp.deleted:
                    return False
                await self.sweep(t, actor_id, current)
                version = stamp.version + 1
            now = self.config.clock.time()
            encoding, data, int64 = state
            snap = Snapshot(version, ac.schema_version, t, encoding, now, now, data, new_token(), int64)
            batch = Batch().require(k_version(t, actor_id), current)
            batch.put(k_version(t, actor_id), snap.stamp).put(k_snapshot(t, actor_id), snap.pack())
            batch.put(k_listing(t, actor_id), b"")
            if await self.storage.commit(batch):
                self.cache.remember(actor_name(t, actor_id), snap, fresh=True)
                return True
            # Created (and perhaps deleted again) meanwhile by another caller: look again.
        raise ActorConflictError(t, actor_id, f"actor {t}/{actor_id}: creation kept conflicting")

    async def ids(self, t: str, prefix: str = "", *, start_after: str | None = None, limit: int) -> list[str]:
        """Ids of live actors of type ``t`` that start with ``prefix``, in byte order: at most
        ``limit`` of them after ``start_after`` (an id). One bounded listing."""
        listing = listing_prefix(t)
        after = listing + start_after if start_after is not None else None
        keys = await self.storage.list_keys(listing + prefix, start_after=after, limit=limit)
        return [k[len(listing) :] for k in keys]

    async def delete(self, ac: VirtualActorClass, actor_id: str) -> bool:
        """Delete the actor (see the module docstring). Idempotent: returns whether this call
        deleted a live actor (False: there was none, or it was deleted already)."""
        t, key = ac.type_name, actor_name(ac.type_name, actor_id)
        deleted = False
        async with self.cache.lock(key):
            for _ in range(MAX_ATTEMPTS):
                current = await self.storage.get(k_version(t, actor_id))
                if current is None:
                    return False
                stamp = Stamp.parse(current)
                if stamp.deleted:
                    await self.sweep(t, actor_id, current)
                    break
                tomb = stamp.tombstone().encode()
                own = await self._own_keys(t, actor_id, DELETE_CHUNK)
                batch = Batch().require(k_version(t, actor_id), current).put(k_version(t, actor_id), tomb)
                batch.delete(k_snapshot(t, actor_id)).delete(k_listing(t, actor_id))
                for gone in own:
                    gone.add_to(batch)
                if await self.storage.commit(batch):
                    deleted = True
                    self.cache.pop(key)
                    # Writes that require the live version without changing it (a timer set
                    # over HTTP, an event, a failure record) may have landed after the listing
                    # above: none can land after the tombstone, so one sweep now finds them.
                    await self.sweep(t, actor_id, tomb)
                    break
                # A turn committed meanwhile: delete what it left too.
            else:
                raise ActorConflictError(t, actor_id, f"actor {key}: deletion kept conflicting")
        await self._delete_owned_workflows(t, actor_id, Stamp.parse(current).version)
        return deleted

    async def sweep(self, t: str, actor_id: str, tomb: bytes) -> None:
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

    async def _own_keys(self, t: str, actor_id: str, limit: int) -> list[Owned]:
        """Up to ``limit`` of the keys and index entries that deleting the actor removes."""
        out: list[Owned] = []
        index = idem_index(t, actor_id)
        for member, _ in await self.storage.index_range(index, limit=limit):
            out.append(Owned(k_idem(t, actor_id, member), index, member))
        for folder in OWN_DIRS:
            prefix = own_prefix(t, actor_id, folder)
            after: str | None = None
            while len(out) < limit:
                keys = await self.storage.list_keys(prefix, start_after=after, limit=limit)
                if not keys:
                    break
                after = keys[-1]
                if folder == OUT_DIR:
                    keys = await self._inbox_only(t, actor_id, keys)
                out += [self._owned(t, actor_id, folder, k, k[len(prefix) :]) for k in keys]
            if len(out) >= limit:
                break
        return out[:limit]

    @staticmethod
    def _owned(t: str, actor_id: str, folder: str, key: str, name: str) -> Owned:
        if folder == TIMER_DIR:
            return Owned(key, TIMER_INDEX, timer_member(t, actor_id, name))
        if folder == OUT_DIR:
            return Owned(key, OUTBOX_INDEX, outbox_member(t, actor_id, name))
        return Owned(key)

    async def _inbox_only(self, t: str, actor_id: str, keys: list[str]) -> list[str]:
        """Of the actor's pending outbox entries, those addressed to itself (its events, its
        messages to itself): deleted with it. The rest are messages it sent others."""
        raws = await self.storage.get_many(keys)
        mine = []
        for k, raw in zip(keys, raws, strict=True):
            if raw is None:
                continue
            msg: Message = _codec.loads(raw)
            if (msg.target_type, msg.target_id) == (t, actor_id):
                mine.append(k)
        return mine

    async def _delete_owned_workflows(self, t: str, actor_id: str, upto: int) -> None:
        """Delete the finished sub-workflows the actor launched up to version ``upto``: ids of
        exactly this actor (``p``'s ``Flow:p:3``, never ``p:q``'s ``Flow:p:q:3``) whose metadata
        names it (not a user's workflow that merely has such an id). Running ones are left to
        finish; they hold nothing of the actor's."""
        after: str | None = None
        while True:
            ids = await self.engine.list_ids(workflow_prefix(t, actor_id), start_after=after, limit=200)
            if not ids:
                return
            after = ids[-1]
            for wid in ids:
                version = version_of(t, actor_id, wid)
                if version is None or version > upto:
                    continue
                with contextlib.suppress(WorkflowRunningError, WorkflowNotFoundError):
                    meta: dict[str, Any] = await self.engine.metadata(wid, None)
                    if meta.get("user_metadata", {}).get("actor") == actor_name(t, actor_id):
                        await self.engine.delete(wid)  # launched by it, not merely named so
