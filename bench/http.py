"""A mutating actor call over HTTP through Serve, against a no-op FastAPI Serve deployment.

Both run in one Serve instance with the same settings (replicas, ``max_ongoing_requests``,
router, no CPUs reserved, access log off); the no-op one is the floor, and it gets exactly the
requests the actor calls get. Prints, as medians over several runs: the latency of one client
making calls one after another, and the throughput of 32 concurrent connections spread over
1,000 actors; absolute figures and ratios to the floor.

Two request shapes are measured. "query" is what the Python client sends for small arguments
(``POST .../deposit?args=[1]``, no body). "body" is the JSON body form (``{"args": [1]}``):
reading any request body costs a Serve replica a round trip back to its proxy, which the no-op
floor never pays because it never reads the body.

    python bench/http.py                       # SQLite storage in a temp dir
    python bench/http.py --storage redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import sys

# This file is named http.py: keep its folder off the import path, or it would shadow the
# standard library's http package.
if sys.path and sys.path[0] and __file__.startswith(sys.path[0]):
    sys.path.pop(0)

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import httpx
from fastapi import FastAPI
from ray import serve

from bench._serve import local_serve
from deployments.app import ROUTER_CONFIG, build

REPLICAS = 2
MAX_ONGOING = 64

floor_api = FastAPI()


@floor_api.post("/v1/actors/{type_name}/{actor_id}/{method}")
async def noop(type_name: str, actor_id: str, method: str) -> dict[str, Any]:
    return {"result": 1}


@serve.deployment(
    name="Floor",
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=MAX_ONGOING,
    request_router_config=ROUTER_CONFIG,
)
@serve.ingress(floor_api)
class Floor:
    pass


SHAPES: dict[str, dict[str, Any]] = {
    "query": {"params": {"args": "[1]"}},
    "body": {"json": {"args": [1]}},
}


def latency(base: str, n: int, shape: str) -> float:
    """Median seconds per call for one client calling one actor sequentially."""
    actor = f"lat-{uuid.uuid4().hex[:6]}"
    headers = {"x-session-id": f"Account/{actor}"}
    with httpx.Client(base_url=base, timeout=30) as client:
        client.post(f"/v1/actors/Account/{actor}", json={})
        times = []
        for _ in range(n):
            start = time.perf_counter()
            r = client.post(f"/v1/actors/Account/{actor}/deposit", headers=headers, **SHAPES[shape])
            times.append(time.perf_counter() - start)
            r.raise_for_status()
    return statistics.median(times)


async def _throughput(base: str, actors: list[str], connections: int, seconds: float, shape: str) -> float:
    done = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def worker(w: int) -> None:
            nonlocal done
            i = w
            while time.perf_counter() < stop:
                actor = actors[i % len(actors)]
                i += connections
                r = await client.post(
                    f"/v1/actors/Account/{actor}/deposit",
                    headers={"x-session-id": f"Account/{actor}"},
                    **SHAPES[shape],
                )
                r.raise_for_status()
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(connections)))
        return done / (time.perf_counter() - start)


def create_actors(base: str, actors: list[str]) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            sem = asyncio.Semaphore(32)

            async def one(a: str) -> None:
                async with sem:
                    (await client.post(f"/v1/actors/Account/{a}", json={})).raise_for_status()

            await asyncio.gather(*(one(a) for a in actors))

    asyncio.run(go())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--storage", default=None, help="storage URL (default: SQLite in a temp dir)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300, help="sequential calls per latency run")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each throughput run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--actors", type=int, default=1000)
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="actorflow-bench-http-")
    storage = args.storage or f"sqlite://{tmp.name}/bench.db"
    no_access_log = {"enable_access_log": False}
    with local_serve() as base:
        app = build({"modules": ["examples.bank"], "storage": storage, "actor_host_replicas": REPLICAS})
        serve.run(app, name="actorflow", route_prefix="/", logging_config=no_access_log)
        floor_app = Floor.options(num_replicas=REPLICAS).bind()
        serve.run(floor_app, name="floor", route_prefix="/floor", logging_config=no_access_log)
        floor = f"{base}/floor"
        actors = [f"acct-{i}" for i in range(args.actors)]
        create_actors(base, actors)
        print(
            f"storage {storage}; {os.cpu_count()} cores; {REPLICAS} replicas each; "
            f"max_ongoing_requests {MAX_ONGOING}; access log off; {args.runs} interleaved runs"
        )
        for shape in SHAPES:  # warm both paths
            latency(base, 30, shape)
            latency(floor, 30, shape)
        lat: dict[tuple[str, str], list[float]] = {}
        thr: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.runs):  # interleaved so drift hits both alike
            for shape in SHAPES:
                for side, url in (("floor", floor), ("actor", base)):
                    lat.setdefault((shape, side), []).append(latency(url, args.calls, shape))
                for side, url in (("floor", floor), ("actor", base)):
                    rate = asyncio.run(_throughput(url, actors, args.connections, args.seconds, shape))
                    thr.setdefault((shape, side), []).append(rate)
        for shape in SHAPES:
            lf, la = (statistics.median(lat[shape, side]) * 1e3 for side in ("floor", "actor"))
            tf, ta = (statistics.median(thr[shape, side]) for side in ("floor", "actor"))
            print(
                f"[{shape:5}] latency, 1 client:       floor {lf:6.2f} ms   actor call {la:6.2f} ms   "
                f"ratio {la / lf:.2f}x (goal <= 1.3x)"
            )
            print(
                f"[{shape:5}] throughput, {args.connections} conns: floor {tf:6.0f} /s   "
                f"actor call {ta:6.0f} /s   ratio {ta / tf:.2f}x (goal >= 0.7x)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
