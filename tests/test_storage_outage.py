"""Workflows ride through a short storage outage instead of dying with it.

Each test starts its own ``redis-server`` (AOF on) so it can take it away: the server is
SIGKILLed while a step runs and started again 3 s later on the same port with the same data,
as in a crash and restart. The workflow's executor must retry its checkpoint and heartbeat
commits through the gap and finish with every step run exactly once (each run appends a line
to a file, so runs are counted across Ray worker processes). The lease is 10 s and recovery
is off, so an executor that died would leave the workflow unfinished (or finished only after
a lease ran out and someone resumed it, running the step in flight twice).

A TCP proxy that loses one reply covers the commits whose outcome is unknown: the command ran
on the server, but the client saw its connection break before the answer arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

import pytest
from _redis import REDIS_SERVER, RedisServer, start_redis

from actorflow import workflow
from actorflow.engine import WorkflowRuntime, close_all, default_runtime
from actorflow.engine._detached import stop_host, workflow_host
from actorflow.engine._executor import Executor
from actorflow.engine._fencing import LeaseLost
from actorflow.engine._runtime import canonical_url
from actorflow.engine._store import Lease, WorkflowStore, k_lease, k_meta, k_out, k_step
from actorflow.errors import StorageUnavailableError
from actorflow.storage import Batch
from actorflow.storage.redis import RedisStorage
from actorflow.workflow import WorkflowStatus

LEASE_TTL = 10.0
OUTAGE = 3.0
#: How long after the lease's renewal its runner renews it again (the executor's rule).
RENEW_EVERY = LEASE_TTL / 3


@pytest.fixture
def redis_alone(tmp_path: pathlib.Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, so the test may kill and restart it."""
    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.skip(f"redis-server not found at {REDIS_SERVER}")
    with start_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def outage_workflows(ray_session: None, redis_alone: RedisServer) -> Iterator[WorkflowRuntime]:
    """``actorflow.workflow`` on ``redis_alone`` with a 10 s lease, closed after the test."""
    workflow.init(redis_alone.url, lease_ttl=LEASE_TTL)
    try:
        yield default_runtime()
    finally:
        close_all()
        stop_host(canonical_url(redis_alone.url))  # the detached actor run_async started


def _counts(tally: pathlib.Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in tally.read_text().split() if tally.exists() else []:
        out[line] = out.get(line, 0) + 1
    return out


def _wait_for(ready: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _steps(tally: pathlib.Path, gate: pathlib.Path) -> Any:
    """A step ``work(name, x) -> x + 1`` that records each run; the one named ``held`` runs
    until ``gate`` exists (so the test decides when it finishes), the others take 1 s."""

    @workflow.step
    def work(name: str, x: int) -> int:
        with open(tally, "a") as f:
            f.write(name + "\n")
        if name == "held":
            deadline = time.monotonic() + 120
            while not gate.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("the test never opened the gate")
                time.sleep(0.02)
        else:
            time.sleep(1)
        return x + 1

    return work


def _just_renewed(rt: WorkflowRuntime, wid: str) -> float:
    """Wait until the workflow's lease is renewed; return when (``time.monotonic()``)."""
    first = rt.blocking(rt.engine.store.read_head(wid), timeout=10)[2]
    assert first is not None, "the workflow holds no lease"
    _wait_for(
        lambda: rt.blocking(rt.engine.store.read_head(wid), timeout=10)[2] != first,
        "a lease renewal",
        timeout=RENEW_EVERY + 5,
    )
    return time.monotonic()


def _outage(server: RedisServer, gate: pathlib.Path, open_gate_after: float) -> float:
    """Kill Redis, open ``gate`` ``open_gate_after`` s later (the held step then finishes while
    Redis is down), start Redis again ``OUTAGE`` s after the kill; return when it was back."""
    server.kill()
    down = time.monotonic()
    time.sleep(open_gate_after)
    gate.touch()
    time.sleep(max(0.0, down + OUTAGE - time.monotonic()))
    server.start()
    return time.monotonic()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_workflow_rides_through_a_redis_outage(
    tmp_path: pathlib.Path, redis_alone: RedisServer, outage_workflows: WorkflowRuntime
) -> None:
    import ray

    tally, gate = tmp_path / "tally", tmp_path / "gate"
    work = _steps(tally, gate)
    ref = workflow.run_async(work.step("last", work.step("held", work.step("first", 0))), workflow_id="w1")
    _wait_for(lambda: "held" in _counts(tally), "the held step to start")
    renewed = _just_renewed(outage_workflows, "w1")
    # Down from 0.7 s before the next renewal: the heartbeat meets the outage first, then the
    # held step finishes and its checkpoint waits behind it.
    time.sleep(max(0.0, renewed + RENEW_EVERY - 0.7 - time.monotonic()))
    back = _outage(redis_alone, gate, open_gate_after=1.2)

    assert ray.get(ref, timeout=60) == 3
    assert time.monotonic() - back < LEASE_TTL  # it went on at once, it did not wait out a lease
    assert workflow.get_status("w1") is WorkflowStatus.SUCCESSFUL
    assert workflow.get_output("w1") == 3
    assert _counts(tally) == {"first": 1, "held": 1, "last": 1}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_sub_workflow_of_an_actor_rides_through_a_redis_outage(
    tmp_path: pathlib.Path, redis_alone: RedisServer, outage_workflows: WorkflowRuntime
) -> None:
    tally, gate = tmp_path / "tally", tmp_path / "gate"
    work = _steps(tally, gate)

    @workflow.virtual_actor
    class OutageReporter:
        def __init__(self) -> None:
            self.started = 0

        def start(self) -> Any:
            self.started += 1  # commits together with the launch of the sub-workflow
            return work.step("last", work.step("held", work.step("first", 10 * self.started)))

    reporter = cast(Any, OutageReporter).get_or_create("r1")  # the decorator is untyped
    call = reporter.start.run_async()
    _wait_for(lambda: "held" in _counts(tally), "the held step to start")
    (wid,) = [w for w, s in workflow.list_all() if s is WorkflowStatus.RUNNING]
    renewed = _just_renewed(outage_workflows, wid)
    # Down 2 s before the next renewal: the held step's checkpoint meets the outage first,
    # then the heartbeat waits behind it.
    time.sleep(max(0.0, renewed + RENEW_EVERY - 2.0 - time.monotonic()))
    back = _outage(redis_alone, gate, open_gate_after=0.3)

    assert call.result(timeout=60) == 13
    assert time.monotonic() - back < LEASE_TTL
    assert workflow.get_status(wid) is WorkflowStatus.SUCCESSFUL
    assert _counts(tally) == {"first": 1, "held": 1, "last": 1}
    assert reporter.start.run() == 23  # the actor works on afterwards (a second sub-workflow)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_wait_for_event_keeps_polling_through_a_redis_outage(
    tmp_path: pathlib.Path, redis_alone: RedisServer, outage_workflows: WorkflowRuntime
) -> None:
    import ray

    ref = workflow.run_async(workflow.wait_for_event("go"), workflow_id="ev1")
    _wait_for(lambda: workflow.get_status("ev1") is WorkflowStatus.RUNNING, "the workflow to run")
    time.sleep(1.0)  # the wait step is polling by now
    redis_alone.kill()
    time.sleep(OUTAGE)
    redis_alone.start()
    workflow.post_event("ev1", "go", {"paid": 20})

    assert ray.get(ref, timeout=60) == {"paid": 20}
    # One attempt: the poll neither failed nor was retried.
    assert workflow.get_metadata("ev1", "wait_for_event")["stats"]["attempts"] == 1


def _answers() -> bool:
    """Whether this driver's storage answers three reads in a row (a pooled connection the
    restart broke fails once; the commit of ``run_async`` is not retried, its outcome unknown)."""
    try:
        for _ in range(3):
            workflow.list_all()
        return True
    except StorageUnavailableError:
        return False


def test_a_workflow_host_created_while_redis_is_down_waits_for_it(
    redis_alone: RedisServer, outage_workflows: WorkflowRuntime
) -> None:
    """Ray makes the detached host in a process of its own, seconds after ``run_async`` asked
    on a busy machine: its ``__init__`` may meet the storage down. It must wait, not fail (Ray
    takes a failed ``__init__`` as the actor's end, and the workflow's ``ObjectRef`` with it)."""
    import ray

    url = canonical_url(redis_alone.url)
    stop_host(url)
    redis_alone.kill()
    host = workflow_host(url, LEASE_TTL)  # created now, while nothing answers
    time.sleep(OUTAGE)
    redis_alone.start()
    assert ray.get(host.ready.remote(), timeout=60) is True
    _wait_for(_answers, "this driver's connections to Redis to recover")
    ref = workflow.run_async(workflow.wait_for_event("go"), workflow_id="late-host")
    workflow.post_event("late-host", "go", 5)
    assert ray.get(ref, timeout=60) == 5


# --------------------------------------------------------------------- outcomes unknown


class ReplyCutter:
    """A TCP proxy in front of Redis that can lose one reply.

    After :meth:`cut_reply_to` ``marker``, the next command whose bytes contain ``marker`` is
    passed to the server, but its reply is dropped and that client connection closed: the
    command ran, and the client sees only a broken connection (outcome unknown).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.cuts = 0
        self._marker: bytes | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}/0"

    def cut_reply_to(self, marker: bytes) -> None:
        self._marker = marker

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        doomed = False  # this connection sent the marked command: its next reply is lost

        async def to_server() -> None:
            nonlocal doomed
            while data := await reader.read(65536):
                if self._marker is not None and self._marker in data:
                    self._marker, doomed = None, True
                up_writer.write(data)
                await up_writer.drain()

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                if doomed:
                    self.cuts += 1
                    return
                writer.write(data)
                await writer.drain()

        try:
            pumps = [asyncio.ensure_future(to_server()), asyncio.ensure_future(to_client())]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()
            self._tasks.discard(task)


@pytest.fixture
async def cutter(redis_alone: RedisServer) -> AsyncIterator[ReplyCutter]:
    proxy = ReplyCutter(redis_alone.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


@contextlib.asynccontextmanager
async def _executor(url: str, wid: str, lease_ttl: float) -> AsyncIterator[Executor]:
    """An executor (no Ray needed for its commits) of a RUNNING workflow ``wid`` it holds the
    lease of, on its own connection to ``url``; the Lua commit script is loaded already."""
    storage = await RedisStorage.open(url)
    try:
        store = WorkflowStore(storage)
        lease = Lease.new(lease_ttl)
        head = Batch().require(k_meta(wid), None).put(k_lease(wid), lease.encode())
        store.put_meta(head, wid, {"status": WorkflowStatus.RUNNING.value, "start_time": time.time()})
        assert await storage.commit(head)
        yield Executor(store, wid, lease, lease_ttl, url)
    finally:
        await storage.close()


@pytest.mark.timeout(60)
async def test_a_renewal_whose_reply_was_lost_keeps_the_lease(cutter: ReplyCutter) -> None:
    # Renews every 0.8 s. (With 0.9 s, renewing every 0.3 s, a loaded CI machine once let the
    # lease run too close to its end while the lost reply was found out, and the runner gave up.)
    async with _executor(cutter.url, "hb", lease_ttl=2.4) as ex:
        storage = ex.storage
        old = ex.lease_bytes
        cutter.cut_reply_to(b"EVALSHA")
        heartbeat = asyncio.ensure_future(ex._heartbeat())
        try:
            deadline = time.monotonic() + 30
            while cutter.cuts == 0:
                assert time.monotonic() < deadline, "no renewal was sent"
                await asyncio.sleep(0.02)
            # The first renewal applied and its reply was lost. The executor must find that
            # out and go on renewing (taking its own renewal for a lost lease stops it).
            assert await storage.get(k_lease("hb")) not in (old, None)
            renewals: set[bytes] = set()
            while len(renewals) < 3:
                assert not heartbeat.done(), f"the heartbeat stopped: {heartbeat!r}"
                assert time.monotonic() < deadline, "the heartbeat stopped renewing the lease"
                renewals.add(ex.lease_bytes)
                await asyncio.sleep(0.02)
            assert await storage.get(k_lease("hb")) == ex.lease_bytes
        finally:
            heartbeat.cancel()
            with contextlib.suppress(BaseException):
                await heartbeat


@pytest.mark.timeout(60)
async def test_a_final_commit_whose_reply_was_lost_is_not_a_lost_lease(cutter: ReplyCutter) -> None:
    async with _executor(cutter.url, "fin", lease_ttl=10.0) as ex:
        ex.root = "r"
        ex.done["r"] = 42
        cutter.cut_reply_to(b"EVALSHA")
        assert await ex._succeed() == 42  # not LeaseLost, although the lease is gone now
        assert cutter.cuts == 1
        meta, _, lease_raw = await ex.store.read_head("fin")
        assert meta["status"] == WorkflowStatus.SUCCESSFUL.value and lease_raw is None
        assert await ex.store.load_output("fin") == 42


@pytest.mark.timeout(60)
async def test_a_checkpoint_whose_reply_was_lost_is_committed_once(cutter: ReplyCutter) -> None:
    async with _executor(cutter.url, "ck", lease_ttl=10.0) as ex:
        cutter.cut_reply_to(b"EVALSHA")
        await ex._commit(Batch().put(k_step("ck", "a"), b"record of a"))
        assert cutter.cuts == 1
        assert await ex.storage.get(k_step("ck", "a")) == b"record of a"
        assert await ex.storage.get(k_lease("ck")) == ex.lease_bytes


@pytest.mark.timeout(60)
async def test_an_outage_longer_than_the_lease_ends_the_run_before_the_lease_does(
    redis_alone: RedisServer,
) -> None:
    async with _executor(redis_alone.url, "long", lease_ttl=3.0) as ex:
        redis_alone.kill()
        try:
            start = time.time()
            with pytest.raises(LeaseLost) as lost:
                await ex._commit(Batch().put(k_out("long"), b"never"))
            # It retried while the lease could still be valid, and gave up before it lapsed.
            assert start + 1.0 < time.time() < ex.lease.expires
            assert isinstance(lost.value.__cause__, StorageUnavailableError)
        finally:
            redis_alone.start()
        assert await ex.storage.get(k_out("long")) is None
