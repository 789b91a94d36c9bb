"""What the HTTP API calls into: actor calls, actor admin and workflow management.

:class:`LocalBackend` runs everything in this process on an embedded runtime pair (the
workflow runtime and its actor runtime). The Serve deployment wraps one per replica; tests
drive the HTTP layer with one directly, with no Ray and no sockets.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from actorflow import _metrics
from actorflow._aio import start_now
from actorflow._ids import check_actor_id, check_id, check_workflow_id
from actorflow.actor import ActorRuntime, actor_runtime, client_key, lookup, registered_types
from actorflow.engine import WorkflowRuntime, WorkflowStatus, as_status
from actorflow.errors import (
    ActorNotFoundError,
    BadRequestError,
    ConfigError,
    WorkflowNotFoundError,
    WorkflowRunningError,
)

T = TypeVar("T")
log = logging.getLogger("actorflow.http")

#: The most items one bulk request looks at, and how many when it does not say.
MAX_BULK_LIMIT = 1000
DEFAULT_BULK_LIMIT = 100
#: How many items of one bulk request are worked on at once.
BULK_CONCURRENCY = 16
#: The most actors of one type ``GET /v1/actors`` counts (one bounded listing per type).
COUNT_LIMIT = 10_000
#: Statuses a workflow can end in: a bulk cancel skips them.
_ENDED = frozenset({WorkflowStatus.SUCCESSFUL, WorkflowStatus.CANCELED})
_COMMON_FIELDS = frozenset({"prefix", "all", "dry_run", "limit", "start_after"})
_WORKFLOW_FIELDS = _COMMON_FIELDS | {"status", "older_than", "started_before"}


@dataclass(frozen=True)
class BulkRequest:
    """What one request of a bulk operation asks (see :func:`bulk_request`): which items (ids
    starting with ``prefix``; for workflows also a status in ``statuses`` and a current run
    started before ``started_before``), which page of them (the first ``limit`` ids after
    ``start_after``), and whether to act or only say what it would do (``dry_run``)."""

    prefix: str = ""
    statuses: frozenset[WorkflowStatus] | None = None
    started_before: float | None = None
    dry_run: bool = False
    limit: int = DEFAULT_BULK_LIMIT
    start_after: str | None = None


@dataclass
class BulkResult:
    """What one request of a bulk operation did (or, with ``dry_run``, would do): of the
    ``scanned`` ids looked at, ``matched`` fit the filters; ``affected`` of those were (would
    be) cancelled, deleted or purged, listed in ``ids``; ``skipped`` were left as they are
    (already ended, running, gone meanwhile). ``next`` is the ``start_after`` of the next
    request, None once the whole range has been looked at."""

    dry_run: bool
    scanned: int = 0
    matched: int = 0
    affected: int = 0
    skipped: int = 0
    ids: list[str] = field(default_factory=list)
    next: str | None = None

    def public(self) -> dict[str, Any]:
        """The JSON answer of the HTTP API."""
        return asdict(self)


def bulk_request(body: Any, *, workflows: bool, now: float | None = None) -> BulkRequest:
    """Read the JSON body of a bulk request; :class:`~actorflow.errors.BadRequestError` (or
    ``InvalidIdError``, both 400) for anything it does not allow, before anything is done.

    Fields: ``prefix`` (a non-empty id prefix), for workflows ``status`` (a status or a
    non-empty list of them), ``older_than`` (seconds, at least 0) or ``started_before`` (a Unix
    time); ``all: true`` to act with no filter at all (a body with none is refused, so that an
    empty body never means "everything"); ``dry_run``; ``limit`` (1 to
    :data:`MAX_BULK_LIMIT` ids looked at); ``start_after`` (the ``next`` of the last answer).
    """
    body = {} if body is None else body
    what = "workflow" if workflows else "actor"
    if not isinstance(body, dict):
        raise BadRequestError('the body must be a JSON object of filters, like {"prefix": "a-"}')
    unknown = set(body) - (_WORKFLOW_FIELDS if workflows else _COMMON_FIELDS)
    if unknown:
        raise BadRequestError(f"unknown fields {sorted(unknown)}")
    prefix = body.get("prefix")
    if prefix is not None:
        if prefix == "":
            raise BadRequestError(
                '"prefix" must not be empty; to act on every one, leave it out and say "all": true'
            )
        check_id(f"{what} id prefix", prefix)
    statuses = _statuses(body["status"]) if "status" in body else None
    older_than = _number(body, "older_than", least=0.0)
    started_before = _number(body, "started_before")
    if older_than is not None and started_before is not None:
        raise BadRequestError('give "older_than" or "started_before", not both')
    if older_than is not None:
        started_before = (time.time() if now is None else now) - older_than
    everything = _flag(body, "all")
    if prefix is None and statuses is None and started_before is None and not everything:
        filters = '"prefix", "status", "older_than" or "started_before"' if workflows else '"prefix"'
        raise BadRequestError(f'give a filter ({filters}), or "all": true to act on every {what}')
    limit = body.get("limit", DEFAULT_BULK_LIMIT)
    if type(limit) is not int or not 1 <= limit <= MAX_BULK_LIMIT:
        raise BadRequestError(f'"limit" must be an integer from 1 to {MAX_BULK_LIMIT}')
    start_after = body.get("start_after")
    if start_after is not None:
        check_id(f"{what} id (start_after)", start_after)
    return BulkRequest(prefix or "", statuses, started_before, _flag(body, "dry_run"), limit, start_after)


def _statuses(value: Any) -> frozenset[WorkflowStatus]:
    given = [value] if isinstance(value, str) else value
    if not isinstance(given, list) or not given or not all(isinstance(s, str) for s in given):
        raise BadRequestError('"status" must be a status or a non-empty list of them')
    try:
        return frozenset(as_status(s) for s in given)
    except ConfigError as exc:
        raise BadRequestError(str(exc)) from None


def _number(body: dict[str, Any], name: str, least: float | None = None) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequestError(
            f'"{name}" must be a number of seconds' if least is not None else f'"{name}" must be a Unix time'
        )
    if least is not None and value < least:
        raise BadRequestError(f'"{name}" must be at least {least:g}')
    return float(value)


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise BadRequestError(f'"{name}" must be true or false')
    return value


class Backend(Protocol):
    """The operations behind the HTTP API (all async)."""

    async def create(
        self, type_name: str, actor_id: str, args: list[Any], kwargs: dict[str, Any]
    ) -> bool: ...
    async def call(
        self,
        type_name: str,
        actor_id: str,
        method: str,
        args: list[Any],
        kwargs: dict[str, Any],
        idempotency_key: str | None,
        *,
        encode: Callable[[Any], Any] | None = None,
    ) -> Any: ...
    async def describe(self, type_name: str, actor_id: str) -> dict[str, Any]: ...
    async def delete(self, type_name: str, actor_id: str) -> None: ...
    async def list_ids(self, type_name: str, start_after: str | None, limit: int) -> list[str]: ...
    async def list_types(self) -> list[dict[str, Any]]: ...
    async def list_workflows(
        self, status: str | None, prefix: str, start_after: str | None, limit: int
    ) -> tuple[list[tuple[str, str]], str | None]: ...
    async def set_timer(
        self, type_name: str, actor_id: str, name: str, spec: dict[str, Any]
    ) -> dict[str, Any]: ...
    async def get_timers(self, type_name: str, actor_id: str) -> dict[str, Any]: ...
    async def cancel_timer(self, type_name: str, actor_id: str, name: str) -> bool: ...
    async def tick(self) -> dict[str, int]: ...
    async def post_event(
        self,
        type_name: str,
        actor_id: str,
        event: str,
        payload: Any,
        event_id: str | None,
        wait: bool,
        *,
        encode: Callable[[Any], Any] | None = None,
    ) -> tuple[bool, Any]: ...
    async def post_workflow_event(self, workflow_id: str, key: str, payload: Any) -> bool: ...
    async def workflow(self, workflow_id: str) -> dict[str, Any]: ...
    async def resume_workflow(self, workflow_id: str) -> str: ...
    async def cancel_workflow(self, workflow_id: str) -> None: ...
    async def delete_workflow(self, workflow_id: str) -> None: ...
    async def bulk_workflows(
        self, action: Literal["cancel", "delete"], request: BulkRequest
    ) -> BulkResult: ...
    async def bulk_delete_actors(self, type_name: str, request: BulkRequest) -> BulkResult: ...
    async def purge_failed_timers(self, type_name: str, request: BulkRequest) -> BulkResult: ...
    async def metrics(self) -> bytes: ...


def load_modules(modules: Iterable[str]) -> list[str]:
    """Import the modules that define actor types (registering them); return the type names."""

    for name in modules:
        importlib.import_module(name)
    return sorted(registered_types())


class LocalBackend:
    """The backend that runs calls on this process's runtimes."""

    def __init__(self, workflows: WorkflowRuntime, actors: ActorRuntime | None = None) -> None:
        self.workflows = workflows
        self.actors = actors or actor_runtime(workflows)
        self.engine = workflows.engine
        self._background: set[asyncio.Future[Any]] = set()

    async def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the runtime's loop. It finishes even if this caller is cancelled
        (a client that disconnects must not abort a commit that has started)."""
        if self.workflows.on_loop():
            return await asyncio.shield(start_now(coro))  # no task hop unless it suspends
        fut = asyncio.run_coroutine_threadsafe(coro, self.workflows.loop)
        return await asyncio.shield(asyncio.wrap_future(fut))

    async def create(self, type_name: str, actor_id: str, args: list[Any], kwargs: dict[str, Any]) -> bool:
        ac = lookup(type_name)
        check_actor_id(actor_id)
        ac.check_init_args(tuple(args), kwargs)
        created = await asyncio.to_thread(self.actors.create, ac, actor_id, tuple(args), kwargs)
        if created:
            _metrics.inc("actorflow_actors_created", (type_name,))
        return created

    async def call(
        self,
        type_name: str,
        actor_id: str,
        method: str,
        args: list[Any],
        kwargs: dict[str, Any],
        idempotency_key: str | None,
        *,
        encode: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Run one actor call here. ``encode`` (the HTTP edge's) turns the result into what is
        returned, before the turn commits (see ``ActorRuntime.call``)."""
        ac = lookup(type_name)
        check_actor_id(actor_id)
        key = client_key(idempotency_key)
        call = self.actors.call(ac, actor_id, method, tuple(args), kwargs, key, encode=encode)
        if self.workflows.on_loop():
            # No task of its own, as _run would give it: a turn protects its commit, its
            # messages and its sub-workflow from a caller that goes away (Turns.call).
            return await call
        return await self._run(call)

    async def describe(self, type_name: str, actor_id: str) -> dict[str, Any]:
        ac = lookup(type_name)
        check_actor_id(actor_id)
        snap = await self._run(self.actors.read(ac, actor_id))
        timers = await self.get_timers(type_name, actor_id)
        failed = await self._run(self.actors.outbox.failures_of(type_name, actor_id))
        pending = await self._run(self.actors.outbox.pending_of(type_name, actor_id))
        return {
            **timers,
            "pending_messages": pending,
            "failed_events": [f for f in failed if f.get("kind") == "event"],
            "failed_messages": [f for f in failed if f.get("kind") == "message"],
            "type": type_name,
            "id": actor_id,
            "version": snap.version,
            "schema": snap.schema,
            "encoding": snap.encoding,
            "state": snap.json_state(),
            "created_at": snap.created_at,
            "updated_at": snap.updated_at,
        }

    async def delete(self, type_name: str, actor_id: str) -> None:
        ac = lookup(type_name)
        check_actor_id(actor_id)
        await self._run(self.actors.lifecycle.delete(ac, actor_id))

    async def list_ids(self, type_name: str, start_after: str | None, limit: int) -> list[str]:
        lookup(type_name)
        return await asyncio.to_thread(self.actors.list_ids, type_name, start_after=start_after, limit=limit)

    async def list_types(self) -> list[dict[str, Any]]:
        """The registered actor types by name, each ``{type, count, more}``: how many actors of
        it are stored, counted up to :data:`COUNT_LIMIT` (``more``: there are more than that)."""

        async def count(type_name: str) -> dict[str, Any]:
            ids = await self.actors.lifecycle.ids(type_name, limit=COUNT_LIMIT + 1)
            return {"type": type_name, "count": min(len(ids), COUNT_LIMIT), "more": len(ids) > COUNT_LIMIT}

        return await self._run(_each(sorted(registered_types()), count))

    async def list_workflows(
        self, status: str | None, prefix: str, start_after: str | None, limit: int
    ) -> tuple[list[tuple[str, str]], str | None]:
        """One page of ``WorkflowEngine.scan``: ``([(id, status)], next)``."""
        wanted = None if status is None else {as_status(status)}
        if start_after is not None:
            check_workflow_id(start_after)
        page = await self._run(self.engine.scan(prefix, start_after=start_after, limit=limit, wanted=wanted))
        return [(wid, s.value) for wid, s in page.rows], page.next

    async def workflow(self, workflow_id: str) -> dict[str, Any]:
        """The workflow's metadata and its steps (``WorkflowEngine.steps``, each with ``deps``)."""
        wid = check_workflow_id(workflow_id)
        meta = await self._run(self.engine.metadata(wid, None))
        return {**meta, "steps": await self._run(self.engine.steps(wid))}

    async def resume_workflow(self, workflow_id: str) -> str:
        """Take a RESUMABLE or FAILED workflow over here and run it in the background; its
        status now (RUNNING once taken over: it reads so before this returns). Others are left
        as they are; a workflow a delete has begun on is not found."""
        wid = check_workflow_id(workflow_id)
        status = await self._run(self.engine.status(wid))
        if status.value not in ("RESUMABLE", "FAILED"):
            return status.value
        await asyncio.to_thread(self.engine.runner.ready)
        handed = await self._run(self.engine.take_over_for(wid))
        if handed is None:  # it changed meanwhile (another resume, a cancel)
            return (await self._run(self.engine.status(wid))).value
        # Runs here in the background; the caller polls GET /v1/workflows/{id}.
        task = asyncio.run_coroutine_threadsafe(self.engine.resume(wid, handed), self.workflows.loop)
        task.add_done_callback(functools.partial(_log_resume, wid))
        return "RUNNING"

    async def cancel_workflow(self, workflow_id: str) -> None:
        await self._run(self.engine.cancel(check_workflow_id(workflow_id)))

    async def delete_workflow(self, workflow_id: str) -> None:
        await self._run(self.engine.delete(check_workflow_id(workflow_id)))

    # ------------------------------------------------------------------ bulk operations
    async def bulk_workflows(self, action: Literal["cancel", "delete"], request: BulkRequest) -> BulkResult:
        """Cancel or delete one page of the workflows ``request`` selects, each through the
        same engine call as a single cancel or delete (a RUNNING workflow, wherever its runner
        is, is cancelled by fencing its lease). A workflow that already ended is skipped by a
        cancel, one that runs by a delete; a status filter is checked again as each commits."""
        page = await self._run(
            self.engine.scan(
                request.prefix,
                start_after=request.start_after,
                limit=request.limit,
                wanted=request.statuses,
                started_before=request.started_before,
            )
        )
        only = request.statuses

        async def one(row: tuple[str, WorkflowStatus]) -> bool:
            wid, status = row
            if request.dry_run:
                return status not in _ENDED if action == "cancel" else status is not WorkflowStatus.RUNNING
            try:
                if action == "cancel":
                    return await self.engine.cancel(wid, only)
                return await self.engine.delete(wid, only)
            except (WorkflowNotFoundError, WorkflowRunningError):  # gone, or running: skipped
                return False

        outcome = await self._run(_each(page.rows, one))
        wids = [wid for wid, _ in page.rows]
        return _result(request, page.scanned, wids, outcome, page.next)

    async def bulk_delete_actors(self, type_name: str, request: BulkRequest) -> BulkResult:
        """Delete one page of the actors of a type whose ids start with the prefix, each as
        ``DELETE /v1/actors/{type}/{id}`` does."""
        ac = lookup(type_name)
        lifecycle = self.actors.lifecycle
        ids = await self._run(
            lifecycle.ids(type_name, request.prefix, start_after=request.start_after, limit=request.limit)
        )

        async def one(actor_id: str) -> bool:
            return True if request.dry_run else await lifecycle.delete(ac, actor_id)

        outcome = await self._run(_each(ids, one))
        return _result(request, len(ids), ids, outcome, ids[-1] if len(ids) == request.limit else None)

    async def purge_failed_timers(self, type_name: str, request: BulkRequest) -> BulkResult:
        """Delete the failed-tick records (``failed_timers``) of one page of the actors of a
        type whose ids start with the prefix; their timers stay. ``ids`` are ``{id}/{timer}``."""
        lookup(type_name)
        ids = await self._run(
            self.actors.lifecycle.ids(
                type_name, request.prefix, start_after=request.start_after, limit=request.limit
            )
        )

        async def one(actor_id: str) -> list[str]:
            return await self.actors.scheduler.purge_failures(type_name, actor_id, dry_run=request.dry_run)

        names = await self._run(_each(ids, one))
        purged = [f"{actor_id}/{name}" for actor_id, found in zip(ids, names, strict=True) for name in found]
        after = ids[-1] if len(ids) == request.limit else None
        return BulkResult(request.dry_run, len(ids), len(purged), len(purged), 0, purged, after)

    async def set_timer(
        self, type_name: str, actor_id: str, name: str, spec: dict[str, Any]
    ) -> dict[str, Any]:
        from actorflow.errors import InvalidTimerError

        ac = lookup(type_name)
        check_actor_id(actor_id)
        unknown = set(spec) - {"after", "at", "every", "cron", "tz", "method", "args", "kwargs"}
        if unknown:
            raise InvalidTimerError(f"unknown timer fields {sorted(unknown)}")
        if "method" not in spec:
            raise InvalidTimerError("a timer needs the 'method' to call")
        timer = await self._run(self.actors.scheduler.set_timer(ac, actor_id, name, **spec))
        return timer.public()

    async def get_timers(self, type_name: str, actor_id: str) -> dict[str, Any]:
        ac = lookup(type_name)
        check_actor_id(actor_id)
        if not await self._run(self.actors.lifecycle.exists(ac, actor_id)):
            raise ActorNotFoundError(type_name, actor_id)
        timers = await self._run(self.actors.scheduler.timers_of(type_name, actor_id))
        failed = await self._run(self.actors.scheduler.timer_failures(type_name, actor_id))
        return {"timers": {n: t.public() for n, t in timers.items()}, "failed_timers": failed}

    async def cancel_timer(self, type_name: str, actor_id: str, name: str) -> bool:
        ac = lookup(type_name)
        check_actor_id(actor_id)
        check_id("timer name", name)
        return await self._run(self.actors.scheduler.cancel_timer(ac, actor_id, name))

    async def tick(self) -> dict[str, int]:
        return await self._run(self.actors.scheduler.fire_due())

    async def post_event(
        self,
        type_name: str,
        actor_id: str,
        event: str,
        payload: Any,
        event_id: str | None,
        wait: bool,
        *,
        encode: Callable[[Any], Any] | None = None,
    ) -> tuple[bool, Any]:
        """``(handled, result)``: see ``ActorRuntime.post_event``."""
        ac = lookup(type_name)
        check_actor_id(actor_id)
        return await self._run(
            self.actors.post_event(ac, actor_id, event, payload, event_id, wait, encode=encode)
        )

    async def post_workflow_event(self, workflow_id: str, key: str, payload: Any) -> bool:
        return await self._run(self.engine.post_event(check_workflow_id(workflow_id), key, payload))

    async def metrics(self) -> bytes:
        """The service's metrics in the Prometheus text format (see :mod:`actorflow._metrics`),
        with the outbox backlog and the due timers read from storage now."""
        backlog, due = await self._run(self.actors.backlog())
        gauges = {"actorflow_outbox_backlog": float(backlog), "actorflow_due_timers": float(due)}
        return await asyncio.to_thread(_metrics.exposition, gauges, registered_types())


async def _each(items: list[T], work: Callable[[T], Awaitable[Any]]) -> list[Any]:
    """``work`` of every item, :data:`BULK_CONCURRENCY` at a time, results in item order.
    Every item's work ends before this does; then the first error, if any, is raised."""
    lanes = asyncio.Semaphore(BULK_CONCURRENCY)

    async def one(item: T) -> Any:
        async with lanes:
            return await work(item)

    results = await asyncio.gather(*(one(item) for item in items), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def _result(
    request: BulkRequest, scanned: int, ids: list[str], done: list[Any], after: str | None
) -> BulkResult:
    affected = [i for i, ok in zip(ids, done, strict=True) if ok]
    return BulkResult(
        request.dry_run, scanned, len(ids), len(affected), len(ids) - len(affected), affected, after
    )


def _log_resume(wid: str, done: Any) -> None:
    """What a resume started by ``POST /v1/workflows/{id}/resume`` ended in, for the log (its
    caller is gone; the workflow's status says the same)."""
    if not done.cancelled() and done.exception() is not None:
        log.warning("resuming workflow %s failed: %r", wid, done.exception())
