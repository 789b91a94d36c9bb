"""The snapshots a runtime keeps in memory, and one lock per actor.

A cached snapshot lets an unkeyed call on a live actor run at once, without a read: the
commit's compare-and-set catches a stale one. The cache holds at most ``cache_size`` actors
(least recently used go first) and drops those unused for ``idle_seconds`` (passivation);
dropping one costs only a read on its next call. The per-actor locks serialize the turns of
one actor in this process (other processes are the compare-and-set's to order).
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from dataclasses import dataclass
from typing import Any

from actorflow import _metrics
from actorflow.actor._class import VirtualActorClass
from actorflow.actor._config import ActorConfig
from actorflow.actor._keys import actor_name, k_snapshot
from actorflow.actor._state import Snapshot, restore
from actorflow.errors import ActorNotFoundError, ActorStateError
from actorflow.storage import Storage


@dataclass
class Cached:
    snapshot: Snapshot
    last_used: float


class SnapshotCache:
    """Snapshots by actor (``{type}/{id}``), reads that fill the cache, and the actors' locks."""

    def __init__(self, storage: Storage, config: ActorConfig) -> None:
        self.storage = storage
        self.config = config
        self._entries: collections.OrderedDict[str, Cached] = collections.OrderedDict()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        _caches.add(self)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: str) -> Cached | None:
        return self._entries.get(key)

    def pop(self, key: str) -> None:
        if self._entries.pop(key, None) is not None:
            _report_size()

    def lock(self, key: str) -> asyncio.Lock:
        """The lock of one actor's turns in this process (FIFO: turns start in call order)."""
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    async def read(self, ac: VirtualActorClass, actor_id: str, *, fresh: bool = False) -> Snapshot:
        """The stored snapshot. ``fresh``: it replaces whatever this process cached (a turn that
        found its cache stale); otherwise only a newer-numbered one does, so a slow reader
        cannot push an older snapshot over a newer one a turn just committed."""
        raw = await self.storage.get(k_snapshot(ac.type_name, actor_id))
        if raw is None:
            raise ActorNotFoundError(ac.type_name, actor_id)
        snap = Snapshot.unpack(raw)
        self.remember(actor_name(ac.type_name, actor_id), snap, fresh=fresh)
        return snap

    def remember(self, key: str, snap: Snapshot, *, fresh: bool = True) -> None:
        cached, now = self._entries.get(key), self.config.clock.monotonic()
        if fresh or cached is None or cached.snapshot.version < snap.version:
            self._entries[key] = Cached(snap, now)
        else:
            cached.last_used = now  # read again unchanged (a read-only call): still in use
        self._entries.move_to_end(key)
        evicted = 0
        while len(self._entries) > self.config.cache_size:
            self._entries.popitem(last=False)
            evicted += 1
        if cached is None and evicted != 1:
            _report_size()

    def passivate_idle(self) -> int:
        """Drop cached actors unused for ``idle_seconds`` (their state is in storage; the next
        call reloads it). Returns how many were dropped."""
        horizon = self.config.clock.monotonic() - self.config.idle_seconds
        idle = [key for key, entry in self._entries.items() if entry.last_used < horizon]
        for key in idle:
            del self._entries[key]
        if idle:
            _report_size()
        return len(idle)


#: This process's caches (one per actor runtime), for the ``actorflow_cached_actors`` gauge.
_caches: weakref.WeakSet[SnapshotCache] = weakref.WeakSet()


def _report_size() -> None:
    """Set this process's ``actorflow_cached_actors`` to what its live caches hold."""
    _metrics.set_gauge("actorflow_cached_actors", sum(len(cache) for cache in list(_caches)))


def instance_of(ac: VirtualActorClass, snap: Snapshot) -> Any:
    """A fresh instance of the actor's class with the snapshot's state, migrated by the class's
    ``__migrate__`` when it was stored by an older schema version."""
    state = snap.state()
    if snap.schema != ac.schema_version:
        if snap.schema > ac.schema_version:
            problem = f"stored schema {snap.schema} is newer than the code's {ac.schema_version}"
            raise ActorStateError(ac.type_name, None, problem)
        if ac.migrate is None:
            problem = f"stored schema {snap.schema} is older than {ac.schema_version}, and no __migrate__"
            raise ActorStateError(ac.type_name, None, problem)
        state = ac.migrate(state, snap.schema)
    return restore(ac.cls, state, ac.custom_state)
