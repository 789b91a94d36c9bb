"""Runs one workflow: submits ready steps as Ray tasks and checkpoints what they return.

The executor lives on the runtime's event loop. Steps whose inputs are ready are submitted at
once (a fan-out runs in parallel); completions are drained in groups and checkpointed in one
atomic commit per group, and only then are the steps that depend on them submitted. So:

* a step runs its function only after the outputs it consumes are durable. A step whose
  consumers take its output whole is told to commit its record itself, under the lease, and
  those consumers are submitted right behind it with its ``ObjectRef``; one that finds an
  input uncommitted runs nothing and is submitted again (see :mod:`._ahead`). So a chain
  moves at Ray's pace, without a round trip to the runner between two steps;
* at most :data:`MAX_IN_FLIGHT` steps are submitted at once, and an output is dropped from
  the driver's memory once every step that consumes it has been submitted, so a wide graph
  costs the driver a window of it, not all of it;
* a step whose output is stored never runs again (on resume it is loaded instead);
* every commit requires the runner's lease, so a cancelled or superseded runner stops writing;
* a storage blip (:class:`~actorflow.errors.StorageUnavailableError`) is ridden out: reads and
  commits are retried with backoff for as long as the lease could still be valid. Past that
  the runner gives up as if its lease were lost (it cancels its steps in flight, so that none
  runs in two places once another runner takes over).

A step that returns another workflow (a continuation) stores that sub-graph with its record;
its own output becomes the sub-graph's output.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from actorflow import _codec, _metrics, _tracing
from actorflow.engine._dag import IdAssigner, StepSpec, flatten
from actorflow.engine._fencing import LeaseLost, commit_fenced, lease_margin, ride_out
from actorflow.engine._holding import Held
from actorflow.engine._pipelining import RELEASED, Pipelining
from actorflow.engine._runners import RayRunner, StepRunner
from actorflow.engine._steps import StepContext, StepFailure, portable_exception
from actorflow.engine._store import (
    Lease,
    WorkflowStatus,
    WorkflowStore,
    k_counters,
    k_err,
    k_lease,
    k_out,
    k_step,
    step_header,
)
from actorflow.errors import StorageUnavailableError, WorkflowCancelledError, WorkflowError
from actorflow.storage import Batch

#: How a step's record kind reads as the ``outcome`` label of ``actorflow_workflow_steps``.
_OUTCOMES = {"ok": "ok", "cont": "continuation", "err": "error"}

log = logging.getLogger("actorflow.workflow")
T = TypeVar("T")

#: Steps an executor keeps submitted at once; the rest of a wide fan-out waits its turn, so
#: the driver (and Ray's bookkeeping of tasks it owns) holds a window of the graph, not all of it.
MAX_IN_FLIGHT = 1000


class Executor(Pipelining):
    """Executes one workflow while holding its lease."""

    def __init__(
        self,
        store: WorkflowStore,
        wid: str,
        lease: Lease,
        lease_ttl: float,
        storage_url: str,
        runner: StepRunner | None = None,
    ) -> None:
        self.storage_url = storage_url
        self.trace = _tracing.carrier()  # what started the run: its steps' spans are children
        self.runner: StepRunner = runner if runner is not None else RayRunner()
        # Steps may commit their own outputs when their tasks can reach this storage.
        self.ahead_ok = self.runner.ahead and not storage_url.startswith("memory:")
        self.waiting = False  # parked until a step completes (what actorflow.testing waits for)
        self.store = store
        self.storage = store.storage
        self.wid = wid
        self.lease = lease
        self.lease_bytes = lease.encode()
        self.lease_ttl = lease_ttl
        self._commit_lock = asyncio.Lock()
        self.specs: dict[str, StepSpec] = {}
        self.deps: dict[str, list[str]] = {}  # each step's StepSpec.deps(), computed once
        self.dependents: dict[str, list[str]] = {}
        # Consumers of each step's output not submitted yet: at 0 the driver lets the value go.
        self.readers: collections.Counter[str] = collections.Counter()
        self.cont_parents: dict[str, list[str]] = {}
        # The step whose continuation added each step (what catches its failure, see _catcher).
        self.owner: dict[str, str] = {}
        self.done: dict[str, Any] = {}
        self.active: set[str] = set()
        self.missing: dict[str, int] = {}
        self.ready: collections.deque[str] = collections.deque()
        self.in_flight: dict[str, Any] = {}
        self.assigner = IdAssigner()
        # Appended from Ray's callback threads, drained by the loop: a deque, whose append and
        # popleft are atomic, so nothing is lost between the two.
        self.completions: collections.deque[tuple[str, Any]] = collections.deque()
        self._init_pipelining()
        self.held = Held(self.runner.ahead, self.dependents, self.missing, self.active, self._awaited)
        self.wakeup = asyncio.Event()
        self.root = ""
        self._lost: LeaseLost | None = None  # set by the heartbeat when it could not renew

    # ----------------------------------------------------------------- graph bookkeeping
    def _add_specs(self, specs: list[StepSpec]) -> None:
        for s in specs:
            self.specs[s.step_id] = s
            self.deps[s.step_id] = deps = s.deps()
            for d in deps:
                self.dependents.setdefault(d, []).append(s.step_id)
                self.readers[d] += 1

    def _finish(self, sid: str, value: Any) -> None:
        stack = [(sid, value)]
        while stack:
            s, v = stack.pop()
            if s in self.done:
                continue
            if self._taken(s):
                v = RELEASED  # every consumer (submitted ahead) has already taken it
            self.done[s] = v
            self.active.discard(s)
            stack.extend((p, self._as_output_of(p, v)) for p in self.cont_parents.pop(s, ()))
            for dep in self.dependents.get(s, ()):
                if dep in self.active:
                    self.missing[dep] -= 1
                    if self.missing[dep] == 0:
                        self.ready.append(dep)

    def _taken(self, sid: str) -> bool:
        """Whether every consumer of ``sid``'s output has taken it, and nothing else needs it."""
        if sid not in self.dependents or self.readers[sid] > 0:
            return False
        return sid != self.root and sid not in self.cont_parents

    def _awaited(self, sid: str) -> bool:
        """Whether ``sid``'s output is the workflow's, or one a continuation's parent waits on."""
        return sid == self.root or sid in self.cont_parents

    def _as_output_of(self, parent: str, value: Any) -> Any:
        """A continuation's value as the output of the step that returned it: ``(value, None)``
        when that step catches exceptions, as its own value would have been."""
        return (value, None) if self.specs[parent].options.catch_exceptions else value

    def _owners(self, sid: str) -> Iterator[str]:
        """The steps whose continuations ``sid`` belongs to, innermost first."""
        parent = self.owner.get(sid)
        while parent is not None:
            yield parent
            parent = self.owner.get(parent)

    def _catcher(self, sid: str) -> str | None:
        """The nearest step that catches exceptions and whose continuation ``sid`` belongs to
        (directly or through continuations within it), if it has not ended yet."""
        for parent in self._owners(sid):
            if self.specs[parent].options.catch_exceptions:
                return None if parent in self.done else parent
        return None

    def _abandon(self, catcher: str) -> None:
        """Steps of ``catcher``'s continuation that are not needed any more (it caught a failure
        in it) are not started; those running finish and are ignored."""
        self.active -= {s for s in self.active if catcher in self._owners(s)}

    def _continue_with(self, parent: str, specs: list[StepSpec]) -> None:
        self._add_specs(specs)
        for s in specs:
            self.owner.setdefault(s.step_id, parent)
        sub_root = specs[-1].step_id
        self.cont_parents.setdefault(sub_root, []).append(parent)
        # It waits for its sub-graph and never runs again: not even when an input that it ran
        # on ahead (see _pipelining) is only finished now.
        self.missing[parent] = -1
        for s in specs:
            self._activate_iter(s.step_id)

    def _activate_iter(self, sid: str) -> None:
        stack = [sid]
        while stack:
            s = stack.pop()
            if s in self.active or s in self.done or s not in self.specs:
                continue
            self.active.add(s)
            pending = [d for d in self.deps[s] if d not in self.done]
            self.missing[s] = len(pending)
            if not pending:
                self.ready.append(s)
            stack.extend(pending)

    # ----------------------------------------------------------------- loading
    async def load(self, specs: list[StepSpec], counters: dict[str, int], fresh: bool) -> None:
        self.assigner = IdAssigner(counters)
        self._add_specs(specs)
        self.root = specs[-1].step_id
        if fresh:
            for s in specs:
                self._activate_iter(s.step_id)
            return
        # Before run(), so a storage outage past the lease's deadline raises as it is.
        existing = await ride_out(lambda: self.store.step_ids(self.wid), self._deadline, "loading steps")
        visited: set[str] = set()
        frontier = [self.root]
        pending: list[str] = []
        while frontier:
            frontier = [s for s in dict.fromkeys(frontier) if s not in visited]
            visited.update(frontier)
            with_record = [s for s in frontier if s in existing]
            read = functools.partial(self.storage.get_many, [k_step(self.wid, s) for s in with_record])
            raws = await ride_out(read, self._deadline, "loading steps")
            records = dict(zip(with_record, raws, strict=True))
            nxt: list[str] = []
            for sid in frontier:
                raw = records.get(sid)
                header: dict[str, Any] = _codec.unpack(raw)[0] if raw else {}
                kind = header.get("kind")
                if kind == "ok":
                    _, value = await self._load_payload(raw)  # type: ignore[arg-type]
                    self.done[sid] = value
                elif kind == "cont":
                    _, sub = await self._load_payload(raw)  # type: ignore[arg-type]
                    self._add_specs(sub)
                    for s in sub:
                        self.owner.setdefault(s.step_id, sid)
                    self.active.add(sid)  # waits for its sub-graph; never runs again
                    self.missing[sid] = -1
                    self.cont_parents.setdefault(sub[-1].step_id, []).append(sid)
                    nxt.append(sub[-1].step_id)
                else:
                    pending.append(sid)
                    nxt.extend(self.deps[sid])
            frontier = nxt
        # Resolve continuation parents whose sub-graph already finished, innermost first.
        for sub_root in list(self.cont_parents):
            if sub_root in self.done:
                self._finish_parents(sub_root)
        for sid in pending:
            self._activate_iter(sid)

    async def _load_payload(self, raw: bytes) -> tuple[dict[str, Any], Any]:
        return await ride_out(
            lambda: self.store.load_payload(self.wid, raw), self._deadline, "loading a checkpoint"
        )

    def _finish_parents(self, sub_root: str) -> None:
        value = self.done[sub_root]
        stack = [(p, self._as_output_of(p, value)) for p in self.cont_parents.pop(sub_root, ())]
        while stack:
            p, v = stack.pop()
            if p not in self.done:
                self.done[p] = v
            v = self.done[p]
            stack.extend((q, self._as_output_of(q, v)) for q in self.cont_parents.pop(p, ()))

    # ----------------------------------------------------------------- running
    def _deadline(self) -> float:
        """Until when storage may be retried: while the lease could still be valid (less the
        margin), no other runner can have taken over, so waiting for storage is safe."""
        return self.lease.expires - lease_margin(self.lease_ttl)

    async def _read(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        """A read during the run, through blips; ``LeaseLost`` once the lease could lapse."""
        try:
            return await ride_out(op, self._deadline, what)
        except StorageUnavailableError as exc:
            raise LeaseLost() from exc

    async def _send(self, batch: Batch, what: str) -> None:
        """Commit a batch that requires the lease (held under ``_commit_lock``, so the lease
        cannot change meanwhile), through blips. ``LeaseLost`` if it did not apply."""
        started = time.perf_counter()
        try:
            with _tracing.span("commit", attributes={"actorflow.component": "workflow"}):
                applied = await commit_fenced(self.storage, batch, self._deadline, what)
        except StorageUnavailableError as exc:
            raise LeaseLost() from exc
        _metrics.observe("actorflow_commit_duration_seconds", time.perf_counter() - started, ("workflow",))
        if not applied:
            raise LeaseLost()

    async def _commit(self, batch: Batch, what: str = "a checkpoint") -> None:
        async with self._commit_lock:
            await self._send(batch.require(k_lease(self.wid), self.lease_bytes), f"{what} of {self.wid}")

    async def _renew(self) -> None:
        """Extend the lease to ``lease_ttl`` from now. Raises ``LeaseLost`` if it is not ours.

        The renewed lease is fixed before the first attempt, so that after an attempt whose
        outcome is unknown :func:`commit_fenced` can recognise it in storage.
        """
        async with self._commit_lock:
            new = self.lease.renewed(self.lease_ttl)
            new_bytes = new.encode()
            renewal = Batch().require(k_lease(self.wid), self.lease_bytes).put(k_lease(self.wid), new_bytes)
            await self._send(renewal, f"the lease renewal of {self.wid}")
            self.lease, self.lease_bytes = new, new_bytes

    async def _heartbeat(self) -> None:
        """Renew the lease every third of its ttl. When it cannot, flag the run as lost."""
        interval = max(0.05, self.lease_ttl / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._renew()
                continue
            except LeaseLost as lost:
                self._lost = lost
            except Exception as exc:
                # Not a blip (those are ridden out): unrenewed, the lease would lapse while our
                # steps still run, and another runner would run them again. Stop instead.
                self._lost = LeaseLost()
                self._lost.__cause__ = exc
            self.wakeup.set()
            return

    def _submit_ready(self) -> None:
        """Submit ready steps, and steps that may go ahead of their inputs, up to
        :data:`MAX_IN_FLIGHT` in flight; the rest stay queued. Then watch the completion of
        each step submitted, unless steps ahead of it will tell (see ``_pipelining``)."""
        ready = self.ready
        while ready and len(self.in_flight) < MAX_IN_FLIGHT:
            sid = ready.popleft()
            if sid in self.in_flight or sid in self.done or sid not in self.active:
                continue
            if self.missing[sid] == 0:
                self._submit(sid)
            elif self._may_go_ahead(sid):
                self._submit(sid, ahead=True)
        self._watch_submitted()

    def _submit(self, sid: str, ahead: bool = False) -> None:
        spec = self.specs[sid]
        args, kwargs, positions, upstream = self._arguments(spec)
        ctx = StepContext(self.storage_url, self.wid, sid, trace=self.trace)
        commits = self._commits_itself(sid)
        extra = None
        if commits or positions:
            lease = self.lease_bytes if commits else None
            extra = (lease, spec.name, spec.options.metadata, tuple(positions))
        self.in_flight[sid] = self.runner.submit(spec.func, spec.options, args, kwargs, ctx, extra)
        self.submitted.append(sid)
        if upstream:
            self.upstream_of[sid] = upstream
        if ahead:
            self.ahead.add(sid)  # its inputs are released once it has run on them
        else:
            self._release_inputs(sid)
        if commits:
            self.committing.add(sid)
            self.ready.extend(self.dependents[sid])  # candidates to go right behind it

    def _release_inputs(self, sid: str) -> None:
        """Once the last consumer of an output has been submitted (with the value in its
        arguments), the driver keeps no copy: the output is in storage, where a resume reads it.
        The root's output, and a sub-graph's whose continuation parents wait on it, stay."""
        for d in self.deps[sid]:
            self.readers[d] -= 1
            if self.readers[d] <= 0 and d != self.root and d not in self.cont_parents:
                del self.readers[d]
                if self.done.get(d, RELEASED) is not RELEASED:
                    self.done[d] = RELEASED

    async def run(self) -> Any:
        """Execute to the end; return the output or raise the failing step's exception."""
        hb = asyncio.ensure_future(self._heartbeat())
        try:
            try:
                return await self._run()
            except LeaseLost as exc:
                lost = exc
            # Outside the except clause: the error raised for it does not chain to LeaseLost
            # (which may itself be caused by that very error).
            await self._on_lease_lost(lost)
            raise AssertionError("unreachable")
        finally:
            hb.cancel()
            with contextlib.suppress(BaseException):
                await hb

    async def _on_lease_lost(self, lost: LeaseLost) -> None:
        for running in self.in_flight.values():
            running.cancel()
        if lost.__cause__ is not None:
            # We gave up (storage unreachable for too long, or failing): nobody has taken over
            # yet. The lease lapses by itself and the workflow then reads RESUMABLE.
            raise lost.__cause__
        # Only to tell a cancel from a take-over; ride out a blip as long as a lease lasts.
        until = time.time() + self.lease_ttl
        meta, _, _ = await ride_out(
            lambda: self.store.read_head(self.wid), lambda: until, "reading the status"
        )
        if meta["status"] == WorkflowStatus.CANCELED.value:
            raise WorkflowCancelledError(self.wid)
        raise WorkflowError(self.wid, f"workflow {self.wid!r} is now run by another process")

    async def _run(self) -> Any:
        failure: tuple[str, BaseException, str] | None = None
        while self.root not in self.done:
            if failure is None:
                self._submit_ready()
            else:
                self.ready.clear()
            if not self.in_flight and not self.held.finished:
                if failure is not None:
                    break
                raise WorkflowError(self.wid, f"workflow {self.wid!r} has no runnable step (internal error)")
            self.waiting = not self.completions
            await self._wait()
            self.waiting = False
            self.wakeup.clear()
            if self._lost is not None:
                raise self._lost
            items = [self.completions.popleft() for _ in range(len(self.completions))]
            finished: list[tuple[str, Any]] = []
            continued: list[tuple[str, list[StepSpec]]] = []
            for sid, fut in items:
                self.in_flight.pop(sid, None)
                if sid in self.committing:
                    self.committing.discard(sid)
                    fut = await self._stored_if_died(sid, fut)
                if sid in self.upstream_of and self._skipped(sid, fut):
                    continue
                # It ran: never submitted again, not even when an input it ran on ahead is
                # finished only now (by _skipped, just above) while its own record is held.
                self.missing[sid] = -1
                failed = self._record(sid, fut, self.held.batch, finished, continued)
                if failed is not None and failure is None:
                    failure = failed
            if self.held.keep(finished, urgent=bool(continued) or failure is not None or not self.in_flight):
                continue
            batch, finished = self.held.take()
            if batch:
                await self._commit(batch)
            for sid, out in finished:
                self._finish(sid, out)
            for sid, sub in continued:
                self._continue_with(sid, sub)
        if failure is not None and self.root not in self.done:
            await self._fail(*failure)
        return await self._succeed()

    async def _stored_if_died(self, sid: str, fut: Any) -> Any:
        """For a step whose task was to commit its own record: if the task died (its worker
        crashed and Ray ran out of retries) after its record was committed, that record, as
        the completion to handle; a checkpoint is never replaced by a failure."""
        try:
            fut.result()
            return fut
        except BaseException:
            pass
        stored = await self._read(lambda: self.store.ok_outcome(self.wid, sid), "reading a checkpoint")
        if stored is None:
            return fut
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        done.set_result((*stored, True, ()))  # committed (by the task), no steps behind it
        return done

    async def _wait(self) -> None:
        """Until a completion (or a lost lease) wakes the loop, or the held records are due."""
        due = self.held.due()
        if due is None:
            await self.wakeup.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), max(0.0, due - time.monotonic()))

    def _record(
        self,
        sid: str,
        fut: Any,
        batch: Batch,
        finished: list[tuple[str, Any]],
        continued: list[tuple[str, list[StepSpec]]],
    ) -> tuple[str, BaseException, str] | None:
        """Add one completed step's record to ``batch`` (and its output to ``finished``, or its
        continuation to ``continued``); the failure it is, unless a catching step caught it."""
        spec = self.specs[sid]
        try:
            kind, out, start, end, attempts, tb, committed, _ = fut.result()
        except BaseException as exc:  # the task itself died (worker crash, cancel)
            kind, out, attempts, tb, committed = "err", portable_exception(exc), 1, "", False
            start = end = time.time()
        _metrics.inc("actorflow_workflow_steps", (_OUTCOMES.get(kind, kind),))
        if attempts > 1:
            _metrics.inc("actorflow_workflow_step_retries", (), attempts - 1)
        header = step_header(kind, spec.name, start, end, attempts, spec.options.metadata)
        what = f"the output of step {sid!r} of workflow {self.wid!r}"
        try:
            if kind == "ok":
                if spec.options.checkpoint and not committed:  # else its task committed it
                    self.store.put_payload(batch, self.wid, k_step(self.wid, sid), header, out, what)
                finished.append((sid, out))
            elif kind == "cont":
                sub = flatten(out, self.assigner)
                self.store.put_payload(batch, self.wid, k_step(self.wid, sid), header, sub, what)
                batch.put(k_counters(self.wid), _codec.json_dumps(self.assigner.counters))
                continued.append((sid, sub))
            else:
                log.warning("step %s of workflow %s failed:\n%s", sid, self.wid, tb or out)
                batch.put(k_step(self.wid, sid), _codec.pack({**header, "error": repr(out)}))
                catcher = self._catcher(sid)
                if catcher is not None:  # a step that catches exceptions returned this work
                    caught = (None, out)
                    spec_c = self.specs[catcher]
                    kept = {
                        **header,
                        "kind": "ok",
                        "name": spec_c.name,
                        "user_metadata": spec_c.options.metadata,
                    }
                    key = k_step(self.wid, catcher)
                    self.store.put_payload(batch, self.wid, key, kept, caught, what)
                    self._abandon(catcher)
                    finished.append((catcher, caught))
                elif sid in self.active:
                    return (sid, out, tb)
        except Exception as exc:  # output that cannot be stored fails the step
            batch.put(k_step(self.wid, sid), _codec.pack({**header, "kind": "err", "error": repr(exc)}))
            return (sid, exc, "")
        return None

    async def _succeed(self) -> Any:
        value = self.done[self.root]
        meta, _, _ = await self._read(lambda: self.store.read_head(self.wid), "reading the status")
        meta.update(status=WorkflowStatus.SUCCESSFUL.value, end_time=time.time(), error=None)
        batch = Batch()
        self.store.put_meta(batch, self.wid, meta)
        self.store.put_payload(
            batch, self.wid, k_out(self.wid), {}, value, f"the output of workflow {self.wid!r}"
        )
        await self._commit(batch.delete(k_lease(self.wid)), "the final commit")
        return value

    async def _fail(self, sid: str, exc: BaseException, tb: str) -> None:
        meta, _, _ = await self._read(lambda: self.store.read_head(self.wid), "reading the status")
        meta.update(
            status=WorkflowStatus.FAILED.value,
            end_time=time.time(),
            error={"step": sid, "type": type(exc).__name__, "message": str(exc)},
        )
        batch = Batch()
        self.store.put_meta(batch, self.wid, meta)
        try:
            self.store.put_payload(batch, self.wid, k_err(self.wid), {}, exc, "the error")
        except Exception:
            exc = StepFailure(type(exc).__name__, str(exc))
            self.store.put_payload(batch, self.wid, k_err(self.wid), {}, exc, "the error")
        await self._commit(batch.delete(k_lease(self.wid)), "the final commit")
        raise exc


__all__ = ["MAX_IN_FLIGHT", "RELEASED", "Executor"]
