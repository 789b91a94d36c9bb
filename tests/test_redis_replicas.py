"""``wait_replicas``: a Redis commit is acknowledged only once replicas hold it.

A primary and a replica (real ``redis-server`` processes on free ports, data in temp dirs).
The promise is tested by breaking it on purpose: while a writer commits, the replica is cut
off from the primary (``REPLICAOF NO ONE``, as a partition followed by a failover would),
then the primary is killed (SIGKILL). Every commit that was acknowledged must be on the
replica that took over. The same run without the option shows what it prevents: commits
acknowledged after the cut are gone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from _redis import RedisServer, confirms, start_redis, start_replicated

from actorflow import workflow
from actorflow.actor import ActorConfig, ActorRuntime, lookup
from actorflow.engine import WorkflowRuntime
from actorflow.errors import ConfigError, StorageUnavailableError
from actorflow.storage import Batch, parse_storage_url
from actorflow.storage.redis import RedisStorage

pytestmark = pytest.mark.timeout(120)


def _wait_for(check: object, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    primary, replica = start_replicated(tmp_path)
    try:
        yield primary, replica
    finally:
        for server in (replica, primary):
            server.kill()  # their files are thrown away (a stop waited 10 s on a replica once)


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("wait_replicas=-1", "wait_replicas must be a whole number"),
        ("wait_replicas=one", "wait_replicas must be a whole number"),
        ("wait_replicas=101", "wait_replicas must be a whole number"),
        ("wait_replicas=1&wait_timeout=0", "wait_timeout must be seconds above 0"),
        ("wait_replicas=1&wait_timeout=nan", "wait_timeout must be seconds above 0"),
        ("wait_replicas=1&wait_timeout=soon", "wait_timeout must be seconds above 0"),
        ("wait_replicas=%C2%B2", "wait_replicas must be a whole number"),
        ("wait_replicas=1&wait_timeout=9.5", r"at least 1 s below socket_timeout \(10\)"),
        ("wait_replicas=1&wait_timeout=3&socket_timeout=2", r"at least 1 s below socket_timeout \(2\)"),
        ("wait_replicas=1&socket_timeout=1.5", r"not '1 \(the default\)'"),
        ("wait_replicas=1&socket_timeout=nan", "socket_timeout must be seconds above 0"),
        ("wait_replicas=1&wait_replicas=2", "given twice"),
    ],
)
def test_bad_wait_options_are_refused_with_a_clear_message(query: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_storage_url(f"redis://127.0.0.1:1/0?{query}")


def test_wait_options_are_read_and_not_passed_to_redis_py() -> None:
    assert (
        parse_storage_url("redis://h/0?socket_timeout=0.5")[1]["wait_replicas"] == "0"
    )  # no wait: any timeout
    _, details = parse_storage_url("redis://127.0.0.1:1/0?wait_replicas=2&wait_timeout=0.5&socket_timeout=3")
    assert (details["wait_replicas"], details["wait_timeout"]) == ("2", "0.5")
    assert "wait" not in details["url"] and "socket_timeout=3" in details["url"]
    storage = RedisStorage("redis://127.0.0.1:1/0?wait_replicas=2&wait_timeout=0.5")
    assert (storage.wait_replicas, storage.wait_timeout) == (2, 0.5)


async def _commits_until_killed(
    url: str, primary: RedisServer, replica: RedisServer
) -> tuple[list[str], int]:
    """Commit keys one after another; cut the replica off (and promote it) after 0.3 s, and
    kill the primary once at least 3 commits were tried after the cut and 0.2 s have passed.
    Return the keys whose commit was acknowledged and how many raised."""
    storage = await RedisStorage.open(url)
    acked: list[str] = []
    refused = 0
    start = time.monotonic()
    cut_at: float | None = None
    after_cut = 0
    try:
        for n in range(100_000):
            elapsed = time.monotonic() - start
            if cut_at is None and elapsed > 0.3:
                with redis.Redis(port=replica.port) as client:
                    client.execute_command("REPLICAOF", "NO", "ONE")
                cut_at = time.monotonic()
            if cut_at is not None and after_cut >= 3 and time.monotonic() - cut_at > 0.2:
                primary.kill()
                break
            after_cut += cut_at is not None
            key = f"k/{n:06d}"
            try:
                if await storage.commit(Batch().require(key, None).put(key, b"v")):
                    acked.append(key)
            except StorageUnavailableError:
                refused += 1
    finally:
        await storage.close()
    return acked, refused


def _survivors(replica: RedisServer) -> set[str]:
    with redis.Redis(port=replica.port) as client:
        names = client.scan_iter(match="af:{*}k:*", count=1000)
        return {k.decode().split("}k:", 1)[1] for k in names}


def test_no_acknowledged_commit_is_lost_when_the_primary_dies(pair: tuple[RedisServer, RedisServer]) -> None:
    primary, replica = pair
    acked, refused = asyncio.run(
        _commits_until_killed(f"{primary.url}?wait_replicas=1&wait_timeout=0.2", primary, replica)
    )
    survivors = _survivors(replica)
    lost = [k for k in acked if k not in survivors]
    assert len(acked) > 20, "the writer should have committed before the cut"
    assert refused >= 1, "commits after the cut must not be acknowledged"
    assert lost == [], f"{len(lost)} of {len(acked)} acknowledged commits were lost"


def test_without_the_option_acknowledged_commits_are_lost(pair: tuple[RedisServer, RedisServer]) -> None:
    """The control: the same run without ``wait_replicas`` acknowledges commits that only the
    primary held, and the failover loses them. (This is what the option is for.)"""
    primary, replica = pair
    acked, refused = asyncio.run(_commits_until_killed(primary.url, primary, replica))
    survivors = _survivors(replica)
    lost = [k for k in acked if k not in survivors]
    assert refused == 0
    assert len(lost) > 20, f"expected the cut-off replica to miss commits; lost {len(lost)}"


def _freeze(server: RedisServer) -> None:
    """SIGSTOP the server and return once the kernel shows it stopped."""
    os.kill(server.pid, signal.SIGSTOP)
    _wait_for(
        lambda: Path(f"/proc/{server.pid}/stat").read_text().split(") ")[1].startswith(("T", "t")), "SIGSTOP"
    )


async def _reads_and_recovery(url: str, replica: RedisServer, primary: RedisServer) -> None:
    storage = await RedisStorage.open(url)
    try:
        assert await storage.commit(Batch().put("a/x", b"1"))
        _freeze(replica)
        try:
            with pytest.raises(
                StorageUnavailableError, match="expectation failed on state not yet confirmed"
            ):
                await storage.commit(Batch().require("a/x", b"other").put("a/x", b"3"))
            with pytest.raises(StorageUnavailableError, match="deletion applied on the primary"):
                await storage.delete_prefix("a/x")
            with pytest.raises(StorageUnavailableError, match="is not acknowledged"):
                await storage.commit(Batch().put("a/y", b"2"))
            with pytest.raises(StorageUnavailableError, match="what it read is not returned"):
                await storage.get("a/y")
            with pytest.raises(StorageUnavailableError, match="0 of the 1 replicas"):
                await storage.list_keys("a/")
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        _wait_for(lambda: confirms(primary), "the replica to catch up")
        # The replica caught up: the unconfirmed commit and deletion had applied on the
        # primary, and any read of them now confirms them.
        assert await storage.get("a/y") == b"2"
        assert await storage.list_keys("a/") == ["a/y"]
        assert await storage.commit(Batch().require("a/y", b"2").put("a/y", b"3"))
    finally:
        await storage.close()


def test_reads_wait_too_and_everything_recovers_with_the_replica(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = pair
    asyncio.run(_reads_and_recovery(f"{primary.url}?wait_replicas=1&wait_timeout=0.3", replica, primary))


def test_a_server_without_enough_replicas_is_refused_at_open(tmp_path: Path) -> None:
    with start_redis(tmp_path) as server:
        url = f"{server.url}?wait_replicas=1&wait_timeout=0.2"
        with pytest.raises(StorageUnavailableError, match="0 of the 1 replicas"):
            asyncio.run(RedisStorage.open(url))


@workflow.virtual_actor(name="ReplicatedCounter")
class ReplicatedCounter:
    def __init__(self) -> None:
        self.count = 0

    def add(self, n: int) -> int:
        self.count += n
        return self.count


def test_an_actor_call_is_acknowledged_once_replicated_and_a_keyed_retry_lands_once(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    """The call path on top: a call whose commit the replica cannot confirm fails with
    StorageUnavailableError (a 503 over HTTP); its keyed retry, once the replica is back,
    answers the call's result, and the increment happened once."""
    primary, replica = pair
    wf = WorkflowRuntime(f"{primary.url}?wait_replicas=1&wait_timeout=0.3")
    rt = ActorRuntime(wf, ActorConfig())
    ac = lookup("ReplicatedCounter")

    def add(key: str) -> int:
        return int(rt.blocking(rt.call(ac, "c", "add", (1,), {}, key), 30))

    try:
        rt.create(ac, "c", (), {})
        assert add("first") == 1
        _freeze(replica)
        try:
            with pytest.raises(StorageUnavailableError):
                add("second")
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        _wait_for(lambda: confirms(primary), "the replica to catch up")
        assert add("second") == 2
        assert add("second") == 2
        assert add("third") == 3
    finally:
        rt.close()
        wf.close()


async def _commit_once(url: str) -> bool:
    storage = await RedisStorage.open(url)
    try:
        return await storage.commit(Batch().put("x/y", b"1"))
    finally:
        await storage.close()


def test_a_demoted_primary_is_unavailable_not_an_error(pair: tuple[RedisServer, RedisServer]) -> None:
    """Writing to a replica (what a client meets on an old primary during a failover) is a
    503 the caller may retry, not a 500."""
    _, replica = pair
    with pytest.raises(StorageUnavailableError, match="Redis refuses writes during commit"):
        asyncio.run(_commit_once(replica.url))
