"""The workflow engine's async core: start, run, resume, wait for, inspect and stop workflows
stored in one storage.

:class:`WorkflowEngine` does all of it on the event loop it is called on and never blocks; it
is what the actor layer and the HTTP edge call. :class:`~actorflow.engine.WorkflowRuntime` wraps
one with an event loop and blocking methods for ordinary Python code.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from actorflow import _codec
from actorflow._ids import check_id, check_workflow_id, new_workflow_id
from actorflow.engine._dag import IdAssigner, StepSpec, Workflow, check_metadata, flatten
from actorflow.engine._executor import Executor
from actorflow.engine._fencing import commit_fenced, lease_margin, ride_out
from actorflow.engine._runners import RayRunner, StepRunner
from actorflow.engine._store import (
    INDEX_PREFIX,
    Lease,
    WorkflowStatus,
    WorkflowStore,
    effective_status,
    event_prefix,
    k_counters,
    k_dag,
    k_err,
    k_event,
    k_index,
    k_lease,
    k_meta,
    k_out,
    k_step,
    object_prefix,
    step_prefix,
)
from actorflow.errors import (
    ConfigError,
    InvalidDefinitionError,
    SerializationError,
    WorkflowCancelledError,
    WorkflowNotFoundError,
    WorkflowNotResumableError,
    WorkflowRunningError,
    WorkflowStepNotFoundError,
    WorkflowTimeoutError,
)
from actorflow.storage import Batch, Storage

T = TypeVar("T")
log = logging.getLogger("actorflow.workflow")

DEFAULT_LEASE_TTL = 30.0


@dataclass(frozen=True)
class Prepared:
    """A workflow ready to be stored: its id, the batch that creates it, the runner's lease,
    and the graph that batch stores (so a run in this process need not read it back)."""

    wid: str
    batch: Batch
    lease: Lease
    specs: list[StepSpec]
    counters: dict[str, int]


class WorkflowEngine:
    """Workflows in one storage, on the calling event loop.

    ``lease_ttl`` is how long a runner may go silent before its workflow is considered
    abandoned (RESUMABLE); on the runner's own host a dead process is noticed at once.
    ``storage_url`` is what steps (Ray tasks, in other processes) open to reach the same storage.
    ``runner`` is where steps run (:class:`~actorflow.engine._runners.RayRunner` by default).
    """

    def __init__(
        self,
        storage: Storage,
        storage_url: str,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        runner: StepRunner | None = None,
    ) -> None:
        self.storage = storage
        self.storage_url = storage_url
        self.lease_ttl = lease_ttl
        self.runner: StepRunner = runner if runner is not None else RayRunner()
        self.store = WorkflowStore(storage)
        self._recovering: set[str] = set()
        #: The workflows running here now (their executors).
        self.executors: set[Executor] = set()

    def prepare(
        self,
        wf: Workflow[Any],
        workflow_id: str | None,
        metadata: dict[str, Any] | None,
        pending: bool = False,
        handed: bool = False,
    ) -> Prepared:
        """Validate and serialize a new workflow before anything is stored (no I/O): the batch
        that creates it, to commit alone (:meth:`start`) or with other writes (an actor's turn
        that launches it), and the runner's lease, valid once that batch commits. ``pending``:
        the batch stores it PENDING with no lease instead, for a queue to start it later (a
        :meth:`resume` takes it over then). ``handed``: the lease is for a runner in another
        process, which may outlive this one (:meth:`Lease.new`)."""
        if not isinstance(wf, Workflow):
            raise TypeError(f"expected a Workflow (the result of f.step(...)), got {type(wf).__name__}")
        wid = check_workflow_id(workflow_id) if workflow_id is not None else new_workflow_id()
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidDefinitionError(f"workflow metadata must be a dict, got {type(metadata).__name__}")
        check_metadata(metadata or {}, "workflow metadata")
        assigner = IdAssigner()
        specs = flatten(wf, assigner)
        batch = Batch().require(k_meta(wid), None)
        try:
            self.store.put_payload(batch, wid, k_dag(wid), {}, specs, f"workflow {wid!r}")
        except SerializationError:
            _raise_culprit(wid, specs)
            raise
        lease = Lease.new(self.lease_ttl, handed=handed)
        batch.put(k_counters(wid), _codec.json_dumps(assigner.counters))
        if not pending:
            batch.put(k_lease(wid), lease.encode())
        now = time.time()
        meta = {
            "status": (WorkflowStatus.PENDING if pending else WorkflowStatus.RUNNING).value,
            "user_metadata": metadata or {},
            "start_time": now,
            "end_time": None,
            "error": None,
        }
        self.store.put_meta(batch, wid, meta)
        return Prepared(wid, batch, lease, specs, dict(assigner.counters))

    async def start(self, prepared: Prepared) -> Any:
        """Store a prepared workflow and run it here to its end; return its output. A workflow
        with that id that exists already is resumed (or waited for) instead."""
        if await self.storage.commit(prepared.batch):
            return await self.execute(
                prepared.wid, prepared.lease, prepared.specs, prepared.counters, fresh=True
            )
        return await self.resume(prepared.wid)

    async def run_committed(self, wid: str, lease: Lease) -> Any:
        """Run a workflow whose creating batch has committed, holding ``lease``, to its end.
        A storage blip on the way only delays it: the workflow is stored and must start now."""
        deadline = lease.expires - lease_margin(self.lease_ttl)
        load = functools.partial(self.store.load_dag, wid)
        specs, counters = await ride_out(load, lambda: deadline, "starting a workflow")
        return await self.execute(wid, lease, specs, counters, fresh=True)

    async def execute(
        self, wid: str, lease: Lease, specs: list[StepSpec], counters: dict[str, int], fresh: bool
    ) -> Any:
        """Run the workflow's steps while holding ``lease``; its output, or the failing step's
        exception."""
        ex = Executor(self.store, wid, lease, self.lease_ttl, self.storage_url, self.runner)
        self.executors.add(ex)
        try:
            await ex.load(specs, counters, fresh=fresh)
            return await ex.run()
        finally:
            self.executors.discard(ex)

    async def _through_blips(
        self, op: Callable[[], Coroutine[Any, Any, T]], what: str, within: float | None = None
    ) -> T:
        """A storage read on the way to running or waiting for a workflow, retried through an
        outage of up to ``lease_ttl`` seconds (or ``within``, if shorter): an outage that a
        running executor rides out must not end those that resume or wait for it either."""
        until = time.time() + (self.lease_ttl if within is None else min(self.lease_ttl, within))
        return await ride_out(op, lambda: until, what)

    async def _take_over(self, wid: str, expected_lease: bytes | None, handed: bool = False) -> Lease | None:
        """Become the workflow's runner (or, ``handed``, take it for a runner elsewhere) if its
        lease is still ``expected_lease``."""
        meta, meta_raw, _ = await self._through_blips(lambda: self.store.read_head(wid), "a take-over")
        if meta.get("deleting"):  # a delete has begun: its checkpoints may be gone already
            raise WorkflowNotFoundError(wid)
        lease = Lease.new(self.lease_ttl, handed=handed)
        # Each run starts anew: a resumed workflow's start time is the resume's (as with Ray).
        meta.update(status=WorkflowStatus.RUNNING.value, start_time=time.time(), end_time=None, error=None)
        batch = Batch().require(k_lease(wid), expected_lease).require(k_meta(wid), meta_raw)
        batch.put(k_lease(wid), lease.encode())
        self.store.put_meta(batch, wid, meta)
        # The new lease is ours alone, so a take-over whose reply was lost is recognised as
        # ours (commit_fenced). Retry only while that lease, if it did apply, would be valid.
        deadline = lease.expires - lease_margin(self.lease_ttl)
        return lease if await commit_fenced(self.storage, batch, lambda: deadline, "a take-over") else None

    async def take_over_for(self, wid: str) -> bytes | None:
        """Take a stopped (RESUMABLE or FAILED) workflow over for a runner elsewhere, and return
        the lease to hand to it (``resume(wid, handed_lease=...)``); None when there is nothing
        to take over (it ended, or runs). The workflow reads RUNNING from here on; if the
        runner never starts, the lease lapses and it reads RESUMABLE again."""
        meta, _, lease_raw = await self._through_blips(lambda: self.store.read_head(wid), "a take-over")
        status = effective_status(meta, Lease.decode(lease_raw))
        if status not in (WorkflowStatus.RESUMABLE, WorkflowStatus.FAILED):
            return None
        mine = await self._take_over(wid, lease_raw, handed=True)
        return mine.encode() if mine is not None else None

    async def step_output(self, wid: str, step: str) -> Any:
        """The stored output of one step; ``WorkflowStepNotFoundError`` while it has none (or
        for a step of another workflow)."""
        raw = await self.storage.get(k_step(wid, step))
        if raw is None:
            await self.store.read_head(wid)  # WorkflowNotFoundError for an unknown workflow
            raise WorkflowStepNotFoundError(wid, step)
        header, value = await self.store.load_payload(wid, raw)
        if header.get("kind") == "err":
            raise WorkflowStepNotFoundError(wid, step)
        return value

    async def resume(self, wid: str, handed_lease: bytes | None = None) -> Any:
        """Continue the workflow here (taking its lease over if it is free or ``handed_lease``)
        and return its output; one that runs elsewhere is waited for."""
        while True:
            meta, _, lease_raw = await self._through_blips(lambda: self.store.read_head(wid), "a resume")
            lease = Lease.decode(lease_raw)
            status = effective_status(meta, lease)
            if status is WorkflowStatus.SUCCESSFUL:
                return await self._through_blips(lambda: self.store.load_output(wid), "a resume")
            if status is WorkflowStatus.CANCELED:
                raise WorkflowCancelledError(wid)
            if status is WorkflowStatus.RUNNING and lease_raw != handed_lease:
                return await self.wait(wid, None)
            mine = await self._take_over(wid, lease_raw)
            if mine is not None:
                specs, counters = await self._through_blips(lambda: self.store.load_dag(wid), "a resume")
                return await self.execute(wid, mine, specs, counters, fresh=False)
            handed_lease = None

    async def wait(self, wid: str, timeout: float | None) -> Any:
        """The workflow's output once it ends (see ``WorkflowRuntime.get_output``)."""
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

    async def status(self, wid: str) -> WorkflowStatus:
        """The workflow's status; RUNNING whose runner is gone reads RESUMABLE.
        Raises ``WorkflowNotFoundError`` for an unknown id."""
        return await self.store.status(wid)

    async def list_workflows(self, wanted: set[WorkflowStatus] | None) -> list[tuple[str, WorkflowStatus]]:
        """``[(workflow_id, status)]`` of every stored workflow whose status is in ``wanted``
        (all with ``None``); RUNNING ones whose runner is gone read RESUMABLE."""
        out: list[tuple[str, WorkflowStatus]] = []
        after: str | None = None
        while True:
            page = await self.scan("", start_after=after, limit=1000)
            out += [(wid, s) for wid, s in page.rows if wanted is None or s in wanted]
            if page.next is None:
                return out
            after = page.next

    async def scan(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        limit: int = 1000,
        wanted: Collection[WorkflowStatus] | None = None,
        started_before: float | None = None,
    ) -> ScanPage:
        """One bounded page of the stored workflows whose ids start with ``prefix``: the
        first ``limit`` ids after ``start_after`` (an id) in byte order are looked at (never
        more, however many are stored), and those whose status is in ``wanted`` (any, with
        ``None``) and, with ``started_before`` (a Unix time), whose current run started before
        it are returned with their status (RUNNING whose runner is gone reads RESUMABLE).
        ``next`` is the id to pass as ``start_after`` for the next page, None after the last.
        A snapshot, not a lock: a workflow may change right after it is read."""
        after = k_index(start_after) if start_after is not None else None
        keys = await self.storage.list_keys(k_index(prefix), start_after=after, limit=limit)
        values = await self.storage.get_many(keys)
        running = [k[len(INDEX_PREFIX) :] for k, v in zip(keys, values, strict=True) if v == b"RUNNING"]
        leases = dict(zip(running, await self.storage.get_many([k_lease(w) for w in running]), strict=True))
        rows: list[tuple[str, WorkflowStatus]] = []
        for key, value in zip(keys, values, strict=True):
            if value is None:  # deleted since it was listed
                continue
            wid = key[len(INDEX_PREFIX) :]
            status = WorkflowStatus(value.decode())
            if status is WorkflowStatus.RUNNING:
                lease = Lease.decode(leases.get(wid))
                if lease is None or not lease.alive():
                    status = WorkflowStatus.RESUMABLE
            if wanted is None or status in wanted:
                rows.append((wid, status))
        if started_before is not None and rows:
            metas = await self.storage.get_many([k_meta(wid) for wid, _ in rows])
            rows = [
                row
                for row, raw in zip(rows, metas, strict=True)
                if raw is not None and _started_before(raw, started_before)
            ]
        last = keys[-1][len(INDEX_PREFIX) :] if len(keys) == limit else None
        return ScanPage(rows, len(keys), last)

    async def list_ids(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> list[str]:
        """Ids of stored workflows that start with ``prefix``, in byte order, at most ``limit``
        of them after ``start_after`` (an id)."""
        after = k_index(start_after) if start_after is not None else None
        keys = await self.storage.list_keys(k_index(prefix), start_after=after, limit=limit)
        return [k[len(k_index("")) :] for k in keys]

    async def metadata(self, wid: str, step: str | None) -> dict[str, Any]:
        """What ``workflow.get_metadata`` answers, for the workflow or one of its steps."""
        meta, _, lease_raw = await self.store.read_head(wid)
        if step is None:
            return {
                "workflow_id": wid,
                "status": effective_status(meta, Lease.decode(lease_raw)).value,
                "user_metadata": meta.get("user_metadata") or {},
                # As Ray had it: no end time while it runs, nor for a cancelled one.
                "stats": {"start_time": meta.get("start_time")}
                | ({"end_time": meta["end_time"]} if meta.get("end_time") is not None else {}),
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

    async def steps(self, wid: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The workflow's steps as far as storage knows them, at most ``limit``: those planned
        when it started, in plan order, then any added as it ran (continuations, in id order).
        Each is ``{step_id, name, status, attempts, start_time, end_time, deps}``; a step with
        no stored result yet is PENDING (it may be running). ``deps``: the ids of the steps whose
        outputs it takes, from the graph stored when it started; None for a step added as it ran
        (a continuation's), whose edges that graph does not hold. Read, not locked: a running
        workflow can move on while this is read."""
        specs, _ = await self.store.load_dag(wid)
        planned = [s.step_id for s in specs]
        names = {s.step_id: s.name for s in specs}
        deps = {s.step_id: s.deps() for s in specs}
        known = set(planned)
        order = planned + sorted(await self.store.step_ids(wid) - known)
        order = order[:limit]
        raws = await self.storage.get_many([k_step(wid, sid) for sid in order])
        out = []
        for sid, raw in zip(order, raws, strict=True):
            header = _codec.unpack(raw)[0] if raw is not None else {}
            kind = header.get("kind")
            out.append(
                {
                    "step_id": sid,
                    "name": header.get("name") or names.get(sid),
                    "status": "PENDING" if kind is None else ("FAILED" if kind == "err" else "SUCCESSFUL"),
                    "attempts": header.get("attempts"),
                    "start_time": header.get("start_time"),
                    "end_time": header.get("end_time"),
                    "deps": deps.get(sid),
                }
            )
        return out

    async def post_event(self, wid: str, key: str, payload: Any) -> bool:
        """Store an event for ``wait_for_event(key)``; False if one was stored under that key."""
        check_id("event key", key)
        await self.store.read_head(wid)  # unknown workflow: WorkflowNotFoundError
        _codec.check_json(payload, what="an event payload")
        # The first event under a key wins; a repeat (a retried POST) changes nothing.
        return await self.storage.commit(
            Batch().require(k_event(wid, key), None).put(k_event(wid, key), _codec.json_dumps(payload))
        )

    async def recover_once(self) -> list[str]:
        """Resume, in the background, every RESUMABLE workflow not already being resumed here."""
        resumable = await self.list_workflows({WorkflowStatus.RESUMABLE})
        stale = [wid for wid, _ in resumable if wid not in self._recovering]
        if stale:
            await asyncio.to_thread(self.runner.ready)
        for wid in stale:
            self._recovering.add(wid)
            task = asyncio.ensure_future(self.resume(wid))
            task.add_done_callback(functools.partial(self._recovered, wid))
        return stale

    def _recovered(self, wid: str, task: asyncio.Future[Any]) -> None:
        self._recovering.discard(wid)
        if not task.cancelled() and task.exception() is not None:
            log.warning("recovering workflow %s failed: %r", wid, task.exception())

    async def cancel(self, wid: str, only: Collection[WorkflowStatus] | None = None) -> bool:
        """Mark the workflow CANCELED (unless it ended) and drop its lease; idempotent. Its
        runner, here or anywhere, stops at its next commit or heartbeat (fencing). Returns
        whether this call cancelled it (False: it had ended, or was cancelled already).

        ``only`` (a bulk cancel's status filter): cancel it only if its status (as
        :meth:`status` reads it) is one of these when the cancel commits; the commit then also
        requires the lease it read, so a take-over in between is noticed and looked at again.
        """
        while True:
            meta, meta_raw, lease_raw = await self.store.read_head(wid)
            if meta["status"] in (WorkflowStatus.SUCCESSFUL.value, WorkflowStatus.CANCELED.value):
                return False
            batch = Batch().require(k_meta(wid), meta_raw)
            if only is not None:
                if effective_status(meta, Lease.decode(lease_raw)) not in only:
                    return False
                batch.require(k_lease(wid), lease_raw)
            meta.update(status=WorkflowStatus.CANCELED.value, end_time=None)
            batch.delete(k_lease(wid))
            if await self.storage.commit(self.store.put_meta(batch, wid, meta)):
                return True

    async def delete(self, wid: str, only: Collection[WorkflowStatus] | None = None) -> bool:
        """Delete a workflow that is not running, with all its checkpoints
        (``WorkflowRunningError`` if it runs). ``only`` (a bulk delete's status filter):
        delete it only if its status is one of these (else False, nothing deleted). Returns
        whether its record went (False: it changed while its checkpoints were deleted; it is
        still listed, and can be deleted again).

        A resume racing the delete either takes the workflow over first (then the delete finds
        it RUNNING and refuses) or finds it marked as being deleted and treats it as gone: the
        head is marked before any checkpoint goes, by a commit that requires the head read and
        removes the lease, so a runner of a RESUMABLE workflow that is still alive (a paused
        process) cannot write a checkpoint into the sweep."""
        while True:
            meta, meta_raw, lease_raw = await self.store.read_head(wid)
            status = effective_status(meta, Lease.decode(lease_raw))
            if status is WorkflowStatus.RUNNING:
                raise WorkflowRunningError(wid, "delete")
            if meta.get("deleting"):  # a delete that stopped half-way: finish it
                break
            if only is not None and status not in only:
                return False
            marked = {**meta, "deleting": True}
            fence = self.store.put_meta(Batch().require(k_meta(wid), meta_raw), wid, marked)
            # The lease goes with the mark: a runner presumed dead may still be alive and hold
            # its bytes, and every write it makes requires them.
            fence.delete(k_lease(wid))
            if await self.storage.commit(fence):
                meta_raw = _codec.json_dumps(marked)  # the head as the fence left it
                break
        # Everything but the head goes first, so a crash half-way leaves a visible workflow
        # that can be deleted again (and that no resume takes over), never a new workflow that
        # inherits stale checkpoints.
        await self.storage.delete_prefix(step_prefix(wid))
        await self.storage.delete_prefix(object_prefix(wid))
        await self.storage.delete_prefix(event_prefix(wid))  # a new run under the id posts anew
        rest = Batch()
        for key in (k_dag(wid), k_counters(wid), k_out(wid), k_err(wid), k_lease(wid)):
            rest.delete(key)
        await self.storage.commit(rest)
        return await self.storage.commit(
            Batch().require(k_meta(wid), meta_raw).delete(k_meta(wid)).delete(k_index(wid))
        )


class ScanPage(NamedTuple):
    """One page of :meth:`WorkflowEngine.scan`: the matching ``(id, status)`` rows, how many
    ids were looked at, and where the next page starts (None: this was the last)."""

    rows: list[tuple[str, WorkflowStatus]]
    scanned: int
    next: str | None


def _started_before(meta_raw: bytes, cutoff: float) -> bool:
    start = _codec.json_loads(meta_raw).get("start_time")
    return isinstance(start, (int, float)) and start < cutoff


def as_status(value: str | WorkflowStatus) -> WorkflowStatus:
    try:
        return WorkflowStatus(str(value).upper())
    except ValueError:
        raise ConfigError(
            f"unknown workflow status {value!r}; one of {[s.value for s in WorkflowStatus]}"
        ) from None


def _raise_culprit(wid: str, specs: list[StepSpec]) -> None:
    """Name the step whose function or arguments cannot be serialized."""
    for s in specs:
        for part, what in (((s.func, s.options), "step"), ((s.args, s.kwargs), "the arguments of step")):
            try:
                _codec.dumps(part, what="")
            except SerializationError as exc:
                raise SerializationError(
                    f"cannot serialize {what} {s.step_id!r} of workflow {wid!r}: {exc}"
                ) from exc
