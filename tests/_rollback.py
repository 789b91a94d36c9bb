"""Roll a storage back in time, as a crash that loses the last writes or a restore does.

``saved = save(url)`` copies everything a storage holds (for Redis: every key under the URL's
prefix, with ``DUMP``; for SQLite: every row) and ``restore(url, saved)`` puts exactly that
back, dropping whatever was written since. On Redis each hash slot is saved and restored in one
transaction of its own (a cluster, or the suite's slot-checked server, refuses one that spans
slots), so an actor's keys roll back together, as a shard's would. Processes using the storage
keep running and keep whatever they cached, which is the point: Redis with ``appendfsync
everysec`` that loses its last second on a crash, a failover to a replica that lagged, or a
restore from a backup all look like this to them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

import redis
from redis.crc import key_slot

from actorflow.storage import parse_storage_url


def _by_slot(keys: Iterable[bytes]) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for key in keys:
        out.setdefault(key_slot(key), []).append(key)
    return out


def _nodes(details: dict[str, str]) -> list[redis.Redis]:
    """Plain clients of every primary: the one server, or each primary of a cluster."""
    if not details["cluster"]:
        return [redis.Redis.from_url(details["url"])]
    with redis.RedisCluster.from_url(details["url"]) as cluster:
        return [redis.Redis(host=n.host, port=n.port) for n in cluster.get_primaries()]


def _owned_slots(client: redis.Redis) -> set[int] | None:
    """The slots a cluster node serves (None for a server that is not in cluster mode)."""
    if not client.info("cluster").get("cluster_enabled"):
        return None
    me = client.execute_command("CLUSTER", "MYID")
    me = me.decode() if isinstance(me, bytes) else me
    out: set[int] = set()
    for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
        node_id = primary[2].decode() if isinstance(primary[2], bytes) else primary[2]
        if node_id == me:
            out.update(range(start, end + 1))
    return out


def save(url: str) -> Any:
    kind, details = parse_storage_url(url)
    if kind == "sqlite":
        with sqlite3.connect(details["path"]) as conn:
            return (
                conn.execute("SELECT key, value FROM kv").fetchall(),
                conn.execute("SELECT name, member, score FROM idx").fetchall(),
            )
    pattern = details["prefix"].replace("*", "\\*").encode() + b"*"
    saved: dict[bytes, Any] = {}
    for client in _nodes(details):
        with client:
            for keys in _by_slot(client.scan_iter(match=pattern, count=1000)).values():
                pipe = client.pipeline(transaction=True)  # one point in time per slot
                for key in keys:
                    pipe.dump(key)
                saved.update(zip(keys, pipe.execute(), strict=True))
    return saved


def restore(url: str, saved: Any) -> None:
    kind, details = parse_storage_url(url)
    if kind == "sqlite":
        kv, idx = saved
        conn = sqlite3.connect(details["path"], isolation_level=None, timeout=30)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM kv")
            conn.execute("DELETE FROM idx")
            conn.executemany("INSERT INTO kv (key, value) VALUES (?, ?)", kv)
            conn.executemany("INSERT INTO idx (name, member, score) VALUES (?, ?, ?)", idx)
            conn.execute("COMMIT")
        finally:
            conn.close()
        return
    pattern = details["prefix"].replace("*", "\\*").encode() + b"*"
    then = _by_slot(saved)
    for client in _nodes(details):
        with client:
            now = _by_slot(client.scan_iter(match=pattern, count=1000))
            owned = _owned_slots(client)
            for slot in now.keys() | {s for s in then if owned is None or s in owned}:
                pipe = client.pipeline(transaction=True)
                for key in now.get(slot, []):
                    pipe.delete(key)
                for key in then.get(slot, []):
                    pipe.restore(key, 0, saved[key], replace=True)
                pipe.execute()
