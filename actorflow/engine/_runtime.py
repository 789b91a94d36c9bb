"""A workflow runtime: one storage, one event loop, and blocking methods over the engine.

The module-level functions of ``actorflow.workflow`` use a default runtime created by
``workflow.init``; tests and applications may hold several :class:`WorkflowRuntime` objects at
once, each bound to its own storage. The async work is the engine's
(:class:`~actorflow.engine._engine.WorkflowEngine`, ``runtime.engine``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from actorflow._ids import check_workflow_id
from actorflow.engine._dag import Workflow
from actorflow.engine._detached import check_limit as _limit
from actorflow.engine._detached import configure_host, stored_limits, submit_detached
from actorflow.engine._engine import DEFAULT_LEASE_TTL, WorkflowEngine, as_status
from actorflow.engine._runners import RayRunner, StepRunner
from actorflow.engine._store import WorkflowStatus
from actorflow.errors import (
    ConfigError,
    StorageError,
    WorkflowCancelledError,
    WorkflowNotFoundError,
    WorkflowNotResumableError,
    WorkflowRunningError,
    WorkflowStepNotFoundError,
    WorkflowTimeoutError,
    execution_error,
)
from actorflow.storage import Storage, default_storage_url, open_storage, parse_storage_url

T = TypeVar("T")

#: What a run, resume or wait can raise that is not the workflow failing.
_NOT_A_FAILURE = (
    ConfigError,
    StorageError,
    WorkflowCancelledError,
    WorkflowNotFoundError,
    WorkflowNotResumableError,
    WorkflowRunningError,
    WorkflowStepNotFoundError,
    WorkflowTimeoutError,
)

log = logging.getLogger("actorflow.workflow")


async def _failing_as_execution_error(wid: str, coro: Coroutine[Any, Any, T]) -> T:
    """``coro``'s result; a failure of the workflow (not of the machinery) as
    ``WorkflowExecutionError``."""
    try:
        return await coro
    except _NOT_A_FAILURE:
        raise
    except Exception as exc:
        raise execution_error(wid, exc) from exc


class WorkflowRuntime:
    """Runs and manages workflows stored in one storage.

    All storage I/O happens on one event loop, a private thread's (or, with :meth:`attach`, the
    host's); the public methods are blocking and thread-safe. ``lease_ttl`` and ``runner`` (where
    steps run: Ray by default): see :class:`~actorflow.engine._engine.WorkflowEngine`.
    """

    def __init__(
        self,
        storage: str | None = None,
        *,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        runner: StepRunner | None = None,
        _storage: Storage | None = None,
    ) -> None:
        self.storage_url = canonical_url(storage or default_storage_url())
        self._on_close: list[Callable[[], None]] = []
        self._recovery: Any = None
        self._thread: threading.Thread | None
        if _storage is not None:  # attached to the caller's running loop (see ``attach``)
            self._loop = asyncio.get_running_loop()
            self._thread = None
            self.storage = _storage
        else:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="actorflow-loop", daemon=True)
            self._thread.start()
            try:
                self.storage = self.blocking(open_storage(self.storage_url))
            except BaseException:
                self._stop_loop()
                raise
        self.engine = WorkflowEngine(self.storage, self.storage_url, lease_ttl, runner)

    @classmethod
    async def attach(cls, storage: str, *, lease_ttl: float = DEFAULT_LEASE_TTL) -> WorkflowRuntime:
        """A runtime that lives on the *running* event loop instead of a thread of its own.

        For hosts that already run a loop (a Serve replica): calls made on that loop reach
        storage and actors without a thread hop. Blocking methods then work only from other
        threads.
        """
        opened = await open_storage(canonical_url(storage))
        return cls(storage, lease_ttl=lease_ttl, _storage=opened)

    @property
    def lease_ttl(self) -> float:
        return self.engine.lease_ttl

    @lease_ttl.setter
    def lease_ttl(self, value: float) -> None:
        self.engine.lease_ttl = value

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when this runtime closes (before its storage closes)."""
        self._on_close.append(callback)

    # ----------------------------------------------------------------- plumbing
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def blocking(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on this runtime's loop and wait for it (from any other thread)."""
        if self.on_loop():
            coro.close()
            raise RuntimeError("blocking actorflow call made from its own event loop; use the async form")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def on_loop(self) -> bool:
        """Whether the caller runs on this runtime's event loop."""
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _stop_loop(self) -> None:
        if self._thread is None:
            return  # the loop belongs to the host
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def close(self) -> None:
        """Close the storage and stop the loop. Running workflows in this process stop too."""
        global _default
        with _runtimes_lock:
            if _runtimes.get(self.storage_url) is self:
                del _runtimes[self.storage_url]
            if _default is self:
                _default = None
        if not self._loop.is_running():
            return
        for callback in self._on_close:
            callback()
        if self._recovery is not None:
            self._recovery.cancel()
        if self._thread is None:
            self._loop.create_task(self.storage.close())
            return
        try:
            self.blocking(self.storage.close(), timeout=10)
        finally:
            self._stop_loop()

    # ----------------------------------------------------------------- running
    def run(
        self, wf: Workflow[T], *, workflow_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> T:
        """Run ``wf`` in this process until it ends; see :meth:`Workflow.run`."""
        if self._queue_limited():  # through the queue, which counts it
            wid, _ = self._submit_queued(wf, workflow_id, metadata)
            queued: T = self._outcome(wid, self.engine.wait(wid, None))
            return queued
        prepared = self.engine.prepare(wf, workflow_id, metadata)
        self.engine.runner.ready()
        result: T = self._outcome(prepared.wid, self.engine.start(prepared))
        return result

    def configure_queue(self, max_running: int | None, max_pending: int | None) -> None:
        """Limit how many workflows started by ``run`` and ``run_async`` run at once in the Ray
        cluster (on this storage), as Ray's ``workflow.init(max_running_workflows=,
        max_pending_workflows=)`` did: past ``max_running``, a new workflow is stored PENDING
        and started, in the order submitted, when one ends; past ``max_pending`` waiting too,
        ``run``/``run_async`` raise ``queue.Full`` and store nothing. None or -1: no limit.
        Workflows then run in the storage's detached host (see :mod:`._detached`), which keeps
        the queue; ``resume_async`` counts as running there but is never queued."""
        limits = (
            _limit(max_running, "max_running_workflows", 1),
            _limit(max_pending, "max_pending_workflows", 0),
        )
        if not isinstance(self.engine.runner, RayRunner):
            raise ConfigError(
                "the workflow queue lives in a detached Ray actor; this runtime runs no Ray tasks"
            )
        self.engine.runner.ready()
        configure_host(self.storage_url, self.lease_ttl, limits)

    def _queue_limited(self) -> bool:
        """Whether ``run`` and ``run_async`` go through the storage's queue: a limit on running
        workflows is stored there, set by this driver or by any other on the same storage
        (one storage read per run), so every driver of the cluster counts against it."""
        if not isinstance(self.engine.runner, RayRunner):
            return False
        limits = self.blocking(stored_limits(self.storage, self.storage_url))
        return limits is not None and limits[0] is not None

    def _submit_queued(
        self, wf: Workflow[Any], workflow_id: str | None, metadata: dict[str, Any] | None
    ) -> tuple[str, Any]:
        prepared = self.engine.prepare(wf, workflow_id, metadata, pending=True)
        self.engine.runner.ready()
        ref = submit_detached(self.storage_url, self.lease_ttl, prepared.wid, prepared.batch)
        return prepared.wid, ref

    def _outcome(self, wid: str, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """What a run, resume or wait gives; a failed workflow as ``WorkflowExecutionError``."""
        return self.blocking(_failing_as_execution_error(wid, coro), timeout)

    def run_async(
        self, wf: Workflow[Any], *, workflow_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> Any:
        """Store ``wf`` and run it in the storage's detached Ray actor, where it outlives this
        process (see :mod:`actorflow.engine._detached`); return an ``ObjectRef`` of its output. (With the
        inline runner of :mod:`actorflow.testing`: on this runtime's loop, and a
        :class:`concurrent.futures.Future`.) With queue limits (:meth:`configure_queue`), the
        host starts or queues it, or ``queue.Full`` is raised."""
        if self._queue_limited():
            return self._submit_queued(wf, workflow_id, metadata)[1]
        # Handed: the runner is elsewhere, and this process may exit before it starts.
        prepared = self.engine.prepare(wf, workflow_id, metadata, handed=True)
        self.engine.runner.ready()
        created = self.blocking(self.storage.commit(prepared.batch))
        lease = prepared.lease.encode() if created else None
        return self.engine.runner.run_workflow(self, prepared.wid, lease)

    def resume(self, workflow_id: str) -> Any:
        """Continue a RESUMABLE or FAILED workflow in this process and return its output.

        Finished steps are loaded, not re-run. A SUCCESSFUL workflow returns its output at once;
        one that is RUNNING elsewhere is waited for. Raises ``WorkflowNotFoundError`` for an
        unknown id and ``WorkflowCancelledError`` for a cancelled one.
        """
        wid = check_workflow_id(workflow_id)
        self.blocking(self.engine.store.read_head(wid))
        self.engine.runner.ready()
        return self._outcome(wid, self.engine.resume(wid))

    def resume_async(self, workflow_id: str) -> Any:
        """Like :meth:`resume`, run in the storage's detached Ray actor; returns an ``ObjectRef`` of
        its output (with the inline
        runner: on this runtime's loop, a :class:`concurrent.futures.Future`)."""
        wid = check_workflow_id(workflow_id)
        self.blocking(self.engine.store.read_head(wid))
        self.engine.runner.ready()
        # Taken over here, so the workflow reads RUNNING (with a fresh start time) as soon as
        # this returns; the runner continues under the lease it is handed.
        handed = self.blocking(self.engine.take_over_for(wid))
        return self.engine.runner.run_workflow(self, wid, handed)

    def resume_all(self, include_failed: bool = False) -> list[tuple[str, Any]]:
        """Resume every RESUMABLE workflow (and FAILED ones if asked): ``[(id, ObjectRef)]``."""
        wanted = {WorkflowStatus.RESUMABLE} | ({WorkflowStatus.FAILED} if include_failed else set())
        return [(wid, self.resume_async(wid)) for wid, _ in self.list_all(wanted)]

    # ----------------------------------------------------------------- inspecting
    def get_status(self, workflow_id: str) -> WorkflowStatus:
        """The workflow's status; RUNNING whose runner is gone reads RESUMABLE."""
        return self.blocking(self.engine.status(check_workflow_id(workflow_id)))

    def get_output(
        self, workflow_id: str, *, timeout: float | None = None, task_id: str | None = None
    ) -> Any:
        """The workflow's output, waiting while it runs; with ``task_id``, the stored output of
        that one step (``WorkflowStepNotFoundError`` if it has none yet).

        Raises ``WorkflowExecutionError`` (caused by, and also of the class of, the failing
        step's exception) for a FAILED workflow, ``WorkflowCancelledError`` (Ray's
        ``WorkflowCancellationError``), ``WorkflowNotResumableError`` for a RESUMABLE one,
        ``WorkflowTimeoutError`` on timeout.
        """
        return self.blocking(self._output(workflow_id, task_id, timeout))

    def get_output_future(self, workflow_id: str, *, task_id: str | None = None) -> Any:
        """:meth:`get_output` as a :class:`concurrent.futures.Future`, waited for on this
        runtime's loop (no thread of its own)."""
        return asyncio.run_coroutine_threadsafe(self._output(workflow_id, task_id, None), self._loop)

    async def _output(self, workflow_id: str, task_id: str | None, timeout: float | None) -> Any:
        wid = check_workflow_id(workflow_id)
        if task_id is not None:
            return await self.engine.step_output(wid, task_id)
        return await _failing_as_execution_error(wid, self.engine.wait(wid, timeout))

    def list_all(
        self, status_filter: str | WorkflowStatus | Iterable[str | WorkflowStatus] | None = None
    ) -> list[tuple[str, WorkflowStatus]]:
        """``[(workflow_id, status)]`` for every stored workflow, optionally filtered by status."""
        wanted: set[WorkflowStatus] | None
        if status_filter is None:
            wanted = None
        elif isinstance(status_filter, (str, WorkflowStatus)):
            wanted = {as_status(status_filter)}
        else:
            wanted = {as_status(s) for s in status_filter}
        return self.blocking(self.engine.list_workflows(wanted))

    def get_metadata(self, workflow_id: str, name: str | None = None) -> dict[str, Any]:
        """Status, user metadata and start/end times of the workflow, or of one step by id."""
        return self.blocking(self.engine.metadata(check_workflow_id(workflow_id), name))

    # ----------------------------------------------------------------- events and recovery
    def post_event(self, workflow_id: str, key: str, payload: Any) -> bool:
        """Store an event for ``wait_for_event(key)`` in a workflow, waiting or not yet.
        Returns False if an event with this key was already stored (it is kept)."""
        return self.blocking(self.engine.post_event(check_workflow_id(workflow_id), key, payload))

    def start_recovery(self, interval: float = 2.0) -> None:
        """Resume abandoned workflows automatically: every ``interval`` seconds, any workflow
        whose runner died (its lease expired, or its process is gone) is taken over here."""

        async def loop() -> None:
            while True:
                try:
                    await self.engine.recover_once()
                except Exception as exc:  # storage trouble: tried again next pass
                    log.warning("workflow recovery pass failed; trying again: %r", exc)
                await asyncio.sleep(interval)

        if self._recovery is None:
            self._recovery = asyncio.run_coroutine_threadsafe(loop(), self._loop)

    # ----------------------------------------------------------------- stopping
    def cancel(self, workflow_id: str) -> None:
        """Stop a workflow for good. Its runner stops at its next checkpoint or heartbeat and
        in-flight steps are cancelled; stored checkpoints are kept. Finished workflows are left
        as they are. Idempotent."""
        self.blocking(self.engine.cancel(check_workflow_id(workflow_id)))

    def delete(self, workflow_id: str) -> None:
        """Delete a workflow that is not running, with all its checkpoints."""
        self.blocking(self.engine.delete(check_workflow_id(workflow_id)))


# --------------------------------------------------------------------- runtimes per process
_runtimes: dict[str, WorkflowRuntime] = {}
_runtimes_lock = threading.Lock()
_default: WorkflowRuntime | None = None


def canonical_url(url: str) -> str:
    """The URL with a SQLite location made absolute, so every process opens the same file."""
    kind, details = parse_storage_url(url)
    if kind == "sqlite":
        return f"sqlite://{details['path']}" + ("?sync=full" if details["sync"] == "full" else "")
    return url


def runtime_for(url: str, lease_ttl: float = DEFAULT_LEASE_TTL) -> WorkflowRuntime:
    """This process's runtime for a storage URL (created on first use)."""
    url = canonical_url(url)
    with _runtimes_lock:
        rt = _runtimes.get(url)
        if rt is None:
            rt = _runtimes[url] = WorkflowRuntime(url, lease_ttl=lease_ttl)
        return rt


def close_all() -> None:
    """Close every runtime of this process (the default one included)."""
    for rt in list(_runtimes.values()):
        rt.close()


def init(
    storage: str | None = None,
    *,
    lease_ttl: float | None = None,
    recovery: bool = False,
    max_running_workflows: int | None = None,
    max_pending_workflows: int | None = None,
) -> WorkflowRuntime:
    """Choose the default runtime's storage. Without ``storage``, keep the current one (or use
    ``ACTORFLOW_STORAGE``, else a SQLite file in the per-user data directory). The queue limits,
    when given, are set as :meth:`WorkflowRuntime.configure_queue` says (checked first, so a bad
    one changes nothing)."""
    global _default
    queue = max_running_workflows is not None or max_pending_workflows is not None
    if queue:
        _limit(max_running_workflows, "max_running_workflows", 1)
        _limit(max_pending_workflows, "max_pending_workflows", 0)
    if storage is None and _default is not None and lease_ttl is None and not recovery and not queue:
        return _default
    url = storage or default_storage_url()
    rt = runtime_for(url, lease_ttl or DEFAULT_LEASE_TTL)
    if lease_ttl is not None:
        rt.lease_ttl = lease_ttl
    if queue:
        rt.configure_queue(max_running_workflows, max_pending_workflows)
    if recovery:
        rt.start_recovery()
    _default = rt
    return rt


def use_default(rt: WorkflowRuntime | None) -> WorkflowRuntime | None:
    """Make ``rt`` the default runtime (and this process's runtime for its storage URL), or
    clear the default with None; return the one it replaces. For harnesses such as
    :mod:`actorflow.testing`, which put a runtime of their own behind the module functions."""
    global _default
    with _runtimes_lock:
        before, _default = _default, rt
        if rt is not None:
            _runtimes[rt.storage_url] = rt
    return before


def default_runtime() -> WorkflowRuntime:
    """The runtime behind the module-level functions, created with defaults on first use."""
    return _default if _default is not None else init()
