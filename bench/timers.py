"""Timer precision on the hosted service: 1,000 timers due within one second.

Deploys the application (2 ActorHost replicas, each running the timer scheduler) with a
``Beeper`` actor type, sets 1,000 one-shot timers over HTTP on 100 actors, all due within one
second a few seconds ahead, and records in each actor's state when each timer fired. Prints the
lateness (fired - due: median, p99, max) and how many timers fired, were lost (never fired) or
doubled (fired more than once).

    python -m bench.timers [--timers 1000] [--storage URL | redis | redis-cluster]

``--storage redis`` starts a redis-server (AOF on) for the run, ``--storage redis-cluster`` a
3-primary Redis Cluster; both are stopped at the end.
"""

from __future__ import annotations

# bench/ holds http.py: keep this folder off the import path, where it would shadow the
# standard library's http package.
import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import httpx
from ray import serve

from actorflow.serve.app import build
from bench._serve import local_serve, redis_cluster, redis_server

ACTORS = 100


async def set_timers(base: str, count: int, start: float) -> dict[tuple[str, str], float]:
    """Create the actors and set ``count`` timers due in ``[start, start + 1)``."""
    due: dict[tuple[str, str], float] = {}
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        sem = asyncio.Semaphore(32)

        async def create(actor: str) -> None:
            async with sem:
                (await client.post(f"/v1/actors/Beeper/{actor}", json={})).raise_for_status()

        await asyncio.gather(*(create(f"b{i}") for i in range(ACTORS)))

        async def put(i: int) -> None:
            actor, name = f"b{i % ACTORS}", f"t{i}"
            at = start + i / count
            due[(actor, name)] = at
            async with sem:
                r = await client.put(
                    f"/v1/actors/Beeper/{actor}/timers/{name}",
                    json={"at": at, "method": "beep", "args": [name]},
                    headers={"x-session-id": f"Beeper/{actor}"},
                )
                r.raise_for_status()

        await asyncio.gather(*(put(i) for i in range(count)))
    return due


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--timers", type=int, default=1000)
    parser.add_argument(
        "--storage",
        default=None,
        help="storage URL, or 'redis' / 'redis-cluster' to start one (default: SQLite in a temp dir)",
    )
    parser.add_argument(
        "--lead", type=float, default=25.0, help="seconds from the start of setting to the first due"
    )
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="actorflow-bench-timers-")
    with contextlib.ExitStack() as stack:
        if args.storage == "redis":
            storage = stack.enter_context(redis_server())
        elif args.storage == "redis-cluster":
            storage = stack.enter_context(redis_cluster())
        else:
            storage = args.storage or f"sqlite://{tmp.name}/bench.db"
        return run(storage, args)


def run(storage: str, args: argparse.Namespace) -> int:
    with local_serve() as base:
        serve.run(
            build({"modules": ["bench.beeper"], "storage": storage}), name="actorflow", route_prefix="/"
        )
        start = time.time() + args.lead
        due = asyncio.run(set_timers(base, args.timers, start))
        set_done = time.time()
        if set_done > start:
            print(f"warning: setting the timers took past the first due time by {set_done - start:.2f} s")
        time.sleep(max(0.0, start + 1.0 - time.time()) + 3.0)  # everything due, plus slack
        fired: dict[tuple[str, str], list[float]] = {}
        with httpx.Client(base_url=base, timeout=60) as client:
            for i in range(ACTORS):
                actor = f"b{i}"
                for name, at in client.post(f"/v1/actors/Beeper/{actor}/log").json()["result"]:
                    fired.setdefault((actor, name), []).append(at)
        lateness = sorted(times[0] - due[key] for key, times in fired.items())
        lost = sum(1 for key in due if key not in fired)
        doubled = sum(1 for times in fired.values() if len(times) > 1)
        p99 = lateness[min(len(lateness) - 1, int(0.99 * len(lateness)))] if lateness else float("nan")
        print(
            f"storage {storage}; 2 ActorHost replicas; {args.timers} timers on {ACTORS} actors due within 1 s"
        )
        if lateness:
            print(
                f"lateness: median {statistics.median(lateness) * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms, "
                f"max {lateness[-1] * 1e3:.0f} ms (goal: p99 < 100 ms)"
            )
        print(f"fired {len(fired)}, lost {lost}, doubled {doubled}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
