"""A mutating actor call over HTTP through Serve, against a no-op FastAPI Serve deployment.

Both run in one Serve instance with the same settings (replicas, ``max_ongoing_requests``, no
CPUs reserved, access log off, the same routing: HAProxy hashing the path up to the actor id by
default, or Serve's classic proxy with its consistent-hash router); the no-op one is the floor,
and it gets exactly the requests the actor calls get. For each storage (SQLite in a temp dir,
Redis on a redis-server this script starts) and each request form it prints, as medians over
interleaved runs, the latency of one client making calls one after another, and the throughput
of 32 keep-alive connections spread over 1,000 actors: absolute figures and ratios to the floor.

The forms: "body" is what curl and most HTTP clients send (``{"args": [1]}`` as a JSON body);
"python" is whatever the Python client sends for the same call (``HttpInvoker.call_request``).
The call is ``Account.deposit(1)`` from ``examples.bank``, a plain method (it runs in a worker
thread); with ``--method async`` (or ``both``, the default) also the same deposit written
``async def`` (``bench/async_account.py``, run on the replica's event loop).

    python -m bench.http                       # HAProxy mode, SQLite and Redis
    python -m bench.http --proxy classic       # Serve's classic proxy
    python -m bench.http --storage sqlite      # one storage
    python -m bench.http --method plain        # only the plain method
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench import _load
from bench._serve import local_serve, redis_server

REPLICAS = 2
MAX_ONGOING = 64
#: Latency goal (at most this many times the floor's) and throughput goal (at least).
LATENCY_GOAL, THROUGHPUT_GOAL = 1.3, 0.8


def floor_deployment(haproxy: bool) -> Any:
    """A no-op FastAPI deployment with ActorHost's settings, answering the same paths (under
    ``/floor``, with the actor id at the same depth, so HAProxy hashes it the same way)."""
    from fastapi import FastAPI
    from ray import serve

    from actorflow.serve.app import ROUTER_CONFIG

    api = FastAPI()

    @api.post("/actors/{type_name}/{actor_id}/{method}")
    async def noop(type_name: str, actor_id: str, method: str) -> dict[str, Any]:
        return {"result": 1}

    options: dict[str, Any] = {
        "name": "Floor",
        "ray_actor_options": {"num_cpus": 0},
        "max_ongoing_requests": MAX_ONGOING,
        "num_replicas": REPLICAS,
    }
    if not haproxy:
        options["request_router_config"] = ROUTER_CONFIG

    @serve.deployment(**options)
    @serve.ingress(api)
    class Floor:
        pass

    return Floor.bind()  # type: ignore[attr-defined]


#: The actor type called for each kind of method (see the module doc).
TYPES = {"plain": "Account", "async": "AsyncAccount"}
MODULES = ["examples.bank", "bench.async_account"]


def requests_for(
    form: str, actors: list[str], floor: bool, type_name: str = "Account"
) -> list[_load.Request]:
    """One ``deposit(1)`` request per actor, in ``form``; the floor's path drops ``/v1``."""
    from actorflow.client import HttpInvoker

    out = []
    headers: dict[str, str]
    for actor in actors:
        if form == "body":
            path, headers, body = f"/v1/actors/{type_name}/{actor}/deposit", {}, {"args": [1]}
        else:
            path, headers, body = HttpInvoker.call_request(type_name, actor, "deposit", [1], {}, None)
        if floor:
            path = path.removeprefix("/v1")
        pairs = (*headers.items(), ("content-type", "application/json"))
        out.append(_load.Request("POST", path, pairs, json.dumps(body, separators=(",", ":")).encode()))
    return out


def steady(base: str, actors: list[str], timeout: float = 60.0) -> None:
    """Wait until requests reach every replica: right after a deploy HAProxy's list of them is
    still being filled in, and each change reloads it."""
    probes = [_load.Request("GET", f"/v1/actors/Account/{a}") for a in actors[:50]]
    deadline = time.monotonic() + timeout
    while len(_load.replicas_seen(base, probes, len(probes)) - {b""}) < REPLICAS:
        if time.monotonic() > deadline:
            raise SystemExit("the replicas never all took requests")
        time.sleep(0.2)
    time.sleep(1.0)


def create_actors(base: str, actors: list[str], type_name: str = "Account") -> None:
    json_type = (("content-type", "application/json"),)
    creates = [_load.Request("POST", f"/v1/actors/{type_name}/{a}", json_type, b"{}") for a in actors]
    _load.latencies(base, creates, len(creates))


def measure(base: str, storage: str, args: argparse.Namespace, haproxy: bool) -> list[str]:
    from ray import serve

    from actorflow.serve.app import build

    no_access_log = {"enable_access_log": False}
    app = build({"modules": MODULES, "storage": storage, "actor_host_replicas": REPLICAS})
    serve.run(app, name="actorflow", route_prefix="/", logging_config=no_access_log)
    floor = f"{base}/floor"
    actors = [f"acct-{i}" for i in range(args.actors)]
    steady(base, actors)
    methods = ("plain", "async") if args.method == "both" else (args.method,)
    for method in methods:
        create_actors(base, actors, TYPES[method])
    cases = [(method, form) for method in methods for form in ("body", "python")]
    sides = ("floor", "actor")
    reqs = {
        (case, side): requests_for(case[1], actors, side == "floor", TYPES[case[0]])
        for case in cases
        for side in sides
    }
    urls = {"floor": floor, "actor": base}
    for (_case, side), r in reqs.items():  # warm both paths and every actor's cache
        _load.latencies(urls[side], r, len(r))
    lat: dict[tuple[tuple[str, str], str], list[float]] = {}
    thr: dict[tuple[tuple[str, str], str], list[float]] = {}
    for _ in range(args.runs):  # interleaved, so drift hits both sides alike
        for case in cases:
            for side in sides:
                one = reqs[case, side][:1]  # one client, one actor
                lat.setdefault((case, side), []).append(
                    statistics.median(_load.latencies(urls[side], one, args.calls))
                )
            for side in sides:
                rate = _load.throughput(urls[side], reqs[case, side], args.connections, args.seconds)
                thr.setdefault((case, side), []).append(rate)
    kind = storage.split(":", 1)[0]
    lines = []
    for case in cases:
        method, form = case
        lf, la = (statistics.median(lat[case, side]) * 1e3 for side in sides)
        tf, ta = (statistics.median(thr[case, side]) for side in sides)
        lines.append(
            f"{kind:6} {method:5} {form:6}  latency, 1 client:  floor {lf:6.2f} ms  call {la:6.2f} ms  "
            f"{la / lf:4.2f}x (goal <= {LATENCY_GOAL}x)"
        )
        lines.append(
            f"{kind:6} {method:5} {form:6}  throughput, {args.connections} conns: floor {tf:6.0f}/s  "
            f"call {ta:6.0f}/s  {ta / tf:4.2f}x (goal >= {THROUGHPUT_GOAL}x)"
        )
    for line in lines:
        print(line, flush=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--proxy", choices=("haproxy", "classic"), default="haproxy")
    parser.add_argument("--storage", choices=("sqlite", "redis", "both"), default="both")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300, help="sequential calls per latency run")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each throughput run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--actors", type=int, default=1000)
    parser.add_argument(
        "--method", choices=("plain", "async", "both"), default="both", help="the kind of method called"
    )
    args = parser.parse_args()
    haproxy = args.proxy == "haproxy"
    tmp = tempfile.TemporaryDirectory(prefix="actorflow-bench-http-")
    with local_serve(args.proxy) as base:
        from ray import serve

        no_access_log = {"enable_access_log": False}
        floor = floor_deployment(haproxy)
        serve.run(floor, name="floor", route_prefix="/floor", logging_config=no_access_log)
        print(
            f"Serve with {'HAProxy' if haproxy else 'its classic proxy'}; {os.cpu_count()} cores; "
            f"{REPLICAS} replicas each; max_ongoing_requests {MAX_ONGOING}; access log off; "
            f"{args.runs} interleaved runs; {args.actors} actors",
            flush=True,
        )
        if args.storage in ("sqlite", "both"):
            measure(base, f"sqlite://{tmp.name}/bench.db", args, haproxy)
        if args.storage in ("redis", "both"):
            with redis_server() as url:
                measure(base, url, args, haproxy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
