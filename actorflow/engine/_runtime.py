"""A workflow runtime: one storage, one background event loop, the management calls.

The module-level functions of ``actorflow.workflow`` use a default runtime created by
``workflow.init``; tests and applications may hold several :class:`WorkflowRuntime` objects at
once, each bound to its own storage.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from actorflow import _codec
from actorflow._ids import check_workflow_id, new_workflow_id
from actorflow.errors import (
    ConfigError,
    SerializationError,
    WorkflowCancelledError,
    WorkflowNotResumableError,
    WorkflowRunningError,
    WorkflowStepNotFoundError,
    WorkflowTimeoutError,
)
from actorflow.storage import Batch, Storage, default_storage_url, open_storage, parse_storage_url
from actorflow.workflow._dag import IdAssigner, StepSpec, Workflow, flatten
from actorflow.workflow._executor import Executor, commit_fenced, lease_margin, ride_out
from actorflow.workflow._raysupport import ensure_ray
from actorflow.workflow._store import (
    Lease,
    WorkflowStatus,
    WorkflowStore,
    effective_status,
    k_counters,
    k_dag,
    k_err,
    k_index,
    k_lease,
    k_meta,
    k_out,
    k_step,
)

T = TypeVar("T")
log = logging.getLogger("actorflow.workflow")

DEFAULT_LEASE_TTL = 30.0


class WorkflowRuntime:
    """Runs and manages workflows stored in one storage.

    All storage I/O happens on a private event loop thread; the public methods are blocking
    and thread-safe. ``lease_ttl`` is how long a runner may go silent before its workflow is
    considered abandoned (RESUMABLE); on the runner's own host a dead process is noticed at once.
    """

    def __init__(
        self,
        storage: str | None = None,
        *,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        _storage: Storage | None = None,
    ) -> None:
        self.storage_url = canonical_url(storage or default_storage_url())
        self.lease_ttl = lease_ttl
        self._on_close: list[Callable[[], None]] = []
        self._recovering: set[str] = set()
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
                self.storage = self._call(open_storage(self.storage_url))
            except BaseException:
                self._stop_loop()
                raise
        self.store = WorkflowStore(self.storage)

    @classmethod
    async def attach(cls, storage: str, *, lease_ttl: float = DEFAULT_LEASE_TTL) -> WorkflowRuntime:
        """A runtime that lives on the *running* event loop instead of a thread of its own.

        For hosts that already run a loop (a Serve replica): calls made on that loop reach
        storage and actors without a thread hop. Blocking methods then work only from other
        threads.
        """
        opened = await open_storage(canonical_url(storage))
        return cls(storage, lease_ttl=lease_ttl, _storage=opened)

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when this runtime closes (before its storage closes)."""
        self._on_close.append(callback)

    # ----------------------------------------------------------------- plumbing
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
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
            self._call(self.storage.close(), timeout=10)
        finally:
            self._stop_loop()

    # ----------------------------------------------------------------- starting
    def _prepare(
        self, wf: Workflow[Any], workflow_id: str | None, metadata: dict[str, Any] | None
    ) -> tuple[str, Batch, Lease]:
        """Validate and serialize everything before anything is stored."""
        if not isinstance(wf, Workflow):
            raise TypeError(f"expected a Workflow (the result of f.step(...)), got {type(wf).__name__}")
        wid = check_workflow_id(workflow_id) if workflow_id is not None else new_workflow_id()
        if metadata is not None and not isinstance(metadata, dict):
            raise ConfigError(f"workflow metadata must be a dict, got {type(metadata).__name__}")
        _codec.check_json(metadata or {}, what="workflow metadata")
        assigner = IdAssigner()
        specs = flatten(wf, assigner)
        batch = Batch().require(k_meta(wid), None)
        try:
            self.store.put_payload(batch, wid, k_dag(wid), {}, specs, f"workflow {wid!r}")
        except SerializationError:
            _raise_culprit(wid, specs)
            raise
        lease = Lease.new(self.lease_ttl)
        batch.put(k_counters(wid), _codec.json_dumps(assigner.counters))
        batch.put(k_lease(wid), lease.encode())
        now = time.time()
        meta = {
            "status": WorkflowStatus.RUNNING.value,
            "user_metadata": metadata or {},
            "start_time": now,
            "end_time": None,
            "error": None,
        }
        self.store.put_meta(batch, wid, meta)
        return wid, batch, lease

    def run(
        self, wf: Workflow[T], *, workflow_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> T:
        """Run ``wf`` in this process until it ends; see :meth:`Workflow.run`."""
        wid, batch, lease = self._prepare(wf, workflow_id, metadata)
        ensure_ray()
        return self._call(self._start(wid, batch, lease))

    async def _start(self, wid: str, batch: Batch, lease: Lease) -> Any:
        if await self.storage.commit(batch):
            specs, counters = await self.store.load_dag(wid)
            return await self._execute(wid, lease, specs, counters, fresh=True)
        return await self._resume(wid)

    def run_async(
        self, wf: Workflow[Any], *, workflow_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> Any:
        """Store ``wf`` and run it in a Ray task; return that task's ``ObjectRef``."""
        wid, batch, lease = self._prepare(wf, workflow_id, metadata)
        ensure_ray()
        created = self._call(self.storage.commit(batch))
        return _remote_resume().remote(
            self.storage_url, self.lease_ttl, wid, lease.encode() if created else None
        )

    # ----------------------------------------------------------------- resuming
    async def _execute(
        self, wid: str, lease: Lease, specs: list[StepSpec], counters: dict[str, int], fresh: bool
    ) -> Any:
        ex = Executor(self.store, wid, lease, self.lease_ttl, self.storage_url)
        await ex.load(specs, counters, fresh=fresh)
        return await ex.run()

    async def _through_blips(
        self, op: Callable[[], Coroutine[Any, Any, T]], what: str, within: float | None = None
    ) -> T:
        """A storage read on the way to running or waiting for a workflow, retried through an
        outage of up to ``lease_ttl`` seconds (or ``within``, if shorter): an outage that a
        running executor rides out must not end those that resume or wait for it either."""
        until = time.time() + (self.lease_ttl if within is None else min(self.lease_ttl, within))
        return await ride_out(op, lambda: until, what)

    async def _take_over(self, wid: str, expected_lease: bytes | None) -> Lease | None:
        """Become the workflow's runner if its lease is still ``expected_lease``."""
        meta, meta_raw, _ = await self._through_blips(lambda: self.store.read_head(wid), "a take-over")
        lease = Lease.new(self.lease_ttl)
        meta.update(status=WorkflowStatus.RUNNING.value, end_time=None, error=None)
        batch = Batch().require(k_lease(wid), expected_lease).require(k_meta(wid), meta_raw)
        batch.put(k_lease(wid), lease.encode())
        self.store.put_meta(batch, wid, meta)
        # The new lease is ours alone, so a take-over whose reply was lost is recognised as
        # ours (commit_fenced). Retry only while that lease, if it did apply, would be valid.
        deadline = lease.expires - lease_margin(self.lease_ttl)
        return lease if await commit_fenced(self.storage, batch, lambda: deadline, "a take-over") else None

    async def _resume(self, wid: str, handed_lease: bytes | None = None) -> Any:
        while True:
            meta, _, lease_raw = await self._through_blips(lambda: self.store.read_head(wid), "a resume")
            lease = Lease.decode(lease_raw)
            status = effective_status(meta, lease)
            if status is WorkflowStatus.SUCCESSFUL:
                return await self._through_blips(lambda: self.store.load_output(wid), "a resume")
            if status is WorkflowStatus.CANCELED:
                raise WorkflowCancelledError(wid)
            if status is WorkflowStatus.RUNNING and lease_raw != handed_lease:
                return await self._wait_output(wid, None)
            mine = await self._take_over(wid, lease_raw)
            if mine is not None:
                specs, counters = await self._through_blips(lambda: self.store.load_dag(wid), "a resume")
                return await self._execute(wid, mine, specs, counters, fresh=False)
            handed_lease = None

    def resume(self, workflow_id: str) -> Any:
        """Continue a RESUMABLE or FAILED workflow in this process and return its output.

        Finished steps are loaded, not re-run. A SUCCESSFUL workflow returns its output at once;
        one that is RUNNING elsewhere is waited for. Raises ``WorkflowNotFoundError`` for an
        unknown id and ``WorkflowCancelledError`` for a cancelled one.
        """
        wid = check_workflow_id(workflow_id)
        self._call(self.store.read_head(wid))
        ensure_ray()
        return self._call(self._resume(wid))

    def resume_async(self, workflow_id: str) -> Any:
        """Like :meth:`resume`, run in a Ray task; returns its ``ObjectRef``."""
        wid = check_workflow_id(workflow_id)
        self._call(self.store.read_head(wid))
        ensure_ray()
        return _remote_resume().remote(self.storage_url, self.lease_ttl, wid, None)

    def resume_all(self, include_failed: bool = False) -> list[tuple[str, Any]]:
        """Resume every RESUMABLE workflow (and FAILED ones if asked): ``[(id, ObjectRef)]``."""
        wanted = {WorkflowStatus.RESUMABLE} | ({WorkflowStatus.FAILED} if include_failed else set())
        return [(wid, self.resume_async(wid)) for wid, _ in self.list_all(wanted)]

    # ----------------------------------------------------------------- inspecting
    def get_status(self, workflow_id: str) -> WorkflowStatus:
        """The workflow's status; RUNNING whose runner is gone reads RESUMABLE."""
        return self._call(self.store.status(check_workflow_id(workflow_id)))

    async def _wait_output(self, wid: str, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            meta, _, lease_raw = await self._through_blips(lambda: self.store.read_head(wid), "a wait", left)
            status = effective_status(meta, Lease.decode(lease_raw))
            if status is WorkflowStatus.SUCCESSFUL:
                return await self._through_blips(lambda: self.store.load_output(wid), "a wait", left)
            if status is WorkflowStatus.FAILED:
                raise await self._through_blips(lambda: self.store.load_error(wid), "a wait", left)
            if status is WorkflowStatus.CANCELED:
                raise WorkflowCancelledError(wid)
            if status is WorkflowStatus.RESUMABLE:
                raise WorkflowNotResumableError(
                    wid, f"workflow {wid!r} stopped without finishing (its runner died); resume it first"
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise WorkflowTimeoutError(wid, f"workflow {wid!r} did not finish within {timeout} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    def get_output(self, workflow_id: str, *, timeout: float | None = None) -> Any:
        """The workflow's output, waiting while it runs.

        Raises the failing step's exception for a FAILED workflow, ``WorkflowCancelledError``,
        ``WorkflowNotResumableError`` for a RESUMABLE one, ``WorkflowTimeoutError`` on timeout.
        """
        return self._call(self._wait_output(check_workflow_id(workflow_id), timeout))

    async def _list_all(self, wanted: set[WorkflowStatus] | None) -> list[tuple[str, WorkflowStatus]]:
        out: list[tuple[str, WorkflowStatus]] = []
        after: str | None = None
        while True:
            keys = await self.storage.list_keys("wfs/", start_after=after, limit=1000)
            if not keys:
                return out
            after = keys[-1]
            values = await self.storage.get_many(keys)
            running = [k[4:] for k, v in zip(keys, values, strict=True) if v == b"RUNNING"]
            leases = dict(
                zip(running, await self.storage.get_many([k_lease(w) for w in running]), strict=True)
            )
            for key, value in zip(keys, values, strict=True):
                if value is None:
                    continue
                wid = key[4:]
                status = WorkflowStatus(value.decode())
                if status is WorkflowStatus.RUNNING:
                    lease = Lease.decode(leases.get(wid))
                    if lease is None or not lease.alive():
                        status = WorkflowStatus.RESUMABLE
                if wanted is None or status in wanted:
                    out.append((wid, status))

    def list_all(
        self, status_filter: str | WorkflowStatus | Iterable[str | WorkflowStatus] | None = None
    ) -> list[tuple[str, WorkflowStatus]]:
        """``[(workflow_id, status)]`` for every stored workflow, optionally filtered by status."""
        wanted: set[WorkflowStatus] | None
        if status_filter is None:
            wanted = None
        elif isinstance(status_filter, (str, WorkflowStatus)):
            wanted = {_as_status(status_filter)}
        else:
            wanted = {_as_status(s) for s in status_filter}
        return self._call(self._list_all(wanted))

    async def _get_metadata(self, wid: str, step: str | None) -> dict[str, Any]:
        meta, _, lease_raw = await self.store.read_head(wid)
        if step is None:
            return {
                "workflow_id": wid,
                "status": effective_status(meta, Lease.decode(lease_raw)).value,
                "user_metadata": meta.get("user_metadata") or {},
                "stats": {"start_time": meta.get("start_time"), "end_time": meta.get("end_time")},
                "error": meta.get("error"),
            }
        raw = await self.storage.get(k_step(wid, step))
        if raw is None:
            specs, _ = await self.store.load_dag(wid)
            known = {s.step_id: s for s in specs}
            if step not in known:
                raise WorkflowStepNotFoundError(wid, step)
            spec = known[step]
            return {
                "workflow_id": wid,
                "step_id": step,
                "name": spec.name,
                "status": "PENDING",
                "user_metadata": spec.options.metadata,
                "stats": {},
            }
        header = _codec.unpack(raw)[0]
        status = {"ok": "SUCCESSFUL", "cont": "SUCCESSFUL", "err": "FAILED"}[header["kind"]]
        return {
            "workflow_id": wid,
            "step_id": step,
            "name": header.get("name"),
            "status": status,
            "user_metadata": header.get("user_metadata") or {},
            "stats": {
                "start_time": header.get("start_time"),
                "end_time": header.get("end_time"),
                "attempts": header.get("attempts"),
            },
            "error": header.get("error"),
        }

    def get_metadata(self, workflow_id: str, name: str | None = None) -> dict[str, Any]:
        """Status, user metadata and start/end times of the workflow, or of one step by id."""
        return self._call(self._get_metadata(check_workflow_id(workflow_id), name))

    # ----------------------------------------------------------------- events and recovery
    async def _post_event(self, wid: str, key: str, payload: Any) -> bool:
        from actorflow._ids import check_id
        from actorflow.workflow._events import k_event

        check_id("event key", key)
        await self.store.read_head(wid)  # unknown workflow: WorkflowNotFoundError
        _codec.check_json(payload, what="an event payload")
        # The first event under a key wins; a repeat (a retried POST) changes nothing.
        return await self.storage.commit(
            Batch().require(k_event(wid, key), None).put(k_event(wid, key), _codec.json_dumps(payload))
        )

    def post_event(self, workflow_id: str, key: str, payload: Any) -> bool:
        """Store an event for ``wait_for_event(key)`` in a workflow, waiting or not yet.
        Returns False if an event with this key was already stored (it is kept)."""
        return self._call(self._post_event(check_workflow_id(workflow_id), key, payload))

    async def recover_once(self) -> list[str]:
        """Resume, in the background, every RESUMABLE workflow not already being resumed here."""
        from actorflow.workflow._raysupport import ensure_ray

        stale = [
            wid for wid, _ in await self._list_all({WorkflowStatus.RESUMABLE}) if wid not in self._recovering
        ]
        if stale:
            await asyncio.to_thread(ensure_ray)
        for wid in stale:
            self._recovering.add(wid)
            task = asyncio.ensure_future(self._resume(wid))
            task.add_done_callback(functools.partial(self._recovered, wid))
        return stale

    def _recovered(self, wid: str, task: asyncio.Future[Any]) -> None:
        self._recovering.discard(wid)
        if not task.cancelled() and task.exception() is not None:
            log.warning("recovering workflow %s failed: %r", wid, task.exception())

    def start_recovery(self, interval: float = 2.0) -> None:
        """Resume abandoned workflows automatically: every ``interval`` seconds, any workflow
        whose runner died (its lease expired, or its process is gone) is taken over here."""

        async def loop() -> None:
            while True:
                try:
                    await self.recover_once()
                except Exception:
                    pass
                await asyncio.sleep(interval)

        if self._recovery is None:
            self._recovery = asyncio.run_coroutine_threadsafe(loop(), self._loop)

    # ----------------------------------------------------------------- stopping
    async def _cancel(self, wid: str) -> None:
        while True:
            meta, meta_raw, _ = await self.store.read_head(wid)
            if meta["status"] in (WorkflowStatus.SUCCESSFUL.value, WorkflowStatus.CANCELED.value):
                return
            meta.update(status=WorkflowStatus.CANCELED.value, end_time=time.time())
            batch = Batch().require(k_meta(wid), meta_raw).delete(k_lease(wid))
            if await self.storage.commit(self.store.put_meta(batch, wid, meta)):
                return

    def cancel(self, workflow_id: str) -> None:
        """Stop a workflow for good. Its runner stops at its next checkpoint or heartbeat and
        in-flight steps are cancelled; stored checkpoints are kept. Finished workflows are left
        as they are. Idempotent."""
        self._call(self._cancel(check_workflow_id(workflow_id)))

    async def _delete(self, wid: str) -> None:
        meta, meta_raw, lease_raw = await self.store.read_head(wid)
        if effective_status(meta, Lease.decode(lease_raw)) is WorkflowStatus.RUNNING:
            raise WorkflowRunningError(wid, "delete")
        # Everything but the head goes first, so a crash half-way leaves a visible workflow
        # that can be deleted again, never a new workflow that inherits stale checkpoints.
        await self.storage.delete_prefix(f"wf/{wid}/s/")
        await self.storage.delete_prefix(f"wf/{wid}/o/")
        rest = Batch()
        for key in (k_dag(wid), k_counters(wid), k_out(wid), k_err(wid), k_lease(wid)):
            rest.delete(key)
        await self.storage.commit(rest)
        await self.storage.commit(
            Batch().require(k_meta(wid), meta_raw).delete(k_meta(wid)).delete(k_index(wid))
        )

    def delete(self, workflow_id: str) -> None:
        """Delete a workflow that is not running, with all its checkpoints."""
        self._call(self._delete(check_workflow_id(workflow_id)))


def _as_status(value: str | WorkflowStatus) -> WorkflowStatus:
    try:
        return WorkflowStatus(str(value).upper())
    except ValueError:
        raise ConfigError(
            f"unknown workflow status {value!r}; one of {[s.value for s in WorkflowStatus]}"
        ) from None


def _raise_culprit(wid: str, specs: list[StepSpec]) -> None:
    for s in specs:
        try:
            _codec.dumps((s.func, s.options), what="")
        except SerializationError as exc:
            raise SerializationError(
                f"cannot serialize step {s.step_id!r} of workflow {wid!r}: {exc}"
            ) from exc
        try:
            _codec.dumps((s.args, s.kwargs), what="")
        except SerializationError as exc:
            raise SerializationError(
                f"cannot serialize the arguments of step {s.step_id!r} of workflow {wid!r}: {exc}"
            ) from exc


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
    storage: str | None = None, *, lease_ttl: float | None = None, recovery: bool = False
) -> WorkflowRuntime:
    """Choose the default runtime's storage. Without ``storage``, keep the current one (or use
    ``ACTORFLOW_STORAGE``, else a SQLite file in the per-user data directory)."""
    global _default
    if storage is None and _default is not None and lease_ttl is None and not recovery:
        return _default
    url = storage or default_storage_url()
    rt = runtime_for(url, lease_ttl or DEFAULT_LEASE_TTL)
    if lease_ttl is not None:
        rt.lease_ttl = lease_ttl
    if recovery:
        rt.start_recovery()
    _default = rt
    return rt


def default_runtime() -> WorkflowRuntime:
    """The runtime behind the module-level functions, created with defaults on first use."""
    return _default if _default is not None else init()


_remote_fn: Any = None


def _remote_resume() -> Any:
    global _remote_fn
    if _remote_fn is None:
        import ray

        @ray.remote(num_cpus=0, max_retries=3)
        def actorflow_workflow(url: str, lease_ttl: float, wid: str, lease: bytes | None) -> Any:
            rt = runtime_for(url, lease_ttl)
            return rt._call(rt._resume(wid, lease))

        _remote_fn = actorflow_workflow
    return _remote_fn
