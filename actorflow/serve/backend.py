"""What the HTTP API calls into: actor calls, actor admin and workflow management.

:class:`LocalBackend` runs everything in this process on an embedded runtime pair (the
workflow runtime and its actor runtime). The Serve deployment wraps one per replica; tests
drive the HTTP layer with one directly, with no Ray and no sockets.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import importlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol, TypeVar

from actorflow._aio import start_now
from actorflow._ids import check_actor_id, check_id, check_workflow_id
from actorflow.actor import ActorRuntime, actor_runtime, client_key, lookup
from actorflow.engine import WorkflowRuntime, as_status
from actorflow.errors import ActorNotFoundError

T = TypeVar("T")
log = logging.getLogger("actorflow.http")


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
    async def list_workflows(self, status: str | None) -> list[tuple[str, str]]: ...
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
    def metrics(self) -> dict[str, float]: ...


def load_modules(modules: Iterable[str]) -> list[str]:
    """Import the modules that define actor types (registering them); return the type names."""
    from actorflow.actor import registered_types

    for name in modules:
        importlib.import_module(name)
    return sorted(registered_types())


class LocalBackend:
    """The backend that runs calls on this process's runtimes."""

    def __init__(self, workflows: WorkflowRuntime, actors: ActorRuntime | None = None) -> None:
        self.workflows = workflows
        self.actors = actors or actor_runtime(workflows)
        self.engine = workflows.engine
        self.counters: collections.Counter[str] = collections.Counter()
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
        self.counters["actors_created"] += int(created)
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
        self.counters["calls"] += 1
        try:
            key = client_key(idempotency_key)
            call = self.actors.call(ac, actor_id, method, tuple(args), kwargs, key, encode=encode)
            return await self._run(call)
        except Exception:
            self.counters["call_errors"] += 1
            raise

    async def describe(self, type_name: str, actor_id: str) -> dict[str, Any]:
        ac = lookup(type_name)
        check_actor_id(actor_id)
        snap = await self._run(self.actors.read(ac, actor_id))
        timers = await self.get_timers(type_name, actor_id)
        failed = await self._run(self.actors.outbox.failures_of(type_name, actor_id))
        return {
            **timers,
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

    async def list_workflows(self, status: str | None) -> list[tuple[str, str]]:
        wanted = None if status is None else {as_status(status)}
        rows = await self._run(self.engine.list_workflows(wanted))
        return [(wid, s.value) for wid, s in rows]

    async def workflow(self, workflow_id: str) -> dict[str, Any]:
        wid = check_workflow_id(workflow_id)
        meta = await self._run(self.engine.metadata(wid, None))
        return {**meta, "steps": await self._run(self.engine.steps(wid))}

    async def resume_workflow(self, workflow_id: str) -> str:
        wid = check_workflow_id(workflow_id)
        status = await self._run(self.engine.status(wid))
        if status.value in ("RESUMABLE", "FAILED"):
            await asyncio.to_thread(self.engine.runner.ready)
            # Runs here in the background; the caller polls GET /v1/workflows/{id}.
            task = asyncio.run_coroutine_threadsafe(self.engine.resume(wid), self.workflows.loop)
            task.add_done_callback(functools.partial(_log_resume, wid))
            return "RUNNING"
        return status.value

    async def cancel_workflow(self, workflow_id: str) -> None:
        await self._run(self.engine.cancel(check_workflow_id(workflow_id)))

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
        self.counters["events"] += 1
        return await self._run(
            self.actors.post_event(ac, actor_id, event, payload, event_id, wait, encode=encode)
        )

    async def post_workflow_event(self, workflow_id: str, key: str, payload: Any) -> bool:
        return await self._run(self.engine.post_event(check_workflow_id(workflow_id), key, payload))

    def metrics(self) -> dict[str, float]:
        return {
            "actorflow_calls_total": self.counters["calls"],
            "actorflow_call_errors_total": self.counters["call_errors"],
            "actorflow_unrouted_calls_total": self.counters["unrouted"],
            "actorflow_actors_created_total": self.counters["actors_created"],
            "actorflow_events_total": self.counters["events"],
            "actorflow_cached_actors": len(self.actors.cache),
        }


def _log_resume(wid: str, done: Any) -> None:
    """What a resume started by ``POST /v1/workflows/{id}/resume`` ended in, for the log (its
    caller is gone; the workflow's status says the same)."""
    if not done.cancelled() and done.exception() is not None:
        log.warning("resuming workflow %s failed: %r", wid, done.exception())
