"""Redis storage, on ``redis.asyncio`` with binary (undecoded) values.

Layout, under a key prefix ``P`` (default ``af:``, URL option ``?prefix=``):

``P k:KEY``  (string)
    The value of plain key ``KEY``.
``P d:DIR``  (sorted set, every score 0)
    The keys whose directory is ``DIR``, i.e. ``KEY`` up to and including its last ``/``
    (``""`` for a key without ``/``). Members are full keys, so :meth:`RedisStorage.list_keys`
    is one ``ZRANGEBYLEX`` over the prefix's directory set: no ``SCAN``, cost proportional
    to the page returned. A key and its directory entry always change together, atomically.
``P i:NAME``  (sorted set)
    The named sorted index ``NAME``.

:meth:`RedisStorage.commit` is one Lua script (``EVALSHA``, loaded on demand) that checks
every expectation byte for byte and then applies all writes, so it is atomic with respect to
every other client of the server. Keys and values are UTF-8 / raw bytes; listing order is
byte order, as for the SQLite backend.

Durability is the server's: a committed batch survives any *client* crash. What survives the
server is the operator's choice:

* AOF on the server (``appendonly yes``): with ``appendfsync always`` a commit is on disk
  before it is acknowledged and survives a crash or power loss of that server (with the
  default ``everysec``, the last second can be lost). It does not survive losing the disk,
  nor a failover to a replica that had not received the commit yet.
* ``?wait_replicas=N&wait_timeout=S``: every commit is acknowledged only once N replicas hold
  it (Redis ``WAIT`` after the commit), so it survives the primary's loss and a failover to
  any of those replicas (a replica's memory, or its own AOF, holds it). Reads wait the same
  way for what they returned, so an answer built on a read (an idempotent replay, a re-read
  after a commit whose reply was lost) is never acknowledged while only the primary holds
  its data. If the replicas do not confirm within S seconds, the operation raises
  :class:`StorageUnavailableError` (a commit has then applied on the primary, unconfirmed: a
  keyed retry is answered once the replicas catch up). It costs one ``INCR`` and one ``WAIT``
  per operation: replication is ordered, so a marker written after a commit or a read and
  confirmed by the replicas proves they hold everything before it.

A :class:`RedisStorage` belongs to the event loop it is first used on (redis.asyncio binds
its connections to that loop); using it from another loop raises :class:`StorageError`.
Open one per loop (per process, per thread that runs a loop).

redis-py's own retries are disabled: a command that failed on the wire may have executed, and
re-sending a commit could report ``False`` for a batch that in fact applied. Reads are
retried here (they are idempotent); a commit whose connection breaks raises
:class:`StorageUnavailableError`, and its outcome is then unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TypeVar

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from actorflow.errors import ConfigError, StorageError, StorageUnavailableError
from actorflow.storage import REDIS_REPLY_TIMEOUT, parse_storage_url, redact_url
from actorflow.storage._base import Batch, Storage
from actorflow.storage._checks import check_batch, check_key

__all__ = ["RedisStorage"]

T = TypeVar("T")

#: Seconds to wait for a TCP connection unless the URL sets ``socket_connect_timeout``.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Delays before re-trying an idempotent read after a connection error.
_READ_RETRY_DELAYS = (0.05, 0.25)
#: Keys handed to one run of the delete script by :meth:`RedisStorage.delete_prefix`.
_DELETE_CHUNK = 500

# KEYS: per expectation its value key; per put and per delete its value key and its
# directory-set key; per index put / delete the index key.
# ARGV: 5 counts (expect, put, delete, index put, index delete), then per expectation a flag
# ("1": must equal the next arg; "0": must be absent) and the expected bytes; per put the key
# (directory-set member) and value; per delete the key; per index put member and score; per
# index delete the member.
_COMMIT_LUA = """
local ne, np, nd = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local nip, nid = tonumber(ARGV[4]), tonumber(ARGV[5])
local k, a = 1, 6
for _ = 1, ne do
  local have = redis.call('GET', KEYS[k])
  if ARGV[a] == '0' then
    if have then return 0 end
  elseif have ~= ARGV[a + 1] then
    return 0
  end
  k, a = k + 1, a + 2
end
for _ = 1, np do
  redis.call('SET', KEYS[k], ARGV[a + 1])
  redis.call('ZADD', KEYS[k + 1], 0, ARGV[a])
  k, a = k + 2, a + 2
end
for _ = 1, nd do
  redis.call('DEL', KEYS[k])
  redis.call('ZREM', KEYS[k + 1], ARGV[a])
  k, a = k + 2, a + 1
end
for _ = 1, nip do
  redis.call('ZADD', KEYS[k], ARGV[a + 1], ARGV[a])
  k, a = k + 1, a + 2
end
for _ = 1, nid do
  redis.call('ZREM', KEYS[k], ARGV[a])
  k, a = k + 1, a + 1
end
return 1
"""

# KEYS: pairs (value key, directory-set key); ARGV: the plain keys. Returns how many value
# keys existed (and are now gone).
_DELETE_LUA = """
local n = 0
for i = 1, #ARGV do
  n = n + redis.call('DEL', KEYS[2 * i - 1])
  redis.call('ZREM', KEYS[2 * i], ARGV[i])
end
return n
"""


def _glob_escape(raw: bytes) -> bytes:
    """Escape the characters that are special in a Redis ``MATCH`` pattern."""
    out = bytearray()
    for byte in raw:
        if byte in b"*?[]\\":
            out += b"\\"
        out.append(byte)
    return bytes(out)


def _bytes_successor(raw: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``raw``, or None."""
    stripped = raw.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _b(reply: object) -> bytes:
    """A reply item as bytes (the client never decodes, but its types allow ``str``)."""
    if isinstance(reply, bytes):
        return reply
    if isinstance(reply, str):
        return reply.encode("utf-8")
    raise redis.exceptions.InvalidResponse(f"expected a string reply, got {reply!r}")


def _dir_of(key: bytes) -> bytes:
    return key[: key.rfind(b"/") + 1]


class RedisStorage(Storage):
    """Storage in a Redis server (see the module docstring for the layout and guarantees).

    The constructor validates the URL (raising :class:`ConfigError`) but does not connect;
    :meth:`open` connects and pings. ``list_keys`` returns keys in UTF-8 byte order;
    ``index_range`` orders equal scores by member; ``delete_prefix`` takes a raw string
    prefix and deletes in atomic chunks of up to 500 keys.
    """

    def __init__(self, url: str, *, prefix: str | None = None) -> None:
        kind, details = parse_storage_url(url)
        self.url = redact_url(url)
        if kind != "redis":
            raise ConfigError(f"not a Redis URL: {self.url!r}")
        self.prefix = details["prefix"] if prefix is None else prefix
        if not self.prefix:
            raise ConfigError(f"empty key prefix for Redis storage {self.url!r}")
        self._p = self.prefix.encode("utf-8")
        try:
            self._client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
                details["url"],
                decode_responses=False,
                socket_connect_timeout=DEFAULT_CONNECT_TIMEOUT,
                socket_timeout=REDIS_REPLY_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid Redis URL {self.url!r}: {exc}") from None
        self.wait_replicas = int(details["wait_replicas"])
        self.wait_timeout = float(details["wait_timeout"])
        self._marker = self._p + b"sync"
        self._commit_script = self._client.register_script(_COMMIT_LUA)
        self._delete_script = self._client.register_script(_DELETE_LUA)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, prefix: str | None = None) -> RedisStorage:
        """Connect to the server a ``redis://`` / ``rediss://`` URL names and PING it.

        Raises :class:`ConfigError` for a malformed URL and :class:`StorageUnavailableError`
        naming the redacted URL when the server cannot be reached or refuses the login.
        """
        storage = cls(url, prefix=prefix)
        try:
            await storage._read("connect", storage._client.ping)
        except BaseException:
            await storage.close()
            raise
        return storage

    def __repr__(self) -> str:
        return f"RedisStorage({self.url!r}, prefix={self.prefix!r})"

    # -- plumbing ---------------------------------------------------------------------------

    def _kkey(self, key: bytes) -> bytes:
        return self._p + b"k:" + key

    def _dkey(self, directory: bytes) -> bytes:
        return self._p + b"d:" + directory

    def _ikey(self, name: str) -> bytes:
        return self._p + b"i:" + name.encode("utf-8")

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

    @contextlib.contextmanager
    def _translated(self, what: str, *, unknown_outcome: bool = False) -> Iterator[None]:
        note = " (the commit may or may not have applied)" if unknown_outcome else ""
        try:
            yield
        except StorageError:
            raise
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            raise StorageUnavailableError(
                f"cannot reach Redis during {what}{note}: {type(exc).__name__}: {exc}", self.url
            ) from exc
        except redis.exceptions.NoPermissionError as exc:
            raise StorageError(
                f"the Redis user may not run the {what} on keys under the prefix {self.prefix!r} "
                f"(its ACL allows other commands or keys): {exc}",
                self.url,
            ) from exc
        except redis.exceptions.RedisError as exc:
            # A demoted primary (a failover under way), a full one, or one short of the
            # replicas min-replicas-to-write asks for: the server's state, not the request's
            # fault, so the caller may try again later.
            refused = (redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError)
            if isinstance(exc, refused) or str(exc).startswith("NOREPLICAS"):
                raise StorageUnavailableError(
                    f"Redis refuses writes during {what}{note}: {type(exc).__name__}: {exc}", self.url
                ) from exc
            raise StorageError(f"Redis error during {what}: {type(exc).__name__}: {exc}", self.url) from exc

    async def _replicated(self, what: str, unconfirmed: str) -> None:
        """With ``wait_replicas``, return once that many replicas hold everything written so
        far: write a marker and ``WAIT`` for it on the same connection (replication is
        ordered). Raises :class:`StorageUnavailableError` if they do not within the timeout."""
        if not self.wait_replicas:
            return
        pipe = self._client.pipeline(transaction=False)
        pipe.incr(self._marker)
        pipe.execute_command("WAIT", self.wait_replicas, max(1, round(self.wait_timeout * 1000)))
        _, acked = await pipe.execute()
        if int(acked) < self.wait_replicas:
            raise StorageUnavailableError(
                f"only {int(acked)} of the {self.wait_replicas} replicas (wait_replicas) confirmed "
                f"the {what} within {self.wait_timeout:g} s: {unconfirmed}",
                self.url,
            )

    async def _read(self, what: str, fn: Callable[[], Awaitable[T]], *, confirm: bool = True) -> T:
        """Run an idempotent operation, retrying it briefly after connection errors (with
        ``wait_replicas``, return only once the replicas hold what it saw)."""
        self._check_usable()
        with self._translated(what):
            for delay in (*_READ_RETRY_DELAYS, None):
                try:
                    result = await fn()
                    if confirm:
                        await self._replicated(what, "what it read is not returned")
                    return result
                except (
                    redis.exceptions.AuthenticationError,
                    redis.exceptions.AuthorizationError,
                ):
                    raise
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    if delay is None:
                        raise
                    await asyncio.sleep(delay)
            raise AssertionError("unreachable")

    # -- Storage API ------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or ``None``."""
        check_key(key, "key", self.url)
        raw = self._kkey(key.encode("utf-8"))

        async def do() -> bytes | None:
            value = await self._client.get(raw)
            return None if value is None else _b(value)

        return await self._read("get", do)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of ``keys`` in order (``None`` for absent ones), from one ``MGET``."""
        keys = list(keys)
        for k in keys:
            check_key(k, "key", self.url)
        if not keys:
            return []
        raws = [self._kkey(k.encode("utf-8")) for k in keys]

        async def do() -> list[bytes | None]:
            values = await self._client.mget(raws)
            return [None if v is None else _b(v) for v in values]

        return await self._read("get_many", do)

    async def commit(self, batch: Batch) -> bool:
        """Apply ``batch`` with one Lua script if every expectation holds; return whether it did.

        An empty batch returns ``True`` without a round trip. If the connection breaks while
        the script is in flight, :class:`StorageUnavailableError` is raised and the batch may
        or may not have applied (callers re-read to find out).
        """
        cb = check_batch(batch, self.url)
        if not cb.expect and cb.writes_nothing:
            return True
        self._check_usable()
        keys: list[bytes] = []
        args: list[bytes | str] = [
            str(len(cb.expect)),
            str(len(cb.puts)),
            str(len(cb.deletes)),
            str(len(cb.index_put)),
            str(len(cb.index_delete)),
        ]
        for key, want in cb.expect:
            keys.append(self._kkey(key.encode("utf-8")))
            args += ["0", b""] if want is None else ["1", want]
        for key, value in cb.puts:
            raw = key.encode("utf-8")
            keys += [self._kkey(raw), self._dkey(_dir_of(raw))]
            args += [raw, value]
        for key in cb.deletes:
            raw = key.encode("utf-8")
            keys += [self._kkey(raw), self._dkey(_dir_of(raw))]
            args.append(raw)
        for name, member, score in cb.index_put:
            keys.append(self._ikey(name))
            args += [member.encode("utf-8"), repr(score)]
        for name, member in cb.index_delete:
            keys.append(self._ikey(name))
            args.append(member.encode("utf-8"))
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
            )
        return applied

    async def list_keys(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Keys ``prefix + name`` where ``name`` has no ``/``, in byte order.

        Only keys greater than ``start_after`` are returned (if given), at most ``limit`` of
        them (``limit <= 0`` returns ``[]``). One ``ZRANGEBYLEX`` on the prefix's directory.
        """
        check_key(prefix, "prefix", self.url)
        if start_after is not None:
            check_key(start_after, "start_after", self.url)
        if limit is not None and limit <= 0:
            return []
        raw = prefix.encode("utf-8")
        dkey = self._dkey(_dir_of(raw))
        if start_after is not None and start_after >= prefix:
            low = b"(" + start_after.encode("utf-8")
        else:
            low = b"[" + raw if raw else b"-"
        succ = _bytes_successor(raw)
        high = b"(" + succ if succ is not None else b"+"

        async def do() -> list[str]:
            if limit is None:
                members = await self._client.zrangebylex(dkey, low, high)
            else:
                members = await self._client.zrangebylex(dkey, low, high, start=0, num=limit)
            return [_b(m).decode("utf-8") for m in members]

        return await self._read("list_keys", do)

    async def _delete_raw(self, value_keys: list[bytes]) -> int:
        """Delete value keys (full Redis names) and their directory entries; count the deleted."""
        keys: list[bytes] = []
        args: list[bytes] = []
        strip = len(self._kkey(b""))
        for vkey in value_keys:
            plain = vkey[strip:]
            keys += [vkey, self._dkey(_dir_of(plain))]
            args.append(plain)
        # Deleting is idempotent, so a retry after a lost reply is harmless (the count may
        # then be low).
        run = lambda: self._delete_script(keys=keys, args=args)  # noqa: E731
        return int(await self._read("delete_prefix", run, confirm=False))

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key that starts with ``prefix`` (a raw string prefix, at any depth).

        ``delete_prefix("a/b")`` also deletes ``"a/bc"``; pass ``"a/b/"`` for a directory.
        Finds the keys with ``SCAN MATCH``, deletes each together with its directory entry,
        then sweeps the directory sets under the prefix for anything left. Returns the
        number of keys deleted. Indexes are not touched.
        """
        check_key(prefix, "prefix", self.url)
        self._check_usable()
        tail = _glob_escape(prefix.encode("utf-8")) + b"*"
        value_pattern = _glob_escape(self._kkey(b"")) + tail
        dir_pattern = _glob_escape(self._dkey(b"")) + tail
        total = 0
        with self._translated("delete_prefix"):
            pending: list[bytes] = []
            async for vkey in self._client.scan_iter(match=value_pattern, count=1000):
                pending.append(bytes(vkey))
                if len(pending) >= _DELETE_CHUNK:
                    total += await self._delete_raw(pending)
                    pending = []
            if pending:
                total += await self._delete_raw(pending)
            # Directory sets whose directory starts with the prefix hold only keys under it;
            # anything still listed there (a key written concurrently) goes too.
            dir_sets = [bytes(d) async for d in self._client.scan_iter(match=dir_pattern)]
            for dkey in dir_sets:
                while True:
                    members = await self._client.zrange(dkey, 0, _DELETE_CHUNK - 1)
                    if not members:
                        break
                    total += await self._delete_raw([self._kkey(_b(m)) for m in members])
            await self._replicated("delete_prefix", "the deletion applied on the primary, unconfirmed")
        return total

    async def index_range(
        self, index: str, *, max_score: float | None = None, limit: int | None = None
    ) -> list[tuple[str, float]]:
        """Members with score <= ``max_score``, lowest score first, ties by member."""
        check_key(index, "index name", self.url)
        if limit is not None and limit <= 0:
            return []
        ikey = self._ikey(index)
        high = "+inf" if max_score is None else repr(float(max_score))
        if high == "nan":
            return []

        async def do() -> list[tuple[str, float]]:
            if limit is None:
                rows = await self._client.zrangebyscore(ikey, "-inf", high, withscores=True)
            else:
                rows = await self._client.zrangebyscore(
                    ikey, "-inf", high, start=0, num=limit, withscores=True
                )
            out: list[tuple[str, float]] = []
            for row in rows:
                if not isinstance(row, (tuple, list)) or len(row) != 2:
                    raise redis.exceptions.InvalidResponse(f"unexpected ZRANGEBYSCORE row {row!r}")
                out.append((_b(row[0]).decode("utf-8"), float(row[1])))
            return out

        return await self._read("index_range", do)

    async def index_score(self, index: str, member: str) -> float | None:
        """The score of ``member`` in ``index``, or ``None``."""
        check_key(index, "index name", self.url)
        check_key(member, "index member", self.url)
        ikey = self._ikey(index)
        raw = member.encode("utf-8")

        async def do() -> float | None:
            score = await self._client.zscore(ikey, raw)
            return None if score is None else float(score)

        return await self._read("index_score", do)

    async def index_count(self, index: str) -> int:
        """How many members ``index`` has (one ``ZCARD``)."""
        check_key(index, "index name", self.url)
        ikey = self._ikey(index)

        async def do() -> int:
            return int(await self._client.zcard(ikey))

        return await self._read("index_count", do)

    async def close(self) -> None:
        """Close the connection pool. Idempotent; errors while closing are ignored."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self._client.aclose()
