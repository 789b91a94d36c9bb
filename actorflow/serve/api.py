"""The HTTP API (DESIGN §5): JSON in, JSON out, versioned under ``/v1``.

Safety at the edge: only JSON bodies are read and nothing from the network is unpickled; a
configured token guards every route but ``/healthz`` (compared in constant time); bodies over
the limit get 413 before they are read whole, and a body that does not arrive within
``body_timeout`` seconds gets 408 (a stalled client cannot hold a replica's slot); JSON is read
strictly (no NaN or infinities, valid Unicode, nested at most ``MAX_JSON_DEPTH`` deep) in bodies
and queries alike; only registered types and their public methods are callable; arguments are
checked against the method's signature (422); a result is encoded before its turn commits, so
one that cannot be sent commits nothing; a method that raises gives a JSON error with its type
and message, never a traceback. Error statuses are mapped from the error types in one place,
:func:`status_for`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from actorflow import errors
from actorflow._codec import strict_json_dumps, strict_json_loads
from actorflow._ids import check_id
from actorflow.actor._methods import is_method_error
from actorflow.client import ERROR_ATTRIBUTES
from deployments.backend import Backend

log = logging.getLogger("actorflow.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_BODY_TIMEOUT = 10.0
SESSION_HEADER = "x-session-id"


@dataclass(frozen=True)
class ApiSettings:
    """Settings of the HTTP layer. ``token``: bearer token required on every route but
    ``/healthz`` (``None``: no auth). ``max_body``: largest accepted request body in bytes.
    ``body_timeout``: seconds a request's whole body may take to arrive (then 408).
    ``replica``: a name for this server, sent back in the ``x-actorflow-replica`` header of
    every answer (to see where requests are routed)."""

    token: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    replica: str | None = None  # sent back as x-actorflow-replica: which replica answered


# One table from error type to (HTTP status, error code); the first match wins.
_STATUS: list[tuple[type[BaseException], int, str]] = [
    (errors.ActorTypeNotFoundError, 404, "unknown_actor_type"),
    (errors.ActorMethodNotFoundError, 404, "unknown_method"),
    (errors.ActorEventNotFoundError, 404, "unknown_event"),
    (errors.ActorNotFoundError, 404, "actor_not_found"),
    (errors.WorkflowNotFoundError, 404, "workflow_not_found"),
    (errors.ActorArgumentsError, 422, "invalid_arguments"),
    (errors.IdempotencyKeyReusedError, 422, "idempotency_key_reused"),
    (errors.IdempotencyWindowFullError, 429, "idempotency_window_full"),
    (errors.InvalidIdError, 400, "invalid_id"),
    (errors.BadRequestError, 400, "bad_request"),
    (errors.ConfigError, 400, "bad_request"),
    (errors.UnencodableResultError, 500, "unencodable_result"),
    (errors.SerializationError, 400, "unserializable"),
    (errors.ActorConflictError, 409, "conflict"),
    (errors.StorageConflictError, 409, "conflict"),
    (errors.WorkflowRunningError, 409, "workflow_running"),
    (errors.WorkflowCancelledError, 409, "workflow_cancelled"),
    (errors.WorkflowTimeoutError, 504, "timeout"),
    (errors.RemoteError, 502, "remote_error"),
    (errors.StorageUnavailableError, 503, "storage_unavailable"),
    (errors.ActorStateError, 500, "state_error"),
    (errors.ActorflowError, 500, "internal_error"),
]


def status_for(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and error code for an error. An exception an actor method raised is
    ``method_raised``, whatever its type (an actorflow error from a call the method made
    included); the table maps the errors actorflow raises itself; anything else is
    ``internal_error``. So the code says whether the method itself raised."""
    if is_method_error(exc):
        return 500, "method_raised"
    for kind, status, code in _STATUS:
        if isinstance(exc, kind):
            return status, code
    return 500, "internal_error"


def encode_result(result: Any) -> bytes:
    """A method's result as the JSON the API answers with (FastAPI's encoder, then strict JSON);
    :class:`~actorflow.errors.UnencodableResultError` when it has no such form. The runtime
    calls this before the turn commits."""
    try:
        return strict_json_dumps(jsonable_encoder(result))
    except Exception as exc:  # TypeError, ValueError, RecursionError for a cyclic one...
        raise errors.UnencodableResultError(
            f"the result ({type(result).__name__}) cannot be sent as JSON: {exc}"
        ) from None


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **extra}


def error_response(exc: BaseException) -> JSONResponse:
    status, code = status_for(exc)
    extra: dict[str, Any] = {"type": type(exc).__name__}
    if code == "method_raised":
        # The nearest built-in ancestor lets remote clients raise something catchable the
        # same way (InsufficientFunds(ValueError) is caught by ``except ValueError``).
        extra["builtin"] = next(c.__name__ for c in type(exc).__mro__ if c.__module__ == "builtins")
    for attr in ERROR_ATTRIBUTES:
        value = getattr(exc, attr, None)
        if isinstance(value, (str, int, float)):  # a method's exception may carry anything
            extra[attr] = value
    headers = None
    if isinstance(exc, errors.IdempotencyWindowFullError):
        headers = {"retry-after": str(int(exc.retry_after + 0.999))}
    if status >= 500 and code != "method_raised":
        log.error("request failed: %r", exc)
    return JSONResponse(error_body(code, str(exc), **extra), status_code=status, headers=headers)


class EdgeMiddleware:
    """Auth, body size and content type checks, before any route runs."""

    def __init__(self, app: ASGIApp, settings: ApiSettings) -> None:
        self.app = app
        self.settings = settings
        self._token = settings.token.encode() if settings.token else None
        self._replica = (b"x-actorflow-replica", settings.replica.encode()) if settings.replica else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._replica is not None:
            send = self._naming(send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if self._token is not None and path != "/healthz":
            given = headers.get("authorization", "")
            scheme, _, credential = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                credential.strip().encode(), self._token
            ):
                await _reply(
                    send,
                    401,
                    error_body("unauthorized", "missing or wrong bearer token"),
                    extra_headers=[(b"www-authenticate", b"Bearer")],
                )
                return
        limit = self.settings.max_body
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _reply(send, 413, error_body("body_too_large", f"request body over {limit} bytes"))
            return
        if scope.get("method") in ("POST", "PUT", "PATCH") and (length is None or length != "0"):
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype and ctype != "application/json":
                await _reply(
                    send, 415, error_body("unsupported_media_type", "request bodies must be application/json")
                )
                return
        received = 0
        complete = False
        deadline: float | None = None
        timeout = self.settings.body_timeout

        async def limited_receive() -> Message:
            nonlocal received, complete, deadline
            if complete:  # after the body only a disconnect can come: waiting for it is not bounded
                return await receive()
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + timeout
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _BodyTimeout() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge()
                complete = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _reply(send, 413, error_body("body_too_large", f"request body over {limit} bytes"))
        except _BodyTimeout:
            message = f"the request body did not arrive within {timeout} s"
            await _reply(send, 408, error_body("request_timeout", message))


    def _naming(self, send: Send) -> Send:
        """``send`` that adds the replica's name to the response's headers."""
        replica = self._replica

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), replica]}
            await send(message)

        return named


class _BodyTooLarge(BaseException):
    """Raised from ``receive`` when a streamed body passes the limit; a control-flow signal, so
    no handler on the way up mistakes it for an application error."""


class _BodyTimeout(BaseException):
    """Raised from ``receive`` when the body has not all arrived by its deadline."""


async def _reply(
    send: Send, status: int, body: dict[str, Any], extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": data})


def _has_body(request: Request) -> bool:
    """Whether the request carries a body (reading an absent one still costs Serve a round trip
    from the replica back to its proxy, so it is skipped)."""
    headers = request.headers
    return "transfer-encoding" in headers or headers.get("content-length", "0") != "0"


async def _json_body(request: Request, empty: Any = None) -> Any:
    """The request body as strict JSON; ``empty`` when there is none."""
    if not _has_body(request):
        return empty
    raw = await request.body()
    if not raw.strip():
        return empty
    return strict_json_loads(raw, what="the request body")


def _call_arguments(body: Any) -> tuple[list[Any], dict[str, Any]]:
    if not isinstance(body, dict):
        raise errors.BadRequestError('the body must be a JSON object like {"args": [...], "kwargs": {...}}')
    unknown = set(body) - {"args", "kwargs"}
    if unknown:
        raise errors.BadRequestError(f"unknown body fields {sorted(unknown)}; expected 'args' and 'kwargs'")
    args = body.get("args", [])
    kwargs = body.get("kwargs", {})
    if not isinstance(args, list):
        raise errors.BadRequestError("'args' must be a JSON array")
    if not isinstance(kwargs, dict):
        raise errors.BadRequestError("'kwargs' must be a JSON object")
    return args, kwargs


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= 256:
        raise errors.BadRequestError("Idempotency-Key must be 1 to 256 characters")
    return key


class _ErrorMappingRoute(APIRoute):
    """Routes whose errors become JSON responses through :func:`status_for`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def mapped(request: Request) -> Response:
            try:
                return await handler(request)
            except (RequestValidationError, HTTPException):
                raise
            except Exception as exc:
                return error_response(exc)

        return mapped


#: How a route runs an actor call: (type, id, method, args, kwargs, idempotency key, request) to
#: the result encoded by :func:`encode_result`.
RouteCall = Callable[[str, str, str, list[Any], dict[str, Any], str | None, Request], Awaitable[bytes]]


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
    ``direct_calls=False`` sends every call through FastAPI's routing (see :class:`_DirectCalls`;
    the answers are the same either way).
    """
    settings = settings or ApiSettings()
    app = FastAPI(
        title="actorflow",
        version="1",
        description="Durable virtual actors and workflows. Errors are JSON: {error, message, ...}.",
    )

    async def default_call(
        t: str, i: str, m: str, args: list[Any], kwargs: dict[str, Any], key: str | None, request: Request
    ) -> bytes:
        result: bytes = await backend.call(t, i, m, args, kwargs, key, encode=encode_result)
        return result

    run_call = call or default_call
    app.router.route_class = _ErrorMappingRoute

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """Liveness: answers without auth."""
        return {"status": "ok"}

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics() -> str:
        """Counters in the Prometheus text format."""
        return "".join(f"{name} {value}\n" for name, value in backend.metrics().items())

    @app.post("/v1/actors/{type_name}/{actor_id}", tags=["actors"], status_code=201)
    async def create_actor(type_name: str, actor_id: str, request: Request) -> Response:
        """Create the actor with ``__init__(*args, **kwargs)`` unless it exists (201 / 200)."""
        args, kwargs = _call_arguments(await _json_body(request, {}))
        created = await backend.create(type_name, actor_id, args, kwargs)
        return JSONResponse(
            {"type": type_name, "id": actor_id, "created": created}, status_code=201 if created else 200
        )

    @app.post("/v1/actors/{type_name}/{actor_id}/{method}", tags=["actors"])
    async def call_actor(type_name: str, actor_id: str, method: str, request: Request) -> Response:
        """Call a method. Body ``{"args": [...], "kwargs": {...}}`` (none: no arguments). An
        ``Idempotency-Key`` header makes a repeated request return the first response with no
        second effect."""
        return await _call_actor(run_call, type_name, actor_id, method, request)

    @app.get("/v1/actors/{type_name}/{actor_id}", tags=["actors"])
    async def describe_actor(type_name: str, actor_id: str) -> dict[str, Any]:
        """The committed state (JSON when it is JSON-encodable, else null), version and times."""
        return await backend.describe(type_name, actor_id)

    @app.delete("/v1/actors/{type_name}/{actor_id}", tags=["actors"], status_code=204)
    async def delete_actor(type_name: str, actor_id: str) -> Response:
        """Delete the actor's state, idempotency records and pending messages (idempotent)."""
        await backend.delete(type_name, actor_id)
        return Response(status_code=204)

    @app.get("/v1/actors/{type_name}", tags=["actors"])
    async def list_actors(type_name: str, start_after: str | None = None, limit: int = 100) -> dict[str, Any]:
        """Actor ids of a type in byte order; pass ``next`` back as ``start_after`` for more."""
        if not 1 <= limit <= 1000:
            raise errors.BadRequestError("limit must be between 1 and 1000")
        ids = await backend.list_ids(type_name, start_after, limit)
        return {"ids": ids, "next": ids[-1] if len(ids) == limit else None}

    @app.get("/v1/actors/{type_name}/{actor_id}/timers", tags=["timers"])
    async def list_timers(type_name: str, actor_id: str) -> dict[str, Any]:
        """The actor's durable timers, and the ticks that failed after all their retries."""
        return await backend.get_timers(type_name, actor_id)

    @app.put("/v1/actors/{type_name}/{actor_id}/timers/{name}", tags=["timers"])
    async def set_timer(type_name: str, actor_id: str, name: str, request: Request) -> dict[str, Any]:
        """Set or replace a timer: ``{"after": s | "at": epoch, "every": s, "method": m,
        "args": [...], "kwargs": {...}}``. It calls the method with the idempotency key
        ``timer:{name}:{due}``."""
        spec = await _json_body(request)
        if not isinstance(spec, dict):
            raise errors.BadRequestError("the body must be a JSON object describing the timer")
        return await backend.set_timer(type_name, actor_id, name, spec)

    @app.get("/v1/actors/{type_name}/{actor_id}/timers/{name}", tags=["timers"])
    async def get_timer(type_name: str, actor_id: str, name: str) -> dict[str, Any]:
        check_id("timer name", name)
        timers = (await backend.get_timers(type_name, actor_id))["timers"]
        if name not in timers:
            return JSONResponse(error_body("timer_not_found", f"no timer {name!r}"), status_code=404)  # type: ignore[return-value]
        return dict(timers[name])

    @app.delete("/v1/actors/{type_name}/{actor_id}/timers/{name}", tags=["timers"], status_code=204)
    async def cancel_timer(type_name: str, actor_id: str, name: str) -> Response:
        """Cancel a timer (idempotent)."""
        await backend.cancel_timer(type_name, actor_id, name)
        return Response(status_code=204)

    @app.post("/v1/timers/tick", tags=["timers"])
    async def tick() -> dict[str, int]:
        """Fire every timer due now (for deployments driven by an external clock)."""
        return await backend.tick()

    @app.post("/v1/actors/{type_name}/{actor_id}/events/{event}", tags=["events"], status_code=202)
    async def post_event(
        type_name: str, actor_id: str, event: str, request: Request, wait: bool = False
    ) -> Response:
        """Deliver an external event (any JSON payload) to the handler the type declares for
        it. Stored durably, then 202; with ``?wait=true``, 200 with the handler's result (or
        still 202 if it cannot run yet: the event stays accepted). An ``Idempotency-Key`` is
        the event id: an event posted twice with one id is handled once."""
        payload = await _json_body(request)
        key = _idempotency_key(request)
        handled, result = await backend.post_event(
            type_name, actor_id, event, payload, key, wait, encode=encode_result if wait else None
        )
        if handled:
            return _result_response(result)
        return JSONResponse({"accepted": True, "event": event}, status_code=202)

    @app.post("/v1/workflows/{workflow_id}/events/{key}", tags=["workflows"], status_code=202)
    async def post_workflow_event(workflow_id: str, key: str, request: Request) -> Response:
        """An event for ``wait_for_event(key)`` in a workflow, buffered if nothing waits yet."""
        payload = await _json_body(request)
        stored = await backend.post_workflow_event(workflow_id, key, payload)
        return JSONResponse({"accepted": True, "duplicate": not stored}, status_code=202)

    @app.get("/v1/workflows", tags=["workflows"])
    async def list_workflows(status: str | None = None) -> dict[str, Any]:
        rows = await backend.list_workflows(status)
        return {"workflows": [{"id": wid, "status": s} for wid, s in rows]}

    @app.get("/v1/workflows/{workflow_id}", tags=["workflows"])
    async def get_workflow(workflow_id: str) -> dict[str, Any]:
        return await backend.workflow(workflow_id)

    @app.post("/v1/workflows/{workflow_id}/resume", tags=["workflows"], status_code=202)
    async def resume_workflow(workflow_id: str) -> dict[str, Any]:
        """Resume a RESUMABLE or FAILED workflow in the background; poll its status."""
        return {"id": workflow_id, "status": await backend.resume_workflow(workflow_id)}

    @app.post("/v1/workflows/{workflow_id}/cancel", tags=["workflows"])
    async def cancel_workflow(workflow_id: str) -> dict[str, Any]:
        await backend.cancel_workflow(workflow_id)
        return {"id": workflow_id, "status": "CANCELED"}

    if direct_calls:
        app.add_middleware(_DirectCalls, run_call=run_call)  # inside EdgeMiddleware: after its checks
    app.add_middleware(EdgeMiddleware, settings=settings)
    return app


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(
        error_body(
            "invalid_request", "request parameters are invalid", details=jsonable_encoder(exc.errors())
        ),
        status_code=422,
    )


async def _call_actor(
    run_call: RouteCall,
    type_name: str,
    actor_id: str,
    method: str,
    request: Request,
) -> Response:
    """``POST /v1/actors/{type}/{id}/{method}``; errors are raised for the caller to map."""
    call_args, call_kwargs = _call_arguments(await _json_body(request, {}))
    key = _idempotency_key(request)
    encoded = await run_call(type_name, actor_id, method, call_args, call_kwargs, key, request)
    return _result_response(encoded)


def _result_response(encoded: bytes) -> Response:
    """``{"result": ...}`` around a result :func:`encode_result` made, as FastAPI would write it."""
    return Response(b'{"result":' + encoded + b"}", media_type="application/json")


class _DirectCalls:
    """Answers actor method calls without FastAPI's request handling.

    Matching a request to its route and binding its parameters costs FastAPI about as much as a
    call on a cached actor costs; for the one route every client call takes, that is a large
    share of the replica's time. A ``POST /v1/actors/{type}/{id}/{method}`` is answered here by
    the same :func:`_call_actor` the route runs, with the same error mapping, so responses are
    the same byte for byte. Everything else goes on to FastAPI.
    """

    def __init__(self, app: ASGIApp, run_call: RouteCall) -> None:
        self.app = app
        self.run_call = run_call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = self._target(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        if target is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        response: Response
        try:
            response = await _call_actor(self.run_call, *target, request)
        except StarletteHTTPException as exc:  # answered as FastAPI's handler would
            response = await http_exception_handler(request, exc)
        except RequestValidationError as exc:
            response = _validation_response(exc)
        except Exception as exc:
            response = error_response(exc)
        await response(scope, receive, send)

    @staticmethod
    def _target(scope: Scope) -> tuple[str, str, str] | None:
        """``(type, id, method)`` when the path is ``/v1/actors/{type}/{id}/{method}``, with
        the same rule as the route's (each part non-empty, no ``/``)."""
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root + "/"):
            path = path[len(root) :]
        parts = path.split("/")
        if len(parts) != 6 or parts[0] or parts[1] != "v1" or parts[2] != "actors" or not all(parts[3:]):
            return None
        return parts[3], parts[4], parts[5]
