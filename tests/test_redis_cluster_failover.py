"""A primary of a Redis Cluster dies under load: with ``wait_replicas=1`` nothing acknowledged
is lost, commits for its slots fail as unavailable (HTTP 503) while the cluster promotes its
replica, and then succeed again through the same storage object, with no restart.

Three primaries with one replica each, started by the test (data in temp dirs, stopped by
pid). Writers bump 30 counters spread over the buckets with compare-and-set commits and note
every value a commit acknowledged; one primary is SIGKILLed mid-run, and started again 4 s
later (it rejoins as the replica of the replica that took over). At the end every counter holds
at least its last acknowledged value.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _redis import REDIS_SERVER, RedisCluster, slot_of, start_cluster

from actorflow.errors import StorageUnavailableError
from actorflow.storage import Batch, open_storage
from actorflow.storage.redis import RedisStorage

pytestmark = pytest.mark.timeout(120)
KEYS = [f"act/Failover/a{i}/v" for i in range(30)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server not installed")
    with start_cluster(tmp_path, primaries=3, replicas=1) as c:
        yield c


def test_no_acknowledged_commit_is_lost_when_a_primary_dies(cluster: RedisCluster) -> None:
    prefix = "fo:"
    url = f"{cluster.url}?wait_replicas=1&wait_timeout=2&prefix={prefix}"
    slots = {k: slot_of(prefix, k) for k in KEYS}
    victim = cluster.owner(slots[KEYS[0]])
    on_victim = [k for k in KEYS if cluster.owner(slots[k]) is victim]
    assert 0 < len(on_victim) < len(KEYS)

    acked: dict[str, int] = {}
    refused: dict[str, int] = {k: 0 for k in KEYS}
    after_failover: dict[str, int] = {k: 0 for k in KEYS}
    killed_at: list[float] = []

    async def writer(storage: object, key: str, stop: float) -> None:
        assert isinstance(storage, RedisStorage)
        while time.monotonic() < stop:
            try:
                raw = await storage.get(key)
                value = int(raw or b"0")
                if await storage.commit(Batch().require(key, raw).put(key, b"%d" % (value + 1))):
                    acked[key] = value + 1
                    if killed_at and refused[key]:
                        after_failover[key] += 1
            except StorageUnavailableError:
                refused[key] += 1
                await asyncio.sleep(0.05)

    async def run() -> dict[str, bytes | None]:
        storage = await open_storage(url)
        try:
            stop = time.monotonic() + 14
            tasks = [asyncio.ensure_future(writer(storage, k, stop)) for k in KEYS]
            await asyncio.sleep(1.5)
            victim.kill()  # SIGKILL: no shutdown, as in a crash
            killed_at.append(time.monotonic())
            # The promoted replica has no replica of its own, so wait_replicas=1 cannot be met
            # on its slots until the dead node comes back (as its pod would be restarted) and
            # rejoins as the replica of its successor.
            await asyncio.sleep(4)
            await asyncio.to_thread(victim.start)
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome  # anything but "unavailable" during a failover is a fault
            values = await storage.get_many(KEYS)
            return dict(zip(KEYS, values, strict=True))
        finally:
            await storage.close()

    final = asyncio.run(run())
    lost = [k for k in KEYS if int(final[k] or b"0") < acked.get(k, 0)]
    print(
        f"acknowledged {sum(acked.values())} increments, refused {sum(refused.values())} "
        f"(keys on the killed primary: {len(on_victim)}), lost {len(lost)}"
    )
    assert lost == []
    assert all(refused[k] > 0 for k in on_victim)  # its slots were unavailable for a while
    assert all(after_failover[k] > 0 for k in on_victim)  # and served again after the failover
    assert cluster.owner(slots[on_victim[0]]) is not victim
