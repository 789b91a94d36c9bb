"""Where the Redis backend keeps what (the physical layout), and the scripts that change it.

See :mod:`actorflow.storage.redis` for the layout and its guarantees; this module only names
keys (:class:`Names`), buckets and hash tags, and holds the Lua and the reply helpers that the
backend and :func:`actorflow.storage.redis.migrate` share.
"""

from __future__ import annotations

import zlib

import redis.exceptions
from redis.crc import key_slot

#: The most arguments one command may carry (ElastiCache Serverless refuses more).
MAX_ARGS = 3999
#: Buckets of groups: spread directories and indexes have one part per bucket, and a cluster
#: spreads its data over at most this many slots' shards.
BUCKETS = 16
#: The layout this backend reads and writes, as kept in ``Playout``.
LAYOUT = f"2:{BUCKETS}".encode()


def bucket_tags(n: int) -> tuple[bytes, ...]:
    """Hash tags for ``n`` buckets whose slots fall in ``n`` equal parts of the 16,384 slots, so
    a cluster whose primaries own equal slot ranges gets an equal share of buckets."""
    width, tags, i = 16384 // n, [b""] * n, 0
    while not all(tags):
        tag = str(i).encode()
        part = key_slot(tag) // width
        if part < n and not tags[part]:
            tags[part] = tag
        i += 1
    return tuple(tags)


TAGS = bucket_tags(BUCKETS)


def bucket_of(group: str) -> int:
    """The bucket of a group (stable across processes and versions: CRC-32)."""
    return zlib.crc32(group.encode("utf-8")) % BUCKETS


def buckets_of(group: str | None) -> list[int]:
    """The buckets a directory or index of ``group`` lives in: its group's one, or every
    bucket for a spread one (``None``, see :func:`actorflow.storage._groups.dir_group`)."""
    return list(range(BUCKETS)) if group is None else [bucket_of(group)]


COMMIT_LUA = """
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
DELETE_LUA = """
local n = 0
for i = 1, #ARGV do
  n = n + redis.call('DEL', KEYS[2 * i - 1])
  redis.call('ZREM', KEYS[2 * i], ARGV[i])
end
return n
"""


def glob_escape(raw: bytes) -> bytes:
    """Escape the characters that are special in a Redis ``MATCH`` pattern."""
    out = bytearray()
    for byte in raw:
        if byte in b"*?[]\\":
            out += b"\\"
        out.append(byte)
    return bytes(out)


def bytes_successor(raw: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``raw``, or None."""
    stripped = raw.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def as_bytes(reply: object) -> bytes:
    """A reply item as bytes (the client never decodes, but its types allow ``str``)."""
    if isinstance(reply, bytes):
        return reply
    if isinstance(reply, str):
        return reply.encode("utf-8")
    raise redis.exceptions.InvalidResponse(f"expected a string reply, got {reply!r}")


def dir_of(key: bytes) -> bytes:
    return key[: key.rfind(b"/") + 1]


def score_rows(reply: object) -> list[tuple[bytes, float]]:
    """A ``ZRANGEBYSCORE ... WITHSCORES`` reply as ``(member, score)`` pairs."""
    out: list[tuple[bytes, float]] = []
    for row in reply:  # type: ignore[attr-defined]
        if not isinstance(row, (tuple, list)) or len(row) != 2:
            raise redis.exceptions.InvalidResponse(f"unexpected ZRANGEBYSCORE row {row!r}")
        out.append((as_bytes(row[0]), float(row[1])))
    return out


class Names:
    """The physical names under one key prefix ``P``: ``P{T_b}k:KEY`` (a value), ``P{T_b}d:DIR``
    (a directory set), ``P{T_b}i:NAME`` (an index part), ``P{T_b}sync`` (the ``WAIT``
    marker) for bucket ``b`` with hash tag ``T_b``, and ``Playout``."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.tagged = tuple(prefix + b"{" + tag + b"}" for tag in TAGS)
        self.layout = prefix + b"layout"

    def value(self, bucket: int, key: bytes) -> bytes:
        return self.tagged[bucket] + b"k:" + key

    def directory(self, bucket: int, directory: bytes) -> bytes:
        return self.tagged[bucket] + b"d:" + directory

    def index(self, bucket: int, name: str) -> bytes:
        return self.tagged[bucket] + b"i:" + name.encode("utf-8")

    def sync(self, bucket: int) -> bytes:
        return self.tagged[bucket] + b"sync"

    def pattern(self, kind: bytes, raw_prefix: bytes) -> bytes:
        """A ``SCAN MATCH`` pattern for names of ``kind`` (``k:``, ``d:``) in any bucket whose
        plain part starts with ``raw_prefix``; it may match more (:meth:`untag` tells)."""
        return glob_escape(self.prefix) + b"{*}" + kind + glob_escape(raw_prefix) + b"*"

    def old_pattern(self, kinds: bytes = b"kdi") -> bytes:
        """Names of the layout before buckets (``Pk:``, ``Pd:``, ``Pi:``)."""
        return glob_escape(self.prefix) + b"[" + kinds + b"]:*"

    def untag(self, name: bytes, kind: bytes) -> tuple[int, bytes] | None:
        """``(bucket, rest)`` of a physical name ``P{T_b}<kind>rest`` of this prefix, or None."""
        p = self.prefix
        if not name.startswith(p + b"{"):
            return None
        close = name.find(b"}", len(p) + 1)
        if close < 0:
            return None
        tag = name[len(p) + 1 : close]
        if tag not in TAGS or name[close + 1 : close + 1 + len(kind)] != kind:
            return None
        return TAGS.index(tag), name[close + 1 + len(kind) :]
