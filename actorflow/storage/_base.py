"""The storage protocol every backend implements.

The model is deliberately small: a flat key/value space of ``str -> bytes`` plus named sorted
indexes (``member -> score``), and one atomic write, :meth:`Storage.commit`, that applies a
:class:`Batch` only if every expected value still holds. Everything actorflow keeps durable
(workflow checkpoints, actor snapshots, idempotency records, outboxes, timers) is built from
these few calls, so a backend is a few hundred lines and one contract test-suite checks all of
them alike.

Keys are ``/``-separated paths. :meth:`Storage.list_keys` lists the keys *directly* under a
prefix (no further ``/``), which is how callers enumerate workflows or actors; key layouts keep
such "directories" flat.

Every method may raise :class:`~actorflow.errors.StorageError` (a backend translates its
client's errors); nothing else escapes a backend.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Batch:
    """An atomic group of writes, applied by :meth:`Storage.commit` all together or not at all.

    ``expect`` maps keys to the exact bytes they must hold for the batch to apply (``None``:
    the key must be absent). ``puts`` and ``deletes`` change keys; ``index_put`` and
    ``index_delete`` change members of named sorted indexes. A key must not be both put and
    deleted in one batch.
    """

    puts: dict[str, bytes] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)
    expect: dict[str, bytes | None] = field(default_factory=dict)
    index_put: dict[str, dict[str, float]] = field(default_factory=dict)
    index_delete: dict[str, set[str]] = field(default_factory=dict)

    def put(self, key: str, value: bytes) -> Batch:
        self.deletes.discard(key)
        self.puts[key] = value
        return self

    def delete(self, key: str) -> Batch:
        self.puts.pop(key, None)
        self.deletes.add(key)
        return self

    def require(self, key: str, value: bytes | None) -> Batch:
        """Make the batch apply only if ``key`` holds exactly ``value`` (``None``: absent)."""
        self.expect[key] = value
        return self

    def index_add(self, index: str, member: str, score: float) -> Batch:
        self.index_delete.get(index, set()).discard(member)
        self.index_put.setdefault(index, {})[member] = float(score)
        return self

    def index_remove(self, index: str, member: str) -> Batch:
        self.index_put.get(index, {}).pop(member, None)
        self.index_delete.setdefault(index, set()).add(member)
        return self

    def merge(self, other: Batch) -> Batch:
        """Fold ``other`` into this batch (its writes win where both touch a key)."""
        for k, v in other.puts.items():
            self.put(k, v)
        for k in other.deletes:
            self.delete(k)
        self.expect.update(other.expect)
        for index, members in other.index_put.items():
            for m, s in members.items():
                self.index_add(index, m, s)
        for index, gone in other.index_delete.items():
            for m in gone:
                self.index_remove(index, m)
        return self

    def __bool__(self) -> bool:
        return bool(self.puts or self.deletes or self.expect or self.index_put or self.index_delete)


class Storage(abc.ABC):
    """Async key/value storage with atomic conditional batches.

    Guarantees every backend gives:

    * :meth:`commit` is atomic and isolated: concurrent commits from any number of processes
      behave as if applied one after another, and a batch whose ``expect`` does not hold
      changes nothing.
    * Once :meth:`commit` returns ``True``, the batch survives the crash of any client process.
    * Reads see every commit that returned before the read started.
    """

    #: The storage URL, with any password replaced by ``***``; used in error messages.
    url: str
    _closed: bool = False

    @property
    def closed(self) -> bool:
        """Whether this object is closed: :meth:`close` ran, or the threads it works on are
        gone (the interpreter is exiting). Every call then raises
        :class:`~actorflow.errors.StorageError`; loops that poll storage stop on it."""
        return self._closed

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or ``None`` if it is absent."""

    @abc.abstractmethod
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` in order, ``None`` for absent ones, read at one point in time."""

    @abc.abstractmethod
    async def commit(self, batch: Batch) -> bool:
        """Apply ``batch`` atomically if its expectations hold; return whether it applied."""

    @abc.abstractmethod
    async def list_keys(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Keys that start with ``prefix`` and have no ``/`` after it, in byte order.

        ``start_after`` (a full key) and ``limit`` page through long listings.
        """

    @abc.abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix`` (at any depth); return how many.

        Not atomic as a whole: each key goes atomically, so a concurrent reader may see some
        keys gone and others not yet.
        """

    @abc.abstractmethod
    async def index_range(
        self, index: str, *, max_score: float | None = None, limit: int | None = None
    ) -> list[tuple[str, float]]:
        """Members of a sorted index with score <= ``max_score``, lowest score first."""

    @abc.abstractmethod
    async def index_score(self, index: str, member: str) -> float | None:
        """The score of one member of a sorted index, or ``None`` if it is absent."""

    @abc.abstractmethod
    async def index_count(self, index: str) -> int:
        """How many members a sorted index has (0 for an index that does not exist)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. The object is unusable afterwards."""

    async def put(self, key: str, value: bytes) -> None:
        """Unconditionally store one value."""
        await self.commit(Batch().put(key, value))

    async def delete(self, key: str) -> None:
        """Unconditionally delete one key."""
        await self.commit(Batch().delete(key))
