"""``actorflow storage migrate``: move a single Redis's data to the bucketed layout.

Before Redis Cluster support the Redis backend kept every value at ``Pk:KEY``, every directory
set at ``Pd:DIR`` and every index at ``Pi:NAME``, with no hash tag;
:mod:`actorflow.storage.redis` now refuses such a prefix until this has moved it.
"""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio

from actorflow.errors import ConfigError
from actorflow.storage import parse_storage_url, redact_url
from actorflow.storage._groups import key_group, member_group
from actorflow.storage._redis_client import translated
from actorflow.storage._redis_names import LAYOUT, Names, as_bytes, bucket_of, dir_of, score_rows

__all__ = ["migrate"]

#: Index members moved per transaction.
_CHUNK = 1000


async def migrate(url: str, *, progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """Move the data under a single Redis server's prefix from the layout before Redis Cluster
    support (``Pk:KEY``, ``Pd:DIR``, ``Pi:NAME``) to the bucketed one, then record the layout.

    Run it with every process that uses the storage stopped. Each value is moved with one
    ``RENAME`` (atomic; no copy of the value) in a transaction that also adds its directory
    entry to its bucket's set; each index member goes to its bucket's part; the old sets go
    once copied. It can be interrupted and run again: what was moved is not found again, and
    adding a member is idempotent. On a prefix already in the new layout it changes nothing.
    Returns counts (``keys``, ``index_members``). Raises :class:`ConfigError` for a URL that
    is not a single Redis, :class:`StorageUnavailableError` when it cannot be reached.
    """
    kind, details = parse_storage_url(url)
    shown = redact_url(url)
    if kind != "redis" or details["cluster"]:
        raise ConfigError(f"{shown}: only a single Redis server holds data in the old layout")
    say = progress or (lambda _line: None)
    names = Names(details["prefix"].encode("utf-8"))
    client = redis.asyncio.Redis.from_url(details["url"], decode_responses=False)
    try:
        with translated(shown, details["prefix"], "migration"):
            return await _move(client, names, say)
    finally:
        await client.aclose()


async def _move(client: redis.asyncio.Redis, names: Names, say: Callable[[str], None]) -> dict[str, int]:
    """The migration's work (see :func:`migrate`); redis-py's errors pass through."""
    p = names.prefix
    counts = {"keys": 0, "index_members": 0}
    found = await client.get(names.layout)
    if found is not None and as_bytes(found) == LAYOUT:
        return counts
    async for name in client.scan_iter(match=names.old_pattern(b"k"), count=1000):
        key = bytes(name)[len(p) + 2 :]
        bucket = bucket_of(key_group(key.decode("utf-8")))
        pipe = client.pipeline(transaction=True)
        pipe.rename(bytes(name), names.value(bucket, key))
        pipe.zadd(names.directory(bucket, dir_of(key)), {key: 0})
        await pipe.execute()
        counts["keys"] += 1
        if counts["keys"] % 10000 == 0:
            say(f"{counts['keys']} keys moved")
    async for name in client.scan_iter(match=names.old_pattern(b"i"), count=1000):
        index = bytes(name)[len(p) + 2 :].decode("utf-8")
        while True:
            rows = score_rows(await client.zrange(bytes(name), 0, _CHUNK - 1, withscores=True))
            if not rows:
                break
            pipe = client.pipeline(transaction=True)
            for member, score in rows:
                pipe.zadd(
                    names.index(bucket_of(member_group(index, member.decode("utf-8"))), index),
                    {member: score},
                )
            pipe.zrem(bytes(name), *[m for m, _ in rows])
            await pipe.execute()
            counts["index_members"] += len(rows)
    # The old directory sets list keys that have all moved (the processes are stopped, so
    # nobody wrote a key since).
    old_dirs = [bytes(n) async for n in client.scan_iter(match=names.old_pattern(b"d"), count=1000)]
    for name in old_dirs:
        await client.delete(name)
    await client.delete(p + b"sync")
    await client.set(names.layout, LAYOUT)
    say(f"moved {counts['keys']} keys and {counts['index_members']} index members")
    return counts
