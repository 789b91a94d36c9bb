"""The HTTP API (DESIGN §5): JSON in, JSON out, versioned under ``/v1``.

Safety at the edge: only JSON bodies are read and nothing from the network is unpickled; a
configured token guards every route but ``/healthz`` and the static pages ``/docs`` and ``/ui``
with their files (compared in constant time; the data those pages show stays behind it); bodies
over the limit get 413 before they are read whole, and a body that does not arrive within
``body_timeout`` seconds gets 408 (a stalled client cannot hold a replica's slot); JSON is read
strictly (no NaN or infinities, valid Unicode, nested at most ``MAX_JSON_DEPTH`` deep) in bodies
and queries alike; only registered types and their public methods are callable; arguments are
checked against the method's signature (422); a result is encoded before its turn commits, so
one that cannot be sent commits nothing; a method that raises gives a JSON error with its type
and message, never a traceback. Error statuses are mapped from the error types in one place,
:data:`actorflow._wire.ERRORS`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from actorflow import _metrics, _wire, errors
from actorflow._ids import check_id
from actorflow.serve import openapi
from actorflow.serve.backend import Backend, bulk_request
from actorflow.serve.console import PUBLIC_PATHS as CONSOLE_PATHS
from actorflow.serve.console import console_router
from actorflow.serve.docs import PUBLIC_PATHS as DOCS_PATHS
from actorflow.serve.edge import ApiSettings, DirectCalls, EdgeMiddleware, TracingMiddleware
from actorflow.serve.requests import (
    ErrorMappingRoute,
    RouteCall,
    call_arguments,
    encode_result,
    error_body,
    error_response,
    idempotency_key,
    json_body,
    result_response,
    status_for,
    validation_response,
)
from actorflow.serve.requests import call_actor as answer_call

SESSION_HEADER = _wire.SESSION_HEADER

__all__ = ["ApiSettings", "create_api", "encode_result", "error_response", "status_for"]


def create_api(
    backend: Backend,
    settings: ApiSettings | None = None,
    call: RouteCall | None = None,
    *,
    direct_calls: bool = True,
) -> FastAPI:
    """The FastAPI app serving DESIGN §5 over ``backend``.

    ``call`` overrides how actor method calls are executed (the Serve deployment counts calls
    that came without the routing header); by default they go to ``backend``.
    ``direct_calls=False`` sends every call through FastAPI's routing (see
    :class:`~actorflow.serve.edge.DirectCalls`; the answers are the same either way).
    """
    settings = settings or ApiSettings()
    app = FastAPI(
        title="actorflow",
        version="1",
        description="Durable virtual actors and workflows. Errors are JSON: {error, message, ...}.",
        docs_url=None,  # served offline by actorflow.serve.docs instead (no CDN)
        redoc_url=None,  # FastAPI's ReDoc page loads its script from a CDN; /docs is the one page
        # The request's span is TracingMiddleware's: FastAPI's own is not current on the
        # direct-call path (so turns would not nest under it) and misses requests the edge refuses.
        telemetry={"tracing": False},
    )

    async def default_call(
        t: str, i: str, m: str, args: list[Any], kwargs: dict[str, Any], key: str | None, request: Request
    ) -> bytes:
        result: bytes = await backend.call(t, i, m, args, kwargs, key, encode=encode_result)
        return result

    run_call = call or default_call
    app.router.route_class = ErrorMappingRoute

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc)

    for router in (
        _ops_routes(backend),
        _actor_routes(backend, run_call),
        _timer_routes(backend),
        _event_routes(backend),
        _workflow_routes(backend),
        _bulk_routes(backend),
    ):
        app.include_router(router)
    openapi.install(app, token_required=bool(settings.token))
    app.include_router(console_router())  # the web console's static files; its data is the API's
    if direct_calls:
        app.add_middleware(DirectCalls, run_call=run_call)  # inside EdgeMiddleware: after its checks
    public = ("/healthz", *DOCS_PATHS, *CONSOLE_PATHS)
    app.add_middleware(EdgeMiddleware, settings=settings, public_paths=public)
    app.add_middleware(TracingMiddleware)  # outermost: refused requests are traced too
    return app


def _ops_routes(backend: Backend) -> APIRouter:
    """Liveness and metrics."""
    router = APIRouter(route_class=ErrorMappingRoute)

    @router.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """Liveness: answers without auth."""
        return {"status": "ok"}

    @router.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics() -> Response:
        """The service's metrics in the Prometheus text format: every process of the cluster,
        summed (see README, Metrics)."""
        return Response(await backend.metrics(), media_type=_metrics.content_type())

    return router


def _actor_routes(backend: Backend, run_call: RouteCall) -> APIRouter:
    """Creating, calling, describing, listing and deleting actors."""
    router = APIRouter(route_class=ErrorMappingRoute)

    @router.post("/v1/actors/{type_name}/{actor_id}", tags=["actors"], status_code=201)
    async def create_actor(type_name: str, actor_id: str, request: Request) -> Response:
        """Create the actor with ``__init__(*args, **kwargs)`` unless it exists (201 / 200)."""
        args, kwargs = call_arguments(await json_body(request, {}))
        created = await backend.create(type_name, actor_id, args, kwargs)
        return JSONResponse(
            {"type": type_name, "id": actor_id, "created": created}, status_code=201 if created else 200
        )

    @router.post("/v1/actors/{type_name}/{actor_id}/{method}", tags=["actors"])
    async def call_actor(type_name: str, actor_id: str, method: str, request: Request) -> Response:
        """Call a method. Body ``{"args": [...], "kwargs": {...}}`` (none: no arguments). An
        ``Idempotency-Key`` header makes a repeated request return the first response with no
        second effect."""
        return await answer_call(run_call, type_name, actor_id, method, request)

    @router.get("/v1/actors/{type_name}/{actor_id}", tags=["actors"])
    async def describe_actor(type_name: str, actor_id: str) -> dict[str, Any]:
        """The committed state (JSON when it is JSON-encodable, else null), version and times."""
        return await backend.describe(type_name, actor_id)

    @router.delete("/v1/actors/{type_name}/{actor_id}", tags=["actors"], status_code=204)
    async def delete_actor(type_name: str, actor_id: str) -> Response:
        """Delete the actor's state, idempotency records and pending messages (idempotent)."""
        await backend.delete(type_name, actor_id)
        return Response(status_code=204)

    @router.get("/v1/actors", tags=["actors"])
    async def list_types() -> dict[str, Any]:
        """The registered actor types by name, each with how many actors of it are stored
        (counted up to 10,000; ``more`` is true when there are more)."""
        return {"types": await backend.list_types()}

    @router.get("/v1/actors/{type_name}", tags=["actors"])
    async def list_actors(type_name: str, start_after: str | None = None, limit: int = 100) -> dict[str, Any]:
        """Actor ids of a type in byte order; pass ``next`` back as ``start_after`` for more."""
        if not 1 <= limit <= 1000:
            raise errors.BadRequestError("limit must be between 1 and 1000")
        ids = await backend.list_ids(type_name, start_after, limit)
        return {"ids": ids, "next": ids[-1] if len(ids) == limit else None}

    return router


def _timer_routes(backend: Backend) -> APIRouter:
    """An actor's durable timers, and the external clock's tick."""
    router = APIRouter(route_class=ErrorMappingRoute)

    @router.get("/v1/actors/{type_name}/{actor_id}/timers", tags=["timers"])
    async def list_timers(type_name: str, actor_id: str) -> dict[str, Any]:
        """The actor's durable timers, and the ticks that failed after all their retries."""
        return await backend.get_timers(type_name, actor_id)

    @router.put("/v1/actors/{type_name}/{actor_id}/timers/{name}", tags=["timers"])
    async def set_timer(type_name: str, actor_id: str, name: str, request: Request) -> dict[str, Any]:
        """Set or replace a timer: ``{"after": s | "at": epoch, "every": s, "method": m,
        "args": [...], "kwargs": {...}}``. It calls the method with the idempotency key
        ``timer:{name}:{setting}:{due}``."""
        spec = await json_body(request)
        if not isinstance(spec, dict):
            raise errors.BadRequestError("the body must be a JSON object describing the timer")
        return await backend.set_timer(type_name, actor_id, name, spec)

    @router.get("/v1/actors/{type_name}/{actor_id}/timers/{name}", tags=["timers"])
    async def get_timer(type_name: str, actor_id: str, name: str) -> dict[str, Any]:
        check_id("timer name", name)
        timers = (await backend.get_timers(type_name, actor_id))["timers"]
        if name not in timers:
            return JSONResponse(error_body("timer_not_found", f"no timer {name!r}"), status_code=404)  # type: ignore[return-value]
        return dict(timers[name])

    @router.delete("/v1/actors/{type_name}/{actor_id}/timers/{name}", tags=["timers"], status_code=204)
    async def cancel_timer(type_name: str, actor_id: str, name: str) -> Response:
        """Cancel a timer (idempotent)."""
        await backend.cancel_timer(type_name, actor_id, name)
        return Response(status_code=204)

    @router.post("/v1/timers/tick", tags=["timers"])
    async def tick() -> dict[str, int]:
        """Fire every timer due now (for deployments driven by an external clock)."""
        return await backend.tick()

    return router


def _event_routes(backend: Backend) -> APIRouter:
    """External events for actors."""
    router = APIRouter(route_class=ErrorMappingRoute)

    @router.post("/v1/actors/{type_name}/{actor_id}/events/{event}", tags=["events"], status_code=202)
    async def post_event(
        type_name: str, actor_id: str, event: str, request: Request, wait: bool = False
    ) -> Response:
        """Deliver an external event (any JSON payload) to the handler the type declares for
        it. Stored durably, then 202; with ``?wait=true``, 200 with the handler's result (or
        still 202 if it cannot run yet: the event stays accepted). An ``Idempotency-Key`` is
        the event id: an event posted twice with one id is handled once."""
        payload = await json_body(request)
        key = idempotency_key(request)
        handled, result = await backend.post_event(
            type_name, actor_id, event, payload, key, wait, encode=encode_result if wait else None
        )
        if handled:
            return result_response(result)
        return JSONResponse({"accepted": True, "event": event}, status_code=202)

    return router


def _workflow_routes(backend: Backend) -> APIRouter:
    """Workflows: listing, inspecting, events, resume and cancel."""
    router = APIRouter(route_class=ErrorMappingRoute)

    @router.post("/v1/workflows/{workflow_id}/events/{key}", tags=["workflows"], status_code=202)
    async def post_workflow_event(workflow_id: str, key: str, request: Request) -> Response:
        """An event for ``wait_for_event(key)`` in a workflow, buffered if nothing waits yet."""
        payload = await json_body(request)
        stored = await backend.post_workflow_event(workflow_id, key, payload)
        return JSONResponse({"accepted": True, "duplicate": not stored}, status_code=202)

    @router.get("/v1/workflows", tags=["workflows"])
    async def list_workflows(
        status: str | None = None, prefix: str = "", start_after: str | None = None, limit: int = 1000
    ) -> dict[str, Any]:
        """Stored workflows in id order, one bounded page at a time: the first ``limit`` ids
        after ``start_after`` whose ids start with ``prefix`` are looked at, and those with
        ``status`` (any, without it) listed. A page may hold fewer (even none) while ``next``
        is set: pass it back as ``start_after`` for the next page; null after the last."""
        if not 1 <= limit <= 1000:
            raise errors.BadRequestError("limit must be between 1 and 1000")
        rows, following = await backend.list_workflows(status, prefix, start_after, limit)
        return {"workflows": [{"id": wid, "status": s} for wid, s in rows], "next": following}

    @router.get("/v1/workflows/{workflow_id}", tags=["workflows"])
    async def get_workflow(workflow_id: str) -> dict[str, Any]:
        return await backend.workflow(workflow_id)

    @router.post("/v1/workflows/{workflow_id}/resume", tags=["workflows"], status_code=202)
    async def resume_workflow(workflow_id: str) -> dict[str, Any]:
        """Resume a RESUMABLE or FAILED workflow in the background; poll its status."""
        return {"id": workflow_id, "status": await backend.resume_workflow(workflow_id)}

    @router.post("/v1/workflows/{workflow_id}/cancel", tags=["workflows"])
    async def cancel_workflow(workflow_id: str) -> dict[str, Any]:
        await backend.cancel_workflow(workflow_id)
        return {"id": workflow_id, "status": "CANCELED"}

    @router.delete("/v1/workflows/{workflow_id}", tags=["workflows"], status_code=204)
    async def delete_workflow(workflow_id: str) -> Response:
        """Delete a workflow that is not running, with all its checkpoints (409 while it runs)."""
        await backend.delete_workflow(workflow_id)
        return Response(status_code=204)

    return router


def _bulk_routes(backend: Backend) -> APIRouter:
    """Bulk operations, one bounded page per request: the body's filters pick the items, at
    most ``limit`` ids are looked at, and ``next`` says where the next request starts. A bad
    filter is a 400 before anything is done; ``dry_run`` answers the same counts, changing
    nothing."""
    router = APIRouter(route_class=ErrorMappingRoute)

    @router.post("/v1/bulk/workflows/cancel", tags=["bulk"])
    async def bulk_cancel_workflows(request: Request) -> dict[str, Any]:
        """Cancel the workflows the filters select, as ``POST /v1/workflows/{id}/cancel`` does
        (a running one stops at its next step, wherever it runs); ended ones are skipped."""
        spec = bulk_request(await json_body(request, {}), workflows=True)
        return (await backend.bulk_workflows("cancel", spec)).public()

    @router.post("/v1/bulk/workflows/delete", tags=["bulk"])
    async def bulk_delete_workflows(request: Request) -> dict[str, Any]:
        """Delete the workflows the filters select, with their checkpoints; running ones are
        skipped."""
        spec = bulk_request(await json_body(request, {}), workflows=True)
        return (await backend.bulk_workflows("delete", spec)).public()

    @router.post("/v1/bulk/actors/{type_name}/delete", tags=["bulk"])
    async def bulk_delete_actors(type_name: str, request: Request) -> dict[str, Any]:
        """Delete the actors of a type whose ids start with ``prefix``, each as
        ``DELETE /v1/actors/{type}/{id}`` does."""
        spec = bulk_request(await json_body(request, {}), workflows=False)
        return (await backend.bulk_delete_actors(type_name, spec)).public()

    @router.post("/v1/bulk/actors/{type_name}/purge-failed-timers", tags=["bulk"])
    async def bulk_purge_failed_timers(type_name: str, request: Request) -> dict[str, Any]:
        """Delete the records of failed timer ticks (``failed_timers``) of the actors of a type
        whose ids start with ``prefix``; the timers stay. ``ids`` are ``{id}/{timer}``."""
        spec = bulk_request(await json_body(request, {}), workflows=False)
        return (await backend.purge_failed_timers(type_name, spec)).public()

    return router
