"""In-memory storage: a :class:`~actorflow.storage.Storage` for fast unit tests.

**Not durable, and never for production.** The data lives in plain Python dicts in the
current process and is gone when the process exits; other OS processes (including forked
children, which get a private copy) cannot see it. Use it where a test would otherwise open a
SQLite file or a Redis server only to throw it away.

Sharing by name: stores live in a process-wide registry keyed by name. Every
:class:`MemoryStorage` opened with the same name (``memory://NAME``, the name taken literally
and case-sensitively) is a view of one store, so two runtimes on "one storage" can be
simulated in a single test process. A named store lives until the process exits, also after
every object on it has been closed (reopening the name finds the data again, as reopening a
SQLite file would); give each test its own name. ``memory://`` or ``memory:`` (no name) opens
a fresh private store each time, reachable only through that one object.

Guarantees, the same as every backend's (see :class:`~actorflow.storage.Storage`), except
durability, which ends with the process:

* :meth:`MemoryStorage.commit` validates the batch with the backends' shared ``check_batch``
  and applies it all-or-nothing under the store's lock: concurrent commits from any number of
  threads, event loops and :class:`MemoryStorage` objects on one store behave as if applied
  one after another, and a batch whose expectations fail changes nothing.
* Every read sees every commit that returned before it started; :meth:`~MemoryStorage.get_many`
  and :meth:`~MemoryStorage.list_keys` each read one point in time.
* Keys list in code point order, which equals the UTF-8 byte order of the other backends;
  index ties order by member the same way.
* Malformed input raises :class:`~actorflow.errors.StorageError` exactly as the other backends
  do, and so does any call on a closed object (closing one object leaves the store and the
  other objects on it untouched).

Beyond the protocol: :meth:`~MemoryStorage.delete_prefix` is atomic as a whole, and a
cancelled call never applies (the one suspension point of each call comes before its work).
Each call yields to the event loop once, like a real backend's round trip, so concurrent
tasks interleave as they would on SQLite or Redis and tests of their races stay meaningful.
An object is bound to no event loop: any thread or loop may use it.
"""

from __future__ import annotations

import asyncio
import math
import threading
from bisect import bisect_left, bisect_right, insort
from collections.abc import Sequence

from actorflow.errors import StorageError
from actorflow.storage._base import Batch, Storage
from actorflow.storage._checks import check_batch, check_key, key_successor

__all__ = ["MemoryStorage"]


class _Store:
    """The data of one store, shared by every :class:`MemoryStorage` opened on it.

    Every access holds ``lock``; it is never held across an ``await``, so a thread blocked on
    it waits only for another thread's few dict operations.
    """

    __slots__ = ("indexes", "lock", "sorted_keys", "values")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, bytes] = {}
        # The keys of ``values`` in sorted order, for list_keys and delete_prefix. Python
        # compares str by code point, which for the surrogate-free text check_key admits is
        # the UTF-8 byte order the protocol specifies.
        self.sorted_keys: list[str] = []
        self.indexes: dict[str, dict[str, float]] = {}

    def put(self, key: str, value: bytes) -> None:
        if key not in self.values:
            insort(self.sorted_keys, key)
        self.values[key] = value

    def delete(self, key: str) -> None:
        if self.values.pop(key, None) is not None:
            del self.sorted_keys[bisect_left(self.sorted_keys, key)]


_registry: dict[str, _Store] = {}
_registry_lock = threading.Lock()


def _named_store(name: str) -> _Store:
    with _registry_lock:
        store = _registry.get(name)
        if store is None:
            store = _registry[name] = _Store()
        return store


class MemoryStorage(Storage):
    """Storage in this process's memory; see the module docstring. For tests only.

    ``MemoryStorage("x")`` opens the process-wide store named ``x`` (created empty on first
    use); ``MemoryStorage()`` (or an empty name) a new private store. The constructor does no
    I/O and never fails; :func:`~actorflow.storage.open_storage` with ``memory://NAME`` calls
    it. ``url`` only names the storage in error messages (default ``memory://NAME``).
    """

    def __init__(self, name: str = "", *, url: str | None = None) -> None:
        self.url = url if url is not None else f"memory://{name}"
        self.name = check_key(name, "memory storage name", self.url)
        self._store = _named_store(name) if name else _Store()
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryStorage({self.url!r})"

    async def _enter(self) -> _Store:
        """Yield to the event loop once, then return the store if this object is still open.

        The yield stands in for a real backend's round trip (see the module docstring); it
        comes first, so a call cancelled there has done nothing.
        """
        await asyncio.sleep(0)
        if self._closed:
            raise StorageError("storage is closed", self.url)
        return self._store

    # -- Storage API ------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or ``None``."""
        check_key(key, "key", self.url)
        store = await self._enter()
        with store.lock:
            return store.values.get(key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of ``keys`` in order (``None`` for absent ones), read under one lock."""
        keys = list(keys)
        for k in keys:
            check_key(k, "key", self.url)
        store = await self._enter()
        with store.lock:
            return [store.values.get(k) for k in keys]

    async def commit(self, batch: Batch) -> bool:
        """Apply ``batch`` atomically if every expectation holds; return whether it applied.

        The batch is validated (and snapshotted) before anything is looked at, and checked and
        applied under the store's lock, so it applies entirely or not at all. An empty batch
        returns ``True``.
        """
        cb = check_batch(batch, self.url)
        store = await self._enter()
        if not cb.expect and cb.writes_nothing:
            return True
        with store.lock:
            for key, want in cb.expect:
                if store.values.get(key) != want:
                    return False
            # Nothing below can fail on validated input, so the batch never half-applies.
            for key, value in cb.puts:
                # A bytes subclass is copied, so reads return plain bytes as other backends do.
                store.put(key, value if type(value) is bytes else bytes(value))
            for key in cb.deletes:
                store.delete(key)
            for name, member, score in cb.index_put:
                store.indexes.setdefault(name, {})[member] = score
            for name, member in cb.index_delete:
                members = store.indexes.get(name)
                if members is not None:
                    members.pop(member, None)
                    if not members:
                        del store.indexes[name]  # an emptied index is like one never made
        return True

    async def list_keys(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Keys ``prefix + name`` where ``name`` has no ``/``, in byte order.

        Only keys greater than ``start_after`` are returned (if given), at most ``limit`` of
        them (``limit <= 0`` returns ``[]``). Deeper keys are skipped a subtree at a time by
        bisection, so the cost grows with the number of children, not of descendants.
        """
        check_key(prefix, "prefix", self.url)
        if start_after is not None:
            check_key(start_after, "start_after", self.url)
        store = await self._enter()
        if limit is not None and limit <= 0:
            return []
        out: list[str] = []
        with store.lock:
            keys = store.sorted_keys
            if start_after is not None and start_after >= prefix:
                i = bisect_right(keys, start_after)
            else:
                i = bisect_left(keys, prefix)
            # The keys starting with ``prefix`` are one contiguous run from ``prefix`` on.
            while i < len(keys) and keys[i].startswith(prefix):
                key = keys[i]
                slash = key.find("/", len(prefix))
                if slash >= 0:
                    # ``key`` lies in the subdirectory prefix+child+'/': jump past all of it.
                    nxt = key_successor(key[: slash + 1])
                    assert nxt is not None  # a string ending in '/' always has one
                    i = bisect_left(keys, nxt, i)
                    continue
                out.append(key)
                if limit is not None and len(out) >= limit:
                    break
                i += 1
        return out

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key that starts with ``prefix`` (a raw string prefix, at any depth).

        ``delete_prefix("a/b")`` also deletes ``"a/bc"``; pass ``"a/b/"`` for a directory.
        Returns the number of keys deleted. Atomic as a whole. Indexes are not touched.
        """
        check_key(prefix, "prefix", self.url)
        store = await self._enter()
        upper = key_successor(prefix)
        with store.lock:
            keys = store.sorted_keys
            lo = bisect_left(keys, prefix)
            hi = len(keys) if upper is None else bisect_left(keys, upper, lo)
            for key in keys[lo:hi]:
                del store.values[key]
            del keys[lo:hi]
        return hi - lo

    async def index_range(
        self, index: str, *, max_score: float | None = None, limit: int | None = None
    ) -> list[tuple[str, float]]:
        """Members with score <= ``max_score``, lowest score first, ties by member."""
        check_key(index, "index name", self.url)
        high = math.inf
        if max_score is not None:
            try:
                high = float(max_score)
            except (TypeError, ValueError):
                raise StorageError(f"max_score is not a number: {max_score!r}", self.url) from None
        store = await self._enter()
        if (limit is not None and limit <= 0) or math.isnan(high):
            return []
        with store.lock:
            rows = [(s, m) for m, s in store.indexes.get(index, {}).items() if s <= high]
        # Sorted outside the lock: the rows are a private copy. Indexes in tests are small,
        # so sorting on demand beats keeping a second, score-ordered structure in step.
        rows.sort()
        if limit is not None:
            del rows[limit:]
        return [(m, s) for s, m in rows]

    async def index_score(self, index: str, member: str) -> float | None:
        """The score of ``member`` in ``index``, or ``None``."""
        check_key(index, "index name", self.url)
        check_key(member, "index member", self.url)
        store = await self._enter()
        with store.lock:
            return store.indexes.get(index, {}).get(member)

    async def index_count(self, index: str) -> int:
        """How many members ``index`` has."""
        check_key(index, "index name", self.url)
        store = await self._enter()
        with store.lock:
            return len(store.indexes.get(index, {}))

    async def close(self) -> None:
        """Make this object unusable. Idempotent. The store and its data stay (see the module
        docstring): other objects on it keep working, and reopening its name finds the data."""
        self._closed = True
