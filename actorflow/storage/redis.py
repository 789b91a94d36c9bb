"""Redis storage, on ``redis.asyncio`` with binary (undecoded) values; a single server, or a
Redis Cluster (``redis+cluster://``, :class:`redis.asyncio.cluster.RedisCluster`).

Layout, under a key prefix ``P`` (default ``af:``, URL option ``?prefix=``). Every key and
index member belongs to a *group* (an actor with its sub-workflows, a workflow; see
:mod:`actorflow.storage._groups`), a group to one of :data:`BUCKETS` buckets (CRC-32 of the
group), and a bucket ``b`` to its hash tag ``{T_b}``, chosen so that the buckets' hash slots
are evenly spaced over the cluster's slot range:

``P{T_b}k:KEY``  (string)
    The value of plain key ``KEY``.
``P{T_b}d:DIR``  (sorted set, every score 0)
    The keys of bucket ``b`` whose directory is ``DIR`` (``KEY`` up to and including its last
    ``/``). Members are full keys, so :meth:`RedisStorage.list_keys` is one ``ZRANGEBYLEX``
    per bucket that the directory spans (one for a directory inside a group, every bucket
    for a spread one, merged), costing in proportion to the page returned.
``P{T_b}i:NAME``  (sorted set)
    Bucket ``b``'s part of the named sorted index ``NAME``.
``P{T_b}sync``
    The marker ``wait_replicas`` writes before it ``WAIT`` s.
``Playout``
    The layout's version and bucket count (``2:16``), written when the storage is first
    opened; a database that holds keys of the earlier layout (``Pk:``, ``Pd:``, ``Pi:``, no
    hash tag) is refused until ``actorflow storage migrate`` has moved them
    (:func:`actorflow.storage.redis_migrate.migrate`).

A batch stays within one group, so :meth:`RedisStorage.commit` is one Lua script (``EVALSHA``,
loaded on demand, on any node that lacks it) over keys of one hash slot: it checks every
expectation byte for byte and then applies all writes, atomically with respect to every
other client, on a single server and on a cluster alike. Keys and values are UTF-8 / raw
bytes; listing order is byte order, as for the SQLite backend.

Durability is the server's: a committed batch survives any *client* crash. What survives the
server is the operator's choice:

* AOF on the server (``appendonly yes``): with ``appendfsync always`` a commit is on disk
  before it is acknowledged and survives a crash or power loss of that server (with the
  default ``everysec``, the last second can be lost). It does not survive losing the disk,
  nor a failover to a replica that had not received the commit yet.
* ``?wait_replicas=N&wait_timeout=S``: every commit is acknowledged only once N replicas hold
  it (Redis ``WAIT`` after the commit, on the primary of the commit's slot), so it survives
  the primary's loss and a failover to any of those replicas (a replica's memory, or its own
  AOF, holds it). Reads wait the same way for what they returned, so an answer built on a
  read (an idempotent replay, a re-read after a commit whose reply was lost) is never
  acknowledged while only the primary holds its data. If the replicas do not confirm within
  S seconds, the operation raises :class:`StorageUnavailableError` (a commit has then
  applied on the primary, unconfirmed: a keyed retry is answered once the replicas catch
  up). It costs one ``INCR`` and one ``WAIT`` per operation and primary: replication is
  ordered, so a marker written after a commit or a read and confirmed by the replicas
  proves they hold everything before it.

A :class:`RedisStorage` belongs to the event loop it is first used on (redis.asyncio binds
its connections to that loop); using it from another loop raises :class:`StorageError`.
Open one per loop (per process, per thread that runs a loop).

redis-py's own retries are disabled: a command that failed on the wire may have executed, and
re-sending a commit could report ``False`` for a batch that in fact applied. Reads are
retried here (they are idempotent); a commit whose connection breaks raises
:class:`StorageUnavailableError`, and its outcome is then unknown. A cluster's redirections
(``MOVED``, ``ASK``: the slot is elsewhere, nothing ran) are followed by the client; a node
that cannot be reached makes the client re-read the cluster's layout on the next command,
so calls recover once a failover has promoted a replica. No command carries more than
3,999 arguments (the cap of ElastiCache Serverless): deletes go in chunks, and a commit
larger than that is refused before it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import redis.asyncio
import redis.asyncio.cluster
import redis.exceptions

from actorflow.errors import ConfigError, StorageError
from actorflow.storage import parse_storage_url, redact_url
from actorflow.storage._base import Batch, Storage
from actorflow.storage._checks import check_batch, check_key
from actorflow.storage._groups import dir_group, index_group, key_group, member_group
from actorflow.storage._redis_client import RETRYABLE, Replicas, make_client, translated
from actorflow.storage._redis_names import (
    BUCKETS,
    COMMIT_LUA,
    DELETE_LUA,
    LAYOUT,
    MAX_ARGS,
    Names,
    as_bytes,
    bucket_of,
    buckets_of,
    bytes_successor,
    dir_of,
    score_rows,
)

__all__ = ["BUCKETS", "LAYOUT", "RedisStorage", "bucket_of"]

T = TypeVar("T")
#: A read for :meth:`RedisStorage._pipelined`: a client method's name, its arguments, options.
_Call = tuple[str, tuple[Any, ...], dict[str, Any]]

#: Delays before re-trying an idempotent read after a connection error.
_READ_RETRY_DELAYS = (0.05, 0.25)
#: Keys handed to one run of the delete script by :meth:`RedisStorage.delete_prefix`.
_DELETE_CHUNK = 500
#: Keys per ``MGET``.
_READ_CHUNK = 1000


class RedisStorage(Storage):
    """Storage in a Redis server or cluster (see the module docstring for the layout and
    guarantees).

    The constructor validates the URL (raising :class:`ConfigError`) but does not connect;
    :meth:`open` connects, pings and checks the layout. ``list_keys`` returns keys in UTF-8
    byte order; ``index_range`` orders equal scores by member; ``delete_prefix`` takes a raw
    string prefix and deletes in atomic chunks of up to 500 keys of one bucket. ``get_many``
    reads at one point in time the keys of one group (one ``MGET``); keys of several groups
    are read per bucket.
    """

    def __init__(self, url: str, *, prefix: str | None = None) -> None:
        kind, details = parse_storage_url(url)
        self.url = redact_url(url)
        if kind != "redis":
            raise ConfigError(f"not a Redis URL: {self.url!r}")
        self.prefix = details["prefix"] if prefix is None else prefix
        if not self.prefix:
            raise ConfigError(f"empty key prefix for Redis storage {self.url!r}")
        if "{" in self.prefix or "}" in self.prefix:
            raise ConfigError(f"the key prefix {self.prefix!r} of {self.url!r} must not contain '{{' or '}}'")
        self.cluster = bool(details["cluster"])
        self._p = self.prefix.encode("utf-8")
        self._client = make_client(details, self.url)
        self.wait_replicas = int(details["wait_replicas"])
        self.wait_timeout = float(details["wait_timeout"])
        self._names = Names(self._p)
        self._replicas = Replicas(self._client, self._names, self.wait_replicas, self.wait_timeout, self.url)
        self._commit_script = self._client.register_script(COMMIT_LUA)
        self._delete_script = self._client.register_script(DELETE_LUA)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, prefix: str | None = None) -> RedisStorage:
        """Connect to the server (or cluster) a ``redis://`` / ``rediss://`` /
        ``redis+cluster://`` URL names, PING it and check the layout of the data under the
        prefix (recording it on first use).

        Raises :class:`ConfigError` for a malformed URL or data in the earlier layout (run
        ``actorflow storage migrate``), and :class:`StorageUnavailableError` naming the
        redacted URL when the server cannot be reached or refuses the login.
        """
        storage = cls(url, prefix=prefix)
        try:
            await storage._read("connect", storage._client.ping, confirm=False)
            await storage._check_layout()
        except BaseException:
            await storage.close()
            raise
        return storage

    def __repr__(self) -> str:
        return f"RedisStorage({self.url!r}, prefix={self.prefix!r})"

    # -- plumbing ---------------------------------------------------------------------------

    def _kkey(self, bucket: int, key: bytes) -> bytes:
        return self._names.value(bucket, key)

    def _dkey(self, bucket: int, directory: bytes) -> bytes:
        return self._names.directory(bucket, directory)

    def _ikey(self, bucket: int, name: str) -> bytes:
        return self._names.index(bucket, name)

    def _key_bucket(self, key: str) -> int:
        return bucket_of(key_group(key))

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageError("storage is closed", self.url)
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise StorageError(
                "this RedisStorage belongs to another event loop; open one per event loop",
                self.url,
            )

    def _translated(
        self, what: str, *, unknown_outcome: bool = False
    ) -> contextlib.AbstractContextManager[None]:
        return translated(self.url, self.prefix, what, unknown_outcome=unknown_outcome)

    async def _replicated(self, what: str, unconfirmed: str, buckets: Iterable[int]) -> None:
        await self._replicas.confirm(what, unconfirmed, buckets)

    async def _read(
        self,
        what: str,
        fn: Callable[[], Awaitable[T]],
        *,
        confirm: bool = True,
        buckets: Iterable[int] = (),
    ) -> T:
        """Run an idempotent operation, retrying it briefly after connection errors (with
        ``wait_replicas``, return only once the replicas of ``buckets`` hold what it saw)."""
        self._check_usable()
        with self._translated(what):
            for delay in (*_READ_RETRY_DELAYS, None):
                try:
                    result = await fn()
                    if confirm:
                        await self._replicated(what, "what it read is not returned", buckets)
                    return result
                except (
                    redis.exceptions.AuthenticationError,
                    redis.exceptions.AuthorizationError,
                ):
                    raise
                except RETRYABLE:
                    if delay is None:
                        raise
                    await asyncio.sleep(delay)
            raise AssertionError("unreachable")

    async def _pipelined(self, calls: list[_Call]) -> list[Any]:
        """Run reads ``(command method, args, options)`` in one pipeline (per node on a
        cluster); one call needs no pipeline."""
        if len(calls) == 1:
            name, args, options = calls[0]
            return [await getattr(self._client, name)(*args, **options)]
        pipe = self._client.pipeline(transaction=False)
        for name, args, options in calls:
            getattr(pipe, name)(*args, **options)
        return list(await pipe.execute())

    async def _check_layout(self) -> None:
        """Check (or, on an empty prefix, record) the layout of the data under the prefix."""

        async def do() -> None:
            found = await self._client.get(self._names.layout)
            if found is not None:
                if as_bytes(found) != LAYOUT:
                    raise StorageError(
                        f"the data under the prefix {self.prefix!r} is in layout "
                        f"{as_bytes(found).decode(errors='replace')!r}; "
                        f"this version of actorflow reads layout {LAYOUT.decode()!r}",
                        self.url,
                    )
                return
            if await self._has_old_layout():
                raise ConfigError(
                    f"the data under the prefix {self.prefix!r} of {self.url} is in the layout of "
                    f"actorflow before Redis Cluster support (keys {self.prefix}k:..., no hash tag); "
                    f"stop every process that uses it and run: actorflow storage migrate {self.url!r}"
                )
            with contextlib.suppress(redis.exceptions.ReadOnlyError):  # a replica: reads only
                await self._client.set(self._names.layout, LAYOUT, nx=True)

        await self._read("layout check", do)

    async def _has_old_layout(self) -> bool:
        pattern = self._names.old_pattern()
        async for _ in self._client.scan_iter(match=pattern, count=1000):
            return True
        return False

    # -- Storage API ------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or ``None``."""
        check_key(key, "key", self.url)
        bucket = self._key_bucket(key)
        raw = self._kkey(bucket, key.encode("utf-8"))

        async def do() -> bytes | None:
            value = await self._client.get(raw)
            return None if value is None else as_bytes(value)

        return await self._read("get", do, buckets=[bucket])

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of ``keys`` in order (``None`` for absent ones): one ``MGET`` per bucket
        (chunks of 1,000), so keys of one group are read at one point in time."""
        keys = list(keys)
        for k in keys:
            check_key(k, "key", self.url)
        if not keys:
            return []
        by_bucket: dict[int, list[int]] = {}
        for i, k in enumerate(keys):
            by_bucket.setdefault(self._key_bucket(k), []).append(i)
        parts: list[list[int]] = []
        calls: list[_Call] = []
        for bucket, where in by_bucket.items():
            for start in range(0, len(where), _READ_CHUNK):
                part = where[start : start + _READ_CHUNK]
                parts.append(part)
                # By name: a cluster pipeline refuses its mget() (which may span slots; these do not).
                calls.append(
                    (
                        "execute_command",
                        ("MGET", *[self._kkey(bucket, keys[i].encode("utf-8")) for i in part]),
                        {},
                    )
                )

        async def do() -> list[bytes | None]:
            out: list[bytes | None] = [None] * len(keys)
            for part, values in zip(parts, await self._pipelined(calls), strict=True):
                for i, v in zip(part, values, strict=True):
                    out[i] = None if v is None else as_bytes(v)
            return out

        return await self._read("get_many", do, buckets=by_bucket)

    async def commit(self, batch: Batch) -> bool:
        """Apply ``batch`` with one Lua script if every expectation holds; return whether it did.

        The batch's keys all have the hash tag of its group's bucket (one slot). An empty
        batch returns ``True`` without a round trip. If the connection breaks while the script
        is in flight, :class:`StorageUnavailableError` is raised and the batch may or may not
        have applied (callers re-read to find out). A batch that would need more than 3,999
        arguments raises :class:`StorageError` before anything is sent.
        """
        cb = check_batch(batch, self.url)
        if not cb.expect and cb.writes_nothing:
            return True
        self._check_usable()
        b = bucket_of(cb.group)
        keys: list[bytes] = []
        args: list[bytes | str] = [
            str(len(cb.expect)),
            str(len(cb.puts)),
            str(len(cb.deletes)),
            str(len(cb.index_put)),
            str(len(cb.index_delete)),
        ]
        for key, want in cb.expect:
            keys.append(self._kkey(b, key.encode("utf-8")))
            args += ["0", b""] if want is None else ["1", want]
        for key, value in cb.puts:
            raw = key.encode("utf-8")
            keys += [self._kkey(b, raw), self._dkey(b, dir_of(raw))]
            args += [raw, value]
        for key in cb.deletes:
            raw = key.encode("utf-8")
            keys += [self._kkey(b, raw), self._dkey(b, dir_of(raw))]
            args.append(raw)
        for name, member, score in cb.index_put:
            keys.append(self._ikey(b, name))
            args += [member.encode("utf-8"), repr(score)]
        for name, member in cb.index_delete:
            keys.append(self._ikey(b, name))
            args.append(member.encode("utf-8"))
        if len(keys) + len(args) + 3 > MAX_ARGS:
            raise StorageError(
                f"a commit of {len(keys)} keys needs {len(keys) + len(args) + 3} arguments, more than "
                f"the {MAX_ARGS} one Redis command may carry; split it",
                self.url,
            )
        with self._translated("commit", unknown_outcome=True):
            result = await self._commit_script(keys=keys, args=args)
            applied = int(result) == 1
            # Wait either way: what failed an expectation may be another client's write that
            # the replicas do not hold yet.
            await self._replicated(
                "commit",
                "it applied on the primary but is not acknowledged (it could be lost in a failover)"
                if applied
                else "its expectation failed on state not yet confirmed",
                [b],
            )
        return applied

    async def list_keys(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Keys ``prefix + name`` where ``name`` has no ``/``, in byte order.

        Only keys greater than ``start_after`` are returned (if given), at most ``limit`` of
        them (``limit <= 0`` returns ``[]``). One ``ZRANGEBYLEX`` on the directory's set when
        the directory is inside one group; on a spread one (every actor of a type, every
        workflow) one per bucket, pipelined, merged in order.
        """
        check_key(prefix, "prefix", self.url)
        if start_after is not None:
            check_key(start_after, "start_after", self.url)
        if limit is not None and limit <= 0:
            return []
        raw = prefix.encode("utf-8")
        directory = dir_of(raw)
        buckets = buckets_of(dir_group(directory.decode("utf-8")))
        if start_after is not None and start_after >= prefix:
            low = b"(" + start_after.encode("utf-8")
        else:
            low = b"[" + raw if raw else b"-"
        succ = bytes_successor(raw)
        high = b"(" + succ if succ is not None else b"+"
        page = {} if limit is None else {"start": 0, "num": limit}
        calls: list[_Call] = [("zrangebylex", (self._dkey(b, directory), low, high), page) for b in buckets]

        async def do() -> list[str]:
            parts = [[as_bytes(m) for m in reply] for reply in await self._pipelined(calls)]
            merged = heapq.merge(*parts) if len(parts) > 1 else iter(parts[0])
            out = [m.decode("utf-8") for m in merged]
            return out if limit is None else out[:limit]

        return await self._read("list_keys", do, buckets=buckets)

    async def _delete_raw(self, bucket: int, plain: list[bytes]) -> int:
        """Delete keys of one bucket with their directory entries; count the deleted."""
        keys: list[bytes] = []
        for key in plain:
            keys += [self._kkey(bucket, key), self._dkey(bucket, dir_of(key))]
        # Deleting is idempotent, so a retry after a lost reply is harmless (the count may
        # then be low).
        run = lambda: self._delete_script(keys=keys, args=plain)  # noqa: E731
        return int(await self._read("delete_prefix", run, confirm=False))

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key that starts with ``prefix`` (a raw string prefix, at any depth).

        ``delete_prefix("a/b")`` also deletes ``"a/bc"``; pass ``"a/b/"`` for a directory.
        Finds the keys with ``SCAN MATCH`` (every node of a cluster), deletes each together
        with its directory entry in chunks of one bucket, then sweeps the directory sets
        under the prefix for anything left. Returns the number of keys deleted. Indexes are
        not touched.
        """
        check_key(prefix, "prefix", self.url)
        self._check_usable()
        raw_prefix = prefix.encode("utf-8")
        # The patterns match every bucket's tag; untag keeps the names that really are ours.
        value_pattern = self._names.pattern(b"k:", raw_prefix)
        dir_pattern = self._names.pattern(b"d:", raw_prefix)
        total = 0
        pending: dict[int, list[bytes]] = {}

        async def flush(bucket: int) -> None:
            nonlocal total
            total += await self._delete_raw(bucket, pending.pop(bucket))

        with self._translated("delete_prefix"):
            async for name in self._client.scan_iter(match=value_pattern, count=1000):
                found = self._names.untag(bytes(name), b"k:")
                if found is None or not found[1].startswith(raw_prefix):
                    continue
                pending.setdefault(found[0], []).append(found[1])
                if len(pending[found[0]]) >= _DELETE_CHUNK:
                    await flush(found[0])
            for bucket in list(pending):
                await flush(bucket)
            # Directory sets whose directory starts with the prefix hold only keys under it;
            # anything still listed there (a key written concurrently) goes too.
            dir_sets = [bytes(d) async for d in self._client.scan_iter(match=dir_pattern, count=1000)]
            touched: set[int] = set()
            for dkey in dir_sets:
                found = self._names.untag(dkey, b"d:")
                if found is None or not found[1].startswith(raw_prefix):
                    continue
                touched.add(found[0])
                while True:
                    members = await self._client.zrange(dkey, 0, _DELETE_CHUNK - 1)
                    if not members:
                        break
                    pending[found[0]] = [as_bytes(m) for m in members]
                    await flush(found[0])
            await self._replicated(
                "delete_prefix", "the deletion applied on the primary, unconfirmed", touched or range(BUCKETS)
            )
        return total

    async def index_range(
        self, index: str, *, max_score: float | None = None, limit: int | None = None
    ) -> list[tuple[str, float]]:
        """Members with score <= ``max_score``, lowest score first, ties by member; from each
        bucket's part of a spread index (pipelined), merged."""
        check_key(index, "index name", self.url)
        if limit is not None and limit <= 0:
            return []
        high = "+inf" if max_score is None else repr(float(max_score))
        if high == "nan":
            return []
        buckets = buckets_of(index_group(index))
        page: dict[str, Any] = (
            {"withscores": True} if limit is None else {"withscores": True, "start": 0, "num": limit}
        )
        calls: list[_Call] = [("zrangebyscore", (self._ikey(b, index), "-inf", high), page) for b in buckets]

        async def do() -> list[tuple[str, float]]:
            parts = [score_rows(reply) for reply in await self._pipelined(calls)]
            if len(parts) > 1:
                merged: Iterable[tuple[bytes, float]] = heapq.merge(*parts, key=lambda r: (r[1], r[0]))
            else:
                merged = parts[0]
            out = [(m.decode("utf-8"), score) for m, score in merged]
            return out if limit is None else out[:limit]

        return await self._read("index_range", do, buckets=buckets)

    async def index_score(self, index: str, member: str) -> float | None:
        """The score of ``member`` in ``index``, or ``None``."""
        check_key(index, "index name", self.url)
        check_key(member, "index member", self.url)
        bucket = bucket_of(member_group(index, member))
        ikey = self._ikey(bucket, index)
        raw = member.encode("utf-8")

        async def do() -> float | None:
            score = await self._client.zscore(ikey, raw)
            return None if score is None else float(score)

        return await self._read("index_score", do, buckets=[bucket])

    async def index_count(self, index: str) -> int:
        """How many members ``index`` has (one ``ZCARD`` per bucket it spans, summed)."""
        check_key(index, "index name", self.url)
        buckets = buckets_of(index_group(index))
        calls: list[_Call] = [("zcard", (self._ikey(b, index),), {}) for b in buckets]

        async def do() -> int:
            return sum(int(n) for n in await self._pipelined(calls))

        return await self._read("index_count", do, buckets=buckets)

    async def close(self) -> None:
        """Close the connection pools. Idempotent; errors while closing are ignored."""
        if self._closed:
            return
        self._closed = True
        await self._replicas.close()
        with contextlib.suppress(Exception):
            await self._client.aclose()
