"""Moving a single Redis's data from the layout before Redis Cluster support to the bucketed one.

The earlier layout kept every value at ``Pk:KEY``, every directory set at ``Pd:DIR`` and every
index at ``Pi:NAME``, with no hash tag. The test makes real actor data under one prefix (calls
with idempotency keys, timers, an actor deleted), rewrites it under a second prefix in the old
layout, and checks that actorflow refuses that prefix until ``actorflow storage migrate`` has
run, that afterwards every key, listing and index reads as the original, that the actors carry
on (a replayed key is still answered from its record, a timer fires once), and that running
the migration again changes nothing.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from _redis import RedisServer, start_redis

from actorflow import workflow
from actorflow.actor import ActorConfig, ActorRuntime, lookup
from actorflow.engine import WorkflowRuntime
from actorflow.errors import ConfigError
from actorflow.storage import open_storage
from actorflow.storage.redis import LAYOUT, RedisStorage

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parent.parent


@workflow.virtual_actor(name="MigratedCounter")
class MigratedCounter:
    def __init__(self) -> None:
        self.count = 0
        self.rang = 0

    def add(self, n: int) -> int:
        self.count += n
        return self.count

    def arm(self, after: float) -> None:
        workflow.timers.set("bell", after=after, method="ring")

    def ring(self) -> None:
        self.rang += 1

    @workflow.virtual_actor.readonly
    def state(self) -> tuple[int, int]:
        return self.count, self.rang


def _to_old_layout(client: redis.Redis, new: str, old: str) -> int:
    """Copy every physical key under prefix ``new`` to prefix ``old`` in the earlier layout."""
    copied = 0
    for raw in client.scan_iter(match=f"{new}{{*}}*", count=1000):
        name = raw.decode()
        kind_and_rest = name[name.index("}") + 1 :]
        kind, rest = kind_and_rest[:2], kind_and_rest[2:]
        target = f"{old}{kind}{rest}"
        if kind == "k:":
            client.set(target, client.get(raw))  # type: ignore[arg-type]
            copied += 1
        elif kind in ("d:", "i:"):
            rows = client.zrange(raw, 0, -1, withscores=True)
            if rows:
                client.zadd(target, dict(rows))
    return copied


async def _snapshot(url: str, ids: list[str]) -> dict[str, object]:
    """What the storage says about the data: keys, values, listings, indexes."""
    storage = await open_storage(url)
    try:
        out: dict[str, object] = {
            "listing": await storage.list_keys("acts/MigratedCounter/"),
            "timers": await storage.index_range("timers"),
            "outbox": await storage.index_count("outbox"),
        }
        for a in ids:
            for folder in ("", "idem/", "timer/"):
                prefix = f"act/MigratedCounter/{a}/{folder}"
                keys = await storage.list_keys(prefix)
                out[prefix] = dict(zip(keys, await storage.get_many(keys), strict=True))
            out[f"idem:{a}"] = await storage.index_range(f"idem:MigratedCounter/{a}")
        return out
    finally:
        await storage.close()


def _runtime(url: str) -> tuple[WorkflowRuntime, ActorRuntime]:
    wf = WorkflowRuntime(url)
    rt = ActorRuntime(wf, ActorConfig(tick_interval=0.01))
    rt.start()
    return wf, rt


@pytest.fixture
def plain_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A standalone server: the old layout lived on one (moving a key between slots is refused
    by the session's slot-checked server, as by any cluster)."""
    server = start_redis(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_migrate_moves_old_layout_data_and_actors_carry_on(plain_server: RedisServer) -> None:
    redis_server = plain_server
    new, old = f"t{uuid.uuid4().hex[:12]}:", f"t{uuid.uuid4().hex[:12]}:"
    new_url, old_url = f"{redis_server.url}?prefix={new}", f"{redis_server.url}?prefix={old}"
    ac = lookup("MigratedCounter")
    ids = [f"c{i}" for i in range(20)]
    wf, rt = _runtime(new_url)
    try:
        for i, a in enumerate(ids):
            assert rt.create(ac, a, (), {})
            assert rt.blocking(rt.call(ac, a, "add", (i,), {}, f"key-{a}"), 10) == i
            rt.blocking(rt.call(ac, a, "arm", (3600.0,), {}, None), 10)  # due long after the test
        rt.delete(ac, "c19")
    finally:
        rt.close()
        wf.close()
    ids = ids[:19]
    before = asyncio.run(_snapshot(new_url, ids))
    assert len(before["listing"]) == 19 and len(before["timers"]) == 19  # type: ignore[arg-type]

    with redis.Redis(port=redis_server.port) as client:
        assert _to_old_layout(client, new, old) > 19 * 4
        with pytest.raises(ConfigError, match="actorflow storage migrate"):
            asyncio.run(RedisStorage.open(old_url))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        for _ in range(2):  # the second run finds nothing left to move
            done = subprocess.run(
                [sys.executable, "-m", "actorflow.cli", "storage", "migrate", old_url],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                check=False,
            )
            assert done.returncode == 0, done.stderr
        assert "done:" in done.stdout
        assert client.get(f"{old}layout") == LAYOUT
        leftovers = [k for k in client.scan_iter(match=f"{old}[kdi]:*", count=1000)]
        assert leftovers == []

    assert asyncio.run(_snapshot(old_url, ids)) == before

    wf, rt = _runtime(old_url)
    try:
        assert rt.list_ids("MigratedCounter", start_after=None, limit=None) == sorted(ids)
        assert not rt.exists(ac, "c19")
        # A retried call is answered from the record made before the migration.
        assert rt.blocking(rt.call(ac, "c5", "add", (5,), {}, "key-c5"), 10) == 5
        assert rt.blocking(rt.call(ac, "c5", "add", (1,), {}, None), 10) == 6
        rt.blocking(rt.call(ac, "c7", "arm", (0.01,), {}, None), 10)
        deadline = time.monotonic() + 10
        while rt.blocking(rt.call(ac, "c7", "state", (), {}, None), 10) != (7, 1):
            assert time.monotonic() < deadline, "the re-armed timer never fired"
            time.sleep(0.02)
    finally:
        rt.close()
        wf.close()


def test_migrate_refuses_a_cluster_and_a_sqlite_url(tmp_path: Path) -> None:
    from actorflow.cli import main

    assert main(["storage", "migrate", f"sqlite://{tmp_path}/x.db"]) == 2
    assert main(["storage", "migrate", "redis+cluster://127.0.0.1:1"]) == 2
