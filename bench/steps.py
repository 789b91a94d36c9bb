"""Per-step overhead of durable workflows against plain Ray tasks, measured in one run.

For a chain (each step consumes the previous output) and a fan-out (N independent steps and
one step that sums them) of N trivial steps, prints the median time per step over several
runs for actorflow and for plain Ray tasks doing the same work, and their ratio.

    python -m bench.steps                       # N = 200, 1,000 and 10,000, SQLite in a temp dir
    python -m bench.steps --n 1000 --runs 5     # one size, median of 5 runs
    python -m bench.steps --n 100000            # one 100,000-step fan-out: wall time, peak memory

The per-step times side by side show whether the cost per step stays flat as N grows. In the
one-big-fan-out mode the workflow runs first, so the driver's peak RSS printed is its own (plain
Ray's fan-out, which holds every task it submitted, peaks higher; it runs after).
    python -m bench.steps --storage redis://127.0.0.1:6379/0
"""

from __future__ import annotations

# bench/ holds http.py: keep this folder off the import path, where it would shadow the
# standard library's http package.
import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray

from actorflow import workflow


def inc(x: int) -> int:
    return x + 1


def total(*xs: int) -> int:
    return sum(xs)


inc_task = ray.remote(inc)
total_task = ray.remote(total)
inc_step = workflow.step(inc)
total_step = workflow.step(total)


def ray_chain(n: int) -> int:
    x: object = 0
    for _ in range(n):
        x = inc_task.remote(x)
    return int(ray.get(x))


def ray_fanout(n: int) -> int:
    return int(ray.get(total_task.remote(*[inc_task.remote(i) for i in range(n)])))


def wf_chain(n: int) -> int:
    x: object = 0
    for _ in range(n):
        x = inc_step.step(x)
    return int(x.run(workflow_id=f"bench-chain-{uuid.uuid4().hex[:8]}"))  # type: ignore[attr-defined]


def wf_fanout(n: int) -> int:
    wf = total_step.step(*[inc_step.step(i) for i in range(n)])
    return int(wf.run(workflow_id=f"bench-fan-{uuid.uuid4().hex[:8]}"))


def timed(fn: Callable[[int], int], n: int, expect: int) -> float:
    start = time.perf_counter()
    got = fn(n)
    took = time.perf_counter() - start
    assert got == expect, (fn.__name__, got, expect)
    return took


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--n",
        default="200,1000,10000",
        help="steps per workflow, or several sizes separated by commas (default 200,1000,10000)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement; the median is shown")
    parser.add_argument("--storage", default=None, help="storage URL (default: SQLite in a temp dir)")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="actorflow-bench-")
    storage = args.storage or f"sqlite:///{tmp.name}/bench.db"
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, logging_level="ERROR")
    workflow.init(storage)
    sizes = [int(part) for part in args.n.split(",")]
    print(f"storage {storage}; {os.cpu_count()} cores; ray {ray.__version__}")

    # Warm up workers and caches so neither side pays for process start-up.
    timed(ray_fanout, 200, sum(range(1, 201)))
    timed(wf_fanout, 200, sum(range(1, 201)))

    if len(sizes) == 1 and sizes[0] >= 20000:
        n = sizes[0]
        took = timed(wf_fanout, n, sum(range(1, n + 1)))
        rss = peak_rss_mib()
        ray_took = timed(ray_fanout, n, sum(range(1, n + 1)))
        print(
            f"fan-out of {n:,} steps: {took:.1f} s wall ({took / n * 1e3:.3f} ms/step); "
            f"plain Ray {ray_took:.1f} s; ratio {took / ray_took:.2f}x; "
            f"driver peak RSS {rss:.0f} MiB during the workflow"
        )
        return 0

    print(f"{'shape':8} {'N':>6} {'ray ms/step':>12} {'actorflow ms/step':>18} {'ratio':>7}")
    for shape, plain, durable in (("chain", ray_chain, wf_chain), ("fan-out", ray_fanout, wf_fanout)):
        for n in sizes:
            expect = n if shape == "chain" else sum(range(1, n + 1))
            ray_times, wf_times = [], []
            for _ in range(args.runs):  # interleaved, so drift hits both sides alike
                ray_times.append(timed(plain, n, expect))
                wf_times.append(timed(durable, n, expect))
            r = statistics.median(ray_times) / n * 1e3
            w = statistics.median(wf_times) / n * 1e3
            print(f"{shape:8} {n:>6} {r:>12.3f} {w:>18.3f} {w / r:>6.2f}x")
    print(f"driver peak RSS {peak_rss_mib():.0f} MiB")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
