"""Two Ray nodes on this one machine, one ``ActorHost`` replica on each, HAProxy on both: the
path a user takes when one machine is no longer enough.

A second node joins the session's cluster (``ray start --address ... --block``, a child process
with HAProxy's settings, its own Serve port and its own statistics ports). Calls for 200 actors
go through the ingress of either node at random; every one succeeds, the counts end exact, and
every call for one actor, whichever node took it, is answered by one replica (both HAProxies
hash onto the same ring of replicas).
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _procs import child
from _redis import free_port
from _routing import steady

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


def alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"])


@pytest.fixture
def second_node(ray_address: str) -> Iterator[int]:
    """A second node of the session's cluster; yields its Serve HTTP port."""
    from actorflow.serve.ingress import haproxy_env

    port = free_port()
    env = dict(os.environ)
    config_dir = os.path.dirname(os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"])
    env.update(haproxy_env(config_dir=config_dir, threads=1, request_timeout=3, drain_seconds=1.0))
    env["RAY_SERVE_WORKER_PROXY_HTTP_PORT"] = str(port)  # one machine: the head has the other
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")  # the venv's
    cmd = [ray_cli, "start", "--address", ray_address, "--num-cpus", "1", "--block", "--disable-usage-stats"]
    before = alive_nodes()
    # `ray start` notes its cluster's address for later `ray.init()` calls of this machine to
    # join; that note must not outlive this test (a later `actorflow serve` would look for the
    # session's cluster, gone by then).
    current = pathlib.Path(tempfile.gettempdir(), "ray", "ray_current_cluster")
    noted = current.read_bytes() if current.exists() else None
    with child(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 90
        while alive_nodes() <= before:
            assert proc.poll() is None, "the second node exited"
            assert time.monotonic() < deadline, "the second node never joined"
            time.sleep(0.5)
        yield port
        proc.terminate()  # --block: the node's processes go with it
        proc.wait(timeout=60)
    deadline = time.monotonic() + 60
    while alive_nodes() > before and time.monotonic() < deadline:
        time.sleep(0.5)
    if noted is None:
        current.unlink(missing_ok=True)
    else:
        current.write_bytes(noted)


def test_two_nodes_route_every_actor_to_its_owner(second_node: int, redis_server: Any) -> None:
    from ray import serve

    from actorflow.serve.app import APP_NAME, build

    head_port = free_port()
    serve.start(
        http_options={"host": "127.0.0.1", "port": head_port}, logging_config={"enable_access_log": False}
    )
    try:
        storage = f"{redis_server.url}?prefix=two{uuid.uuid4().hex[:8]}:"
        app = build(
            {
                "modules": ["serve_actors"],
                "storage": storage,
                "actor_host_replicas": 2,
                "max_replicas_per_node": 1,
            }
        )
        serve.run(app, name=APP_NAME, route_prefix="/")
        ingresses = [f"http://127.0.0.1:{head_port}", f"http://127.0.0.1:{second_node}"]
        for url in ingresses:
            assert len(steady(url, 2)) == 2  # each node's HAProxy lists both replicas
        actors = [f"n{i}" for i in range(200)]
        with httpx.Client(timeout=60) as http:
            for a in actors:
                http.post(f"{random.choice(ingresses)}/v1/actors/Tally/{a}").raise_for_status()
        owners: dict[str, set[str]] = defaultdict(set)
        answers: dict[str, list[int]] = defaultdict(list)

        def client(c: int) -> list[tuple[str, int, str]]:
            rng = random.Random(c)
            out = []
            with httpx.Client(timeout=60) as http:
                for i in range(50):
                    actor = actors[(c * 50 + i) % len(actors)]
                    r = http.post(f"{rng.choice(ingresses)}/v1/actors/Tally/{actor}/incr")
                    r.raise_for_status()
                    out.append((actor, r.json()["result"], r.headers["x-actorflow-replica"]))
            return out

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for f in [pool.submit(client, c) for c in range(8)]:
                for actor, value, replica in f.result(timeout=240):
                    answers[actor].append(value)
                    owners[actor].add(replica)
        assert sum(len(v) for v in answers.values()) == 400
        for a, values in answers.items():
            assert sorted(values) == list(range(1, len(values) + 1)), (a, values)
        assert all(len(o) == 1 for o in owners.values()), {a: o for a, o in owners.items() if len(o) > 1}
        assert len(set().union(*owners.values())) == 2  # both nodes' replicas own actors
        with httpx.Client(timeout=60) as http:
            for a in random.sample(actors, 20):
                state = http.get(f"{random.choice(ingresses)}/v1/actors/Tally/{a}").json()["state"]
                assert state == {"n": len(answers.get(a, []))}, a
    finally:
        serve.shutdown()
