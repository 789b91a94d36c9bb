"""The HTTP service on a Redis Cluster whose primary dies under load.

Three primaries with one replica each, ``wait_replicas=1``; the service (2 ActorHost replicas on
the session's Ray, in HAProxy mode) stays up throughout. Client threads call ``incr`` on 24
actors over HTTP and note every value a 200 acknowledged. One primary is SIGKILLed, and started
again 4 s later (it rejoins as the replica of its successor, as a restarted pod would). Calls on
actors whose slots it served answer 503 while the cluster fails over, then 200 again, with no
restart of the service; afterwards every actor holds at least the highest count a 200 gave.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _redis import REDIS_SERVER, RedisCluster, slot_of, start_cluster

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("ray_session")]
ACTORS = [f"f{i}" for i in range(24)]
PREFIX = "svc:"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, RedisCluster]]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server not installed")
    from ray import serve

    from actorflow.serve.app import APP_NAME, build

    with start_cluster(tmp_path, primaries=3, replicas=1) as cluster:
        storage = f"{cluster.url}?wait_replicas=1&wait_timeout=2&prefix={PREFIX}"
        port = _free_port()
        serve.start(
            http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False}
        )
        try:
            serve.run(
                build({"modules": ["serve_actors"], "storage": storage, "actor_host_replicas": 2}),
                name=APP_NAME,
                route_prefix="/",
            )
            yield f"http://127.0.0.1:{port}", cluster
        finally:
            serve.shutdown()


def test_a_primary_dies_calls_answer_503_then_recover_and_nothing_acknowledged_is_lost(
    service: tuple[str, RedisCluster],
) -> None:
    url, cluster = service
    slot = {a: slot_of(PREFIX, f"act/Tally/{a}/v") for a in ACTORS}
    victim = cluster.owner(slot[ACTORS[0]])
    on_victim = [a for a in ACTORS if cluster.owner(slot[a]) is victim]
    assert 0 < len(on_victim) < len(ACTORS)
    for a in ACTORS:
        httpx.post(f"{url}/v1/actors/Tally/{a}", timeout=60).raise_for_status()

    acked = {a: 0 for a in ACTORS}
    statuses: dict[str, list[tuple[float, int]]] = {a: [] for a in ACTORS}
    stop = time.monotonic() + 16
    faults: list[Any] = []

    def client(mine: list[str]) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while time.monotonic() < stop:
                for a in mine:
                    try:
                        r = http.post(f"/v1/actors/Tally/{a}/incr")
                    except httpx.HTTPError as exc:
                        faults.append(exc)
                        continue
                    statuses[a].append((time.monotonic(), r.status_code))
                    if r.status_code == 200:
                        acked[a] = max(acked[a], int(r.json()["result"]))
                    elif r.status_code != 503:
                        faults.append((a, r.status_code, r.text))
                    else:
                        time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(ACTORS[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    victim.kill()
    killed = time.monotonic()
    time.sleep(4)
    victim.start()
    for t in threads:
        t.join(timeout=60)

    final = {a: httpx.get(f"{url}/v1/actors/Tally/{a}", timeout=30).json()["state"]["n"] for a in ACTORS}
    lost = {a: (acked[a], final[a]) for a in ACTORS if final[a] < acked[a]}
    refused = sum(1 for a in ACTORS for _, code in statuses[a] if code == 503)
    print(f"acknowledged {sum(acked.values())} increments, {refused} answered 503, lost {len(lost)}")
    assert faults == []
    assert lost == {}
    for a in on_victim:
        codes = [(at, code) for at, code in statuses[a] if at > killed]
        first_503 = next(at for at, code in codes if code == 503)  # its slots were down a while
        assert any(code == 200 and at > first_503 for at, code in codes), a  # and came back
