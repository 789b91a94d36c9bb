"""Roll a storage back in time, as a crash that loses the last writes or a restore does.

``saved = save(url)`` copies everything a storage holds (for Redis: every key under the URL's
prefix, with ``DUMP``; for SQLite: every row) and ``restore(url, saved)`` puts exactly that
back, dropping whatever was written since. Processes using the storage keep running and keep
whatever they cached, which is the point: Redis with ``appendfsync everysec`` that loses its
last second on a crash, a failover to a replica that lagged, or a restore from a backup all
look like this to them.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import redis

from actorflow.storage import parse_storage_url


def save(url: str) -> Any:
    kind, details = parse_storage_url(url)
    if kind == "sqlite":
        with sqlite3.connect(details["path"]) as conn:
            return (
                conn.execute("SELECT key, value FROM kv").fetchall(),
                conn.execute("SELECT name, member, score FROM idx").fetchall(),
            )
    client = redis.Redis.from_url(details["url"])
    try:
        pattern = details["prefix"].replace("*", "\\*").encode() + b"*"
        keys = list(client.scan_iter(match=pattern, count=1000))
        pipe = client.pipeline(transaction=True)  # one point in time, one round trip
        for key in keys:
            pipe.dump(key)
        return dict(zip(keys, pipe.execute(), strict=True))
    finally:
        client.close()


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
    client = redis.Redis.from_url(details["url"])
    try:
        pattern = details["prefix"].replace("*", "\\*").encode() + b"*"
        pipe = client.pipeline(transaction=True)
        for key in client.scan_iter(match=pattern, count=1000):
            pipe.delete(key)
        for key, dumped in saved.items():
            pipe.restore(key, 0, dumped, replace=True)
        pipe.execute()
    finally:
        client.close()
