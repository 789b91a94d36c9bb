"""Where ``run_async`` and ``resume_async`` run workflows: a detached Ray actor per storage, so
a workflow outlives the driver that started it (as Ray Workflows had it: fire and forget).

The actor (``WorkflowHost``, named after the storage URL in Ray namespace ``actorflow``, made on
first use and found again by any later driver of the cluster) holds a workflow runtime on that
storage. ``start`` begins a workflow in the actor's background and returns at once; ``output``
waits for a workflow's end and returns its output, so the ``ObjectRef`` a caller gets is only a
view: if the caller exits, the workflow goes on. Leases and fencing are the same as anywhere
else: the actor is just another runner, and one that dies leaves its workflows RESUMABLE.

The host also keeps Ray's workflow queue (``workflow.init(max_running_workflows=,
max_pending_workflows=)``): a workflow submitted while the running ones fill the limit is stored
PENDING and started, in the order submitted, as slots free up; when the queue is full too,
:meth:`WorkflowHost.submit` stores nothing and says so (the caller raises ``queue.Full``). The
queue itself is storage: a host that starts (a new cluster, a restarted actor) queues the PENDING
workflows it finds, oldest first. So are the limits: :meth:`WorkflowHost.configure` stores them
(key :data:`LIMITS_KEY`) before it applies them, and a host that starts reads them back before
it queues or admits a submitted workflow; they are not arguments of the actor, since Ray
re-creates a dead host with the arguments it was first made with. The limits count what this
host runs (one host per storage in a cluster, so per cluster); the last ones set on a storage
apply to every host on it.

Ray creates the host in a worker process of its own, which can take seconds on a busy machine,
and re-creates it when that process dies (``max_restarts=-1``). A creation that meets its
storage down waits for it (up to :data:`OPEN_PATIENCE`) instead of failing: Ray takes an error
in ``__init__`` as the actor's end, and every ``ObjectRef`` it handed out would fail with it.
A driver whose handle names a host gone for good (that error, or a kill with no restart) makes
a new one at its next call.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import threading
import time
from typing import Any

from actorflow import _codec
from actorflow.engine._fencing import RETRY_FIRST_DELAY, RETRY_MAX_DELAY
from actorflow.errors import StorageUnavailableError

log = logging.getLogger("actorflow.workflow")

NAMESPACE = "actorflow"

#: How long (seconds) a host being created waits for its storage to answer before it fails.
OPEN_PATIENCE = 120.0

#: Seconds between two looks at a RESUMABLE workflow this host has queued or is taking over.
OURS_POLL = 0.02
#: Heads of PENDING workflows read per storage call when a host starts.
RESTORE_CHUNK = 500
#: Where the queue's limits are stored: JSON ``{"max_running": n, "max_pending": m}`` (null: none).
LIMITS_KEY = "queue/limits"


def check_limit(value: int | None, name: str, least: int) -> int | None:
    """A queue limit as given to ``init``: None or -1 for none, else an int of at least ``least``
    (``TypeError`` or ``ValueError`` naming ``name`` otherwise)."""
    if value is None or (type(value) is int and value == -1):
        return None
    if type(value) is not int:
        raise TypeError(f"{name} must be None or an integer, got {type(value).__name__}")
    if value < least:
        raise ValueError(f"{name} must be at least {least}, or -1 for no limit; got {value}")
    return value


def host_name(storage_url: str) -> str:
    return "actorflow-workflows-" + hashlib.sha1(storage_url.encode()).hexdigest()[:16]


class WorkflowHost:
    """The detached actor's body: one runtime, many workflows at once (an async actor)."""

    def __init__(
        self,
        storage_url: str,
        lease_ttl: float,
    ) -> None:
        # The limits come from storage (read by _restore) and from configure, never from the
        # arguments: Ray re-creates a dead host with the arguments it was first made with.
        self.runtime = _open_runtime(storage_url, lease_ttl)
        self.max_running: int | None = None
        self.max_pending: int | None = None
        self._lock = threading.Lock()  # actor calls and run callbacks come from two threads
        self._running: set[str] = set()
        self._queue: collections.deque[str] = collections.deque()
        self._queued: set[str] = set()
        self._committing = 0  # submits between their capacity check and their commit
        self._configured = 0  # configure calls so far: a restore must not undo a newer one
        self._configuring = asyncio.Lock()  # one configure at a time, stored then applied
        self._restored = asyncio.run_coroutine_threadsafe(self._restore(), self.runtime.loop)

    async def start(self, workflow_id: str, lease: bytes | None) -> None:
        """Run (or resume, holding ``lease`` when one is handed over) the workflow here, in the
        background. Two starts of one workflow are fine: the engine's lease lets one run it
        and the other wait for it (and the order two callers' starts arrive in is not theirs).
        It counts as running for the queue's limit, but is never queued or refused."""
        with self._lock:
            self._launch(workflow_id, lease)

    async def configure(self, max_running: int | None, max_pending: int | None) -> None:
        """Set the queue's limits (None: no limit); workflows queued start if there is room.

        The limits are stored first, so a host that restarts keeps them; if storing fails, the
        error is raised and the limits in force do not change."""
        from actorflow.storage import Batch

        blob = _codec.json_dumps({"max_running": max_running, "max_pending": max_pending})
        async with self._configuring:  # the limits in force are always the last ones stored
            await self._on_loop(self.runtime.storage.commit(Batch().put(LIMITS_KEY, blob)))
            with self._lock:
                self._configured += 1
                self.max_running, self.max_pending = max_running, max_pending
                self._pump()

    async def submit(self, workflow_id: str, batch: Any) -> str | tuple[str, int, int]:
        """Store a workflow prepared PENDING (``batch``) and start it, or queue it when the
        running ones fill ``max_running``: ``"started"``, ``"queued"``, ``"exists"`` (the id was
        taken: it is resumed or joined, as a run of a stored id is), or ``("full", max_running,
        max_pending)``, the limits this host applied, when the queue holds ``max_pending``
        already, and then nothing was stored. A host that has just started answers once it has
        read its queue from storage (``StorageUnavailableError`` when that takes longer than
        :data:`OPEN_PATIENCE`)."""
        await self._until_restored()
        with self._lock:
            if self._full():
                assert self.max_running is not None and self.max_pending is not None
                return "full", self.max_running, self.max_pending
            self._committing += 1
        try:
            created = await self._on_loop(self.runtime.storage.commit(batch))
        finally:
            with self._lock:
                self._committing -= 1
        with self._lock:
            if not created:
                # A repeated submit (its first try may have committed), or a run of a stored id
                # (which resumes it), must not skip the queue.
                if workflow_id in self._queued:
                    return "queued"
                if workflow_id not in self._running:
                    if not self._room():
                        self._enqueue(workflow_id)
                        return "queued"
                    self._launch(workflow_id, None)
                return "exists"
            if workflow_id in self._running or workflow_id in self._queued:
                return "queued"  # the start-up scan found it first
            if self._room():
                self._launch(workflow_id, None)
                return "started"
            self._enqueue(workflow_id)
            return "queued"

    # The methods below run under self._lock.
    def _room(self) -> bool:
        return self.max_running is None or len(self._running) < self.max_running

    def _full(self) -> bool:
        if self.max_running is None or self.max_pending is None:
            return False
        held = len(self._running) + len(self._queue) + self._committing
        return held >= self.max_running + self.max_pending

    def _enqueue(self, workflow_id: str) -> None:
        if workflow_id not in self._queued and workflow_id not in self._running:
            self._queue.append(workflow_id)
            self._queued.add(workflow_id)

    def _pump(self) -> None:
        while self._queue and self._room():
            wid = self._queue.popleft()
            self._queued.discard(wid)
            self._launch(wid, None)

    def _launch(self, workflow_id: str, lease: bytes | None) -> None:
        self._running.add(workflow_id)
        run = self.runtime.engine.resume(workflow_id, lease)
        fut = asyncio.run_coroutine_threadsafe(run, self.runtime.loop)

        def ended(done: Any) -> None:
            if not done.cancelled() and done.exception() is not None:
                log.info("workflow %s ended with %r", workflow_id, done.exception())
            with self._lock:
                self._running.discard(workflow_id)
                self._pump()

        fut.add_done_callback(ended)

    async def _on_loop(self, coro: Any) -> Any:
        """Await ``coro`` on the runtime's loop (this actor's calls run on Ray's)."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.runtime.loop))

    async def _until_restored(self) -> None:
        restored = asyncio.shield(asyncio.wrap_future(self._restored))
        try:
            await asyncio.wait_for(restored, OPEN_PATIENCE)
        except TimeoutError:
            url = self.runtime.storage_url
            raise StorageUnavailableError("the workflow host could not read its queue yet", url) from None

    async def _restore(self) -> None:
        """Take up the stored queue limits, then queue the PENDING workflows storage holds (left
        by an earlier host), oldest first. Storage that fails is asked again (50 ms doubling to
        1 s) until it answers: submits wait for this."""
        delay = RETRY_FIRST_DELAY
        while True:
            with self._lock:
                configured = self._configured
            try:
                limits = await stored_limits(self.runtime.storage, self.runtime.storage_url)
                pending = await self._pending_oldest_first()
                break
            except Exception as exc:
                if delay == RETRY_FIRST_DELAY:
                    log.warning("workflow host cannot read its queue yet, trying again: %r", exc)
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_DELAY)
        with self._lock:
            if limits is not None and self._configured == configured:
                self.max_running, self.max_pending = limits
            for wid in pending:
                self._enqueue(wid)
            self._pump()

    async def _pending_oldest_first(self) -> list[str]:
        """The PENDING workflows storage holds, oldest first: their heads read
        :data:`RESTORE_CHUNK` at a time; one deleted since it was listed is skipped."""
        from actorflow.engine._store import WorkflowStatus, k_meta

        engine = self.runtime.engine
        wids = [wid for wid, _ in await engine.list_workflows({WorkflowStatus.PENDING})]
        started: list[tuple[float, str]] = []
        for at in range(0, len(wids), RESTORE_CHUNK):
            chunk = wids[at : at + RESTORE_CHUNK]
            heads = await engine.storage.get_many([k_meta(w) for w in chunk])
            for wid, raw in zip(chunk, heads, strict=True):
                if raw is not None:
                    started.append((_codec.json_loads(raw).get("start_time") or 0, wid))
        return [wid for _, wid in sorted(started)]

    async def output(self, workflow_id: str) -> Any:
        """The workflow's output once it ends (its failure raised), wherever it runs. While this
        host has it queued, or is taking it over, a RESUMABLE workflow is waited for too."""
        from actorflow.errors import WorkflowNotResumableError

        while True:
            try:
                return await self._on_loop(self.runtime.engine.wait(workflow_id, None))
            except WorkflowNotResumableError:
                with self._lock:
                    ours = workflow_id in self._running or workflow_id in self._queued
                if not ours:
                    raise
            await asyncio.sleep(OURS_POLL)

    def ready(self) -> bool:
        return True


def _open_runtime(storage_url: str, lease_ttl: float) -> Any:
    """This process's runtime on ``storage_url``, retried (50 ms doubling to 1 s) while the
    storage cannot be reached, for up to :data:`OPEN_PATIENCE` seconds."""
    from actorflow.engine._runtime import runtime_for

    deadline = time.monotonic() + OPEN_PATIENCE
    delay = RETRY_FIRST_DELAY
    while True:
        try:
            return runtime_for(storage_url, lease_ttl)
        except StorageUnavailableError as exc:
            if time.monotonic() + delay >= deadline:
                raise
            if delay == RETRY_FIRST_DELAY:
                log.warning("workflow host waits for its storage: %s", exc)
        time.sleep(delay)
        delay = min(2 * delay, RETRY_MAX_DELAY)


_handles: dict[str, Any] = {}
_handles_lock = threading.Lock()


def workflow_host(storage_url: str, lease_ttl: float) -> Any:
    """The detached actor for ``storage_url`` (created if the cluster has none)."""
    with _handles_lock:
        return _host(storage_url, lease_ttl)


def _host(storage_url: str, lease_ttl: float) -> Any:
    import ray

    handle = _handles.get(storage_url)
    if handle is None:
        decorate: Any = ray.remote
        remote: Any = decorate(num_cpus=0, max_concurrency=1000, max_restarts=-1)(WorkflowHost)
        handle = remote.options(
            name=host_name(storage_url), namespace=NAMESPACE, lifetime="detached", get_if_exists=True
        ).remote(storage_url, lease_ttl)
        _handles[storage_url] = handle
    return handle


async def stored_limits(storage: Any, url: str) -> tuple[int | None, int | None] | None:
    """The queue limits :meth:`WorkflowHost.configure` stored on ``storage`` (max running, max
    pending; None: no limit), or None if none are stored or what is stored is malformed."""
    stored = await storage.get(LIMITS_KEY)
    if stored is None:
        return None
    try:
        limits = _codec.json_loads(stored)
        running = check_limit(limits["max_running"], "max_running", 1)
        pending = check_limit(limits["max_pending"], "max_pending", 0)
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("ignoring the stored queue limits of %s: %r", url, exc)
        return None
    return running, pending


def run_detached(storage_url: str, lease_ttl: float, workflow_id: str, lease: bytes | None) -> Any:
    """Start the workflow in the storage's detached actor; an ``ObjectRef`` of its output.
    Returns once the actor has taken the start (a round trip): a task submitted without waiting
    can be lost when the calling driver exits right after, and the workflow would then wait
    for its lease to lapse and read RESUMABLE, with no runner."""
    host, _ = _on_host(storage_url, lease_ttl, lambda h: h.start.remote(workflow_id, lease))
    return host.output.remote(workflow_id)


def submit_detached(storage_url: str, lease_ttl: float, workflow_id: str, batch: Any) -> Any:
    """Hand a workflow prepared PENDING to the storage's detached actor, which starts or queues
    it; an ``ObjectRef`` of its output. ``queue.Full`` (and nothing stored) when the running
    and pending workflows fill the limits the host applies (the stored ones: another driver
    may have set them) already; its message quotes those limits."""
    import queue

    host, answer = _on_host(storage_url, lease_ttl, lambda h: h.submit.remote(workflow_id, batch))
    if isinstance(answer, tuple) and answer[0] == "full":
        _, running, pending = answer
        raise queue.Full(
            f"workflow {workflow_id!r} not started: {running} workflows run and {pending} wait already "
            "(workflow.init(max_running_workflows=, max_pending_workflows=)); nothing was stored"
        )
    return host.output.remote(workflow_id)


def configure_host(storage_url: str, lease_ttl: float, limits: tuple[int | None, int | None]) -> None:
    """Set (and store) the queue limits of the storage's detached actor, creating it if needed."""
    _on_host(storage_url, lease_ttl, lambda h: h.configure.remote(*limits))


def _on_host(storage_url: str, lease_ttl: float, call: Any) -> tuple[Any, Any]:
    """``call(host)`` (an ``ObjectRef``) on the storage's host, waited for: the host and the answer.

    A handle this process keeps may name a host that is gone for good (killed with no restart,
    or whose ``__init__`` failed); then the call is made once more on a host found or made
    afresh. Every host call is safe to repeat: a start of a running workflow waits for it, a
    submit of a stored id joins it where it runs or waits in the queue, and limits set twice
    are the same limits.
    """
    import ray

    host = workflow_host(storage_url, lease_ttl)
    try:
        return host, ray.get(call(host))
    except ray.exceptions.ActorDiedError:
        with _handles_lock:
            if _handles.get(storage_url) is host:
                del _handles[storage_url]
        host = workflow_host(storage_url, lease_ttl)
        return host, ray.get(call(host))


def stop_host(storage_url: str) -> bool:
    """Kill the storage's detached actor if there is one (workflows it runs read RESUMABLE and
    can be resumed anywhere); whether there was one. For tests and for tearing a storage down."""
    import ray

    with _handles_lock:
        _handles.pop(storage_url, None)
    if not ray.is_initialized():
        return False
    try:
        handle = ray.get_actor(host_name(storage_url), namespace=NAMESPACE)
    except ValueError:
        return False
    ray.kill(handle, no_restart=True)
    return True
