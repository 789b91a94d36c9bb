"""What a Redis Cluster does to a client that a single server does not: scripts missing on a
node (``NOSCRIPT``), a slot moving to another node (``ASK`` while it migrates, ``MOVED`` once it
has), and the limits managed clusters set (database 0 only, at most 3,999 arguments a command).

Each test that changes the cluster's layout starts a cluster of its own (3 primaries, data in
temp dirs, stopped by pid).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from _redis import REDIS_SERVER, RedisCluster, RedisServer, slot_of, start_cluster

from actorflow.errors import ConfigError, StorageError
from actorflow.storage import Batch, open_storage, parse_storage_url
from actorflow.storage.redis import RedisStorage

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server not installed")
    with start_cluster(tmp_path) as cluster:
        yield cluster


def _node_id(node: RedisServer) -> str:
    with redis.Redis(port=node.port) as client:
        raw = client.execute_command("CLUSTER", "MYID")
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def test_commits_follow_a_slot_that_migrates_and_moves(own_cluster: RedisCluster) -> None:
    """The slot of an actor's bucket moves to another primary while the same storage object
    keeps working: during the migration (``ASK``) and after it (``MOVED``)."""
    prefix = "mv:"
    storage = await open_storage(f"{own_cluster.url}?prefix={prefix}")
    assert isinstance(storage, RedisStorage)
    try:
        key = "act/Mover/m1/v"
        assert await storage.commit(Batch().require(key, None).put(key, b"1").put("acts/Mover/m1", b""))
        slot = slot_of(prefix, key)
        source = own_cluster.owner(slot)
        target = next(n for n in own_cluster.nodes if n is not source)
        src_id, dst_id = _node_id(source), _node_id(target)
        with redis.Redis(port=source.port) as src, redis.Redis(port=target.port) as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            names = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *names)
            # Mid-migration: the source answers ASK for the keys it no longer has.
            assert await storage.get(key) == b"1"
            assert await storage.commit(Batch().require(key, b"1").put(key, b"2"))
            for node in own_cluster.nodes:
                with redis.Redis(port=node.port) as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        assert own_cluster.owner(slot) is target
        # Moved: the client's slot map is stale, the source answers MOVED.
        assert await storage.commit(Batch().require(key, b"2").put(key, b"3"))
        assert await storage.get(key) == b"3"
        assert await storage.list_keys("acts/Mover/") == ["acts/Mover/m1"]
    finally:
        await storage.close()


async def test_scripts_are_loaded_again_on_a_node_that_lost_them(redis_cluster: RedisCluster) -> None:
    storage = await open_storage(f"{redis_cluster.url}?prefix=ns{uuid.uuid4().hex[:8]}:")
    try:
        assert await storage.commit(Batch().put("act/S/a/v", b"1"))
        for node in redis_cluster.nodes:  # a restarted node, or a new one, has no scripts
            with redis.Redis(port=node.port) as client:
                client.script_flush()
        assert await storage.commit(Batch().require("act/S/a/v", b"1").put("act/S/a/v", b"2"))
        assert await storage.commit(Batch().put("act/S/b/v", b"1"))
        assert await storage.delete_prefix("act/S/") == 2
    finally:
        await storage.close()


async def test_a_commit_over_the_argument_cap_is_refused_and_changes_nothing(
    redis_cluster: RedisCluster,
) -> None:
    storage = await open_storage(f"{redis_cluster.url}?prefix=cap{uuid.uuid4().hex[:8]}:")
    try:
        big = Batch()
        for i in range(1000):  # 4 arguments a put: over 3,999
            big.put(f"act/Big/b/k{i}", b"x")
        with pytest.raises(StorageError, match="3999"):
            await storage.commit(big)
        assert await storage.list_keys("act/Big/b/") == []
        small = Batch()
        for i in range(900):
            small.put(f"act/Big/b/k{i}", b"x")
        assert await storage.commit(small)
        assert len(await storage.list_keys("act/Big/b/")) == 900
        assert await storage.delete_prefix("act/Big/") == 900  # deleted in chunks under the cap
    finally:
        await storage.close()


def test_cluster_urls_take_database_0_only_and_no_braces_in_the_prefix() -> None:
    with pytest.raises(ConfigError, match="only database 0"):
        parse_storage_url("redis+cluster://127.0.0.1:7000/1")
    with pytest.raises(ConfigError, match="must not contain"):
        RedisStorage("redis+cluster://127.0.0.1:7000?prefix=a{b}:")
    assert parse_storage_url("redis+cluster://127.0.0.1:7000/0")[1]["cluster"] == "1"


def test_an_unreachable_cluster_is_unavailable_not_a_crash() -> None:
    from actorflow.errors import StorageUnavailableError

    with pytest.raises(StorageUnavailableError):
        asyncio.run(RedisStorage.open("redis+cluster://127.0.0.1:1?socket_connect_timeout=0.5"))
