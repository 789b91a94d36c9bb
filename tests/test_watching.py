"""The Ray runner's watcher (``engine._watching``): every watched task's future settles once,
with what ``ray.get`` gives for that task alone, whether it was fetched in a group or by Ray's
own callback; a failed, cancelled or slow task holds back no other."""

from __future__ import annotations

import time

import pytest
import ray

from actorflow.engine import _watching
from actorflow.engine._watching import BATCH_FROM, GROUP, Watcher

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(60)]


@ray.remote(num_cpus=0)
def echo(x: int, pause: float = 0.0) -> int:
    time.sleep(pause)
    return x


@ray.remote(num_cpus=0, max_retries=0)
def fails(x: int) -> int:
    raise KeyError(f"task {x} fails")


def settled_live(w: Watcher, timeout: float = 10.0) -> int:
    """The watcher's count of unsettled futures, once it reads 0 or the timeout passes."""
    deadline = time.monotonic() + timeout
    while w._live and time.monotonic() < deadline:
        time.sleep(0.01)
    return w._live


def test_many_tasks_settle_with_their_own_values_and_a_failure_fails_only_its_own() -> None:
    w = Watcher()
    n = 10 * GROUP
    futs = {i: w.watch(fails.remote(i) if i % 37 == 5 else echo.remote(i)) for i in range(n)}
    # More than a handful in flight: they are fetched in groups, by the watcher's thread.
    assert w._thread is not None
    for i, fut in futs.items():
        if i % 37 == 5:
            with pytest.raises(KeyError, match=f"task {i} fails"):  # as ray.get raises it
                fut.result(timeout=30)
        else:
            assert fut.result(timeout=30) == i
    assert settled_live(w) == 0


def test_a_slow_task_in_a_group_holds_back_none_of_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_watching, "BATCH_FROM", 1)  # every task fetched in groups
    w = Watcher()
    slow = w.watch(echo.remote(-1, pause=4.0))
    quick = [w.watch(echo.remote(i)) for i in range(GROUP - 1)]  # in the slow one's group
    started = time.monotonic()
    assert [f.result(timeout=30) for f in quick] == list(range(GROUP - 1))
    assert time.monotonic() - started < 2.0, "the quick tasks waited for the slow one"
    later = [w.watch(echo.remote(i)) for i in range(3)]  # while the slow one still runs
    assert [f.result(timeout=30) for f in later] == [0, 1, 2]
    assert time.monotonic() - started < 3.0
    assert not slow.done()
    assert slow.result(timeout=30) == -1  # handed to Ray's callback, and seen there
    assert settled_live(w) == 0


def test_a_cancelled_task_fails_its_future_and_the_rest_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_watching, "BATCH_FROM", 1)
    w = Watcher()
    ref = echo.remote(0, pause=30.0)
    doomed = w.watch(ref)
    rest = [w.watch(echo.remote(i)) for i in range(1, 6)]
    time.sleep(0.5)
    ray.cancel(ref, force=True)
    with pytest.raises(ray.exceptions.RayError):
        doomed.result(timeout=30)
    assert [f.result(timeout=30) for f in rest] == [1, 2, 3, 4, 5]
    assert settled_live(w) == 0


def test_a_future_cancelled_by_its_caller_leaves_the_watcher_working(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_watching, "BATCH_FROM", 1)
    w = Watcher()
    dropped = w.watch(echo.remote(0, pause=0.3))
    assert dropped.cancel()
    assert w.watch(echo.remote(7)).result(timeout=30) == 7
    assert settled_live(w) == 0


def test_few_tasks_in_flight_get_rays_own_future() -> None:
    w = Watcher()
    futs = [w.watch(echo.remote(i)) for i in range(BATCH_FROM - 1)]
    assert [f.result(timeout=30) for f in futs] == list(range(BATCH_FROM - 1))
    assert w._thread is None  # no group was fetched: each settled by Ray's callback
    assert settled_live(w) == 0
