"""A small mutating actor call in embedded mode, against one raw storage write of its snapshot.

For each backend (SQLite in a temp dir; Redis on a redis-server this script starts on a free
port, or ``--redis URL``; a 3-primary Redis Cluster it starts too), prints the latency
(median, p99) of one caller making calls one after another, and the throughput of several
threads calling 100 actors, for

* the floor: one raw ``commit`` of the same snapshot bytes through the same runtime, and
* the call: ``counter.incr.run()`` (read version, run the method, compare-and-set commit), for
  a plain method (run in a worker thread) and for the same method written ``async def`` (run on
  the runtime's loop),

with their ratios, and at the end the plain call's cost on the cluster against the single
Redis. Both run in this process on the same runtime, interleaved, medians over runs.

    python -m bench.actors [--calls 500] [--seconds 3] [--threads 8] [--redis URL]
"""

from __future__ import annotations

# bench/ holds http.py: keep this folder off the import path, where it would shadow the
# standard library's http package.
import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from actorflow import workflow
from actorflow.actor import actor_runtime
from actorflow.engine import WorkflowRuntime
from actorflow.storage import Batch
from bench._serve import redis_cluster, redis_server

ACTORS = 100


@workflow.virtual_actor(name="BenchCounter")
class BenchCounter:
    def __init__(self) -> None:
        self.count = 0

    def incr(self) -> int:
        self.count += 1
        return self.count

    async def incr_async(self) -> int:
        self.count += 1
        return self.count


def latencies(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def throughput(fns: list[Callable[[], object]], threads: int, seconds: float) -> float:
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def worker(w: int) -> None:
        i = w
        while time.perf_counter() < stop:
            fns[i % len(fns)]()
            i += threads
            done[w] += 1

    pool = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(done) / (time.perf_counter() - start)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def measure(url: str, args: argparse.Namespace) -> dict[str, float]:
    """Print the figures for one storage; return the plain call's median latency (ms) and
    throughput (calls/s) and the floor's."""
    rt = WorkflowRuntime(url)
    try:
        art = actor_runtime(rt)
        ids = [f"c{i}" for i in range(ACTORS)]
        for aid in ids:
            art.create(BenchCounter, aid, (), {})
        raw = art.state(BenchCounter, "c0").pack()  # the snapshot a call writes

        def floor_write(i: int = 0) -> None:
            rt.blocking(rt.storage.commit(Batch().put(f"bench/floor/{i}", raw)))

        floors = [lambda i=i: floor_write(i) for i in range(ACTORS)]
        forms = {  # a plain method runs in a worker thread; an async one on the runtime's loop
            form: [
                lambda aid=aid, m=method: art.submit(BenchCounter, aid, m, (), {}, None).result()
                for aid in ids
            ]
            for form, method in (("plain", "incr"), ("async", "incr_async"))
        }
        for _ in range(50):  # warm caches, threads and connections
            floor_write()
            for calls in forms.values():
                calls[0]()
        lat_f: list[float] = []
        thr_f: list[float] = []
        lat_c: dict[str, list[float]] = {form: [] for form in forms}
        thr_c: dict[str, list[float]] = {form: [] for form in forms}
        for _ in range(args.runs):
            lat_f += latencies(floor_write, args.calls)
            thr_f.append(throughput(floors, args.threads, args.seconds))
            for form, calls in forms.items():
                lat_c[form] += latencies(calls[0], args.calls)
                thr_c[form].append(throughput(calls, args.threads, args.seconds))
        mf, pf, tf = statistics.median(lat_f) * 1e3, p99(lat_f) * 1e3, statistics.median(thr_f)
        kind = url.split(":", 1)[0]
        for form in forms:
            mc, pc = statistics.median(lat_c[form]) * 1e3, p99(lat_c[form]) * 1e3
            tc = statistics.median(thr_c[form])
            label = f"{kind} {form}"
            print(f"{label:13} latency median: floor {mf:6.3f} ms  call {mc:6.3f} ms  ratio {mc / mf:5.2f}x")
            print(f"{label:13} latency p99:    floor {pf:6.3f} ms  call {pc:6.3f} ms  ratio {pc / pf:5.2f}x")
            print(
                f"{label:13} throughput ({args.threads} threads, {ACTORS} actors): floor {tf:7.0f}/s  "
                f"call {tc:7.0f}/s  ratio {tc / tf:5.2f}x (goal: within 2x of the floor)"
            )
        plain = statistics.median(lat_c["plain"]) * 1e3
        return {"latency": plain, "throughput": statistics.median(thr_c["plain"]), "floor": mf}
    finally:
        rt.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=500, help="sequential calls per latency run")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each throughput run")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--redis", default=None, help="use this Redis instead of starting one")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="actorflow-bench-actors-") as tmp:
        measure(f"sqlite://{tmp}/bench.db", args)
    if args.redis:
        measure(f"{args.redis}?prefix=bench{os.getpid()}:", args)
        return 0
    with redis_server() as url:
        single = measure(url, args)
    with redis_cluster() as url:
        cluster = measure(url, args)
    print(
        f"cluster vs single Redis, plain call: latency median {cluster['latency']:.3f} ms vs "
        f"{single['latency']:.3f} ms, ratio {cluster['latency'] / single['latency']:.2f}x; throughput "
        f"{cluster['throughput']:.0f}/s vs {single['throughput']:.0f}/s, cost ratio "
        f"{single['throughput'] / cluster['throughput']:.2f}x (goal: at most 1.2x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
