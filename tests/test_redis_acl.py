"""Redis with ACL users, as managed services set them up: a user name and password in the URL,
and a user that may touch only the keys under actorflow's prefix.

The server's default user is switched off, so everything below runs as ``app``, whose key
pattern is ``af:*``: a command on any other key is refused by the server. An actor's whole life
(create, calls, a timer that fires, events' outbox, deletion) and every storage operation run
within it, so actorflow touches no key outside its prefix.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from _redis import RedisServer, start_redis

from actorflow import workflow
from actorflow.actor import ActorConfig, ActorRuntime, lookup
from actorflow.engine import WorkflowRuntime
from actorflow.errors import StorageError, StorageUnavailableError
from actorflow.storage import Batch
from actorflow.storage.redis import RedisStorage

pytestmark = pytest.mark.timeout(60)
PASSWORD = "s3cret-Pa55"


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path)
    try:
        with redis.Redis(port=server.port) as admin:
            admin.execute_command("ACL", "SETUSER", "app", "on", f">{PASSWORD}", "~af:*", "+@all")
            admin.execute_command("ACL", "SETUSER", "default", "off")
        yield server
    finally:
        server.stop()


@workflow.virtual_actor(name="AclCounter")
class AclCounter:
    def __init__(self) -> None:
        self.count = 0
        self.rang = 0

    def add(self, n: int) -> int:
        self.count += n
        return self.count

    def arm(self) -> None:
        workflow.timers.set("soon", after=0.01, method="ring")

    def ring(self) -> None:
        self.rang += 1

    @workflow.virtual_actor.readonly
    def rings(self) -> int:
        return self.rang


def test_an_actor_lives_and_dies_within_the_users_key_pattern(acl_server: RedisServer) -> None:
    url = f"redis://app:{PASSWORD}@127.0.0.1:{acl_server.port}/0"
    wf = WorkflowRuntime(url)
    rt = ActorRuntime(wf, ActorConfig(tick_interval=0.01))
    rt.start()
    ac = lookup("AclCounter")
    try:
        assert rt.create(ac, "a", (), {})
        assert rt.blocking(rt.call(ac, "a", "add", (2,), {}, "k1"), 10) == 2
        assert rt.blocking(rt.call(ac, "a", "add", (2,), {}, "k1"), 10) == 2  # replayed
        rt.blocking(rt.call(ac, "a", "arm", (), {}, None), 10)
        deadline = time.monotonic() + 10
        while rt.blocking(rt.call(ac, "a", "rings", (), {}, None), 10) != 1:
            assert time.monotonic() < deadline, "the timer never fired"
            time.sleep(0.02)
        assert rt.list_ids("AclCounter", start_after=None, limit=None) == ["a"]
        rt.delete(ac, "a")
        assert not rt.exists(ac, "a")
    finally:
        rt.close()
        wf.close()


async def _storage_operations(url: str) -> None:
    storage = await RedisStorage.open(url)
    try:
        assert await storage.commit(Batch().require("d/x", None).put("d/x", b"1").index_add("ix", "m", 1.0))
        assert await storage.get_many(["d/x", "d/y"]) == [b"1", None]
        assert await storage.list_keys("d/") == ["d/x"]
        assert await storage.index_range("ix") == [("m", 1.0)]
        assert await storage.index_count("ix") == 1
        assert await storage.delete_prefix("d/") == 1
    finally:
        await storage.close()


def test_every_storage_operation_runs_as_an_acl_user(acl_server: RedisServer) -> None:
    asyncio.run(_storage_operations(f"redis://app:{PASSWORD}@127.0.0.1:{acl_server.port}/0"))


def test_a_wrong_password_is_refused_and_never_printed(acl_server: RedisServer) -> None:
    with pytest.raises(StorageUnavailableError) as info:
        asyncio.run(RedisStorage.open(f"redis://app:not-{PASSWORD}@127.0.0.1:{acl_server.port}/0"))
    assert PASSWORD not in str(info.value) and "app:***@" in str(info.value)


def test_a_prefix_outside_the_users_keys_is_refused_by_the_server(acl_server: RedisServer) -> None:
    url = f"redis://app:{PASSWORD}@127.0.0.1:{acl_server.port}/0?prefix=other:"
    with pytest.raises(
        StorageError, match="the Redis user may not run the layout check on keys under the prefix 'other:'"
    ):
        asyncio.run(_storage_operations(url))
