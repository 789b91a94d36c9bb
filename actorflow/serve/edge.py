"""What runs before any route of the HTTP API: the bearer token, the body's size, type and
arrival deadline, the replica's name on every answer (:class:`EdgeMiddleware`), and the fast
path that answers actor calls without FastAPI's routing (:class:`DirectCalls`)."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from actorflow import _tracing, _wire
from actorflow._aio import within
from actorflow.serve.requests import RouteCall, call_actor, error_body, error_response, validation_response
from actorflow.serve.settings import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


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


class EdgeMiddleware:
    """Auth, body size and content type checks, before any route runs. ``public_paths``
    answer without the token (``/healthz``; the API adds its static ``/docs`` page)."""

    def __init__(
        self, app: ASGIApp, settings: ApiSettings, public_paths: Iterable[str] = ("/healthz",)
    ) -> None:
        self.app = app
        self.settings = settings
        self.public_paths = frozenset(public_paths)
        self._token = settings.token.encode() if settings.token else None
        replica = settings.replica
        self._replica = (_wire.REPLICA_HEADER.encode(), replica.encode()) if replica else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._replica is not None:
            send = self._naming(send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self._token is not None and app_path(scope) not in self.public_paths:
            given = headers.get("authorization", "")
            scheme, _, credential = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                credential.strip().encode(), self._token
            ):
                await reply(
                    send,
                    401,
                    error_body("unauthorized", "missing or wrong bearer token"),
                    extra_headers=[(b"www-authenticate", b"Bearer")],
                )
                return
        limit = self.settings.max_body
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await reply(send, 413, error_body("body_too_large", f"request body over {limit} bytes"))
            return
        if scope.get("method") in ("POST", "PUT", "PATCH") and (length is None or length != "0"):
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype and ctype != "application/json":
                await reply(
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
                message: Message = await within(receive(), deadline)
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
            await reply(send, 413, error_body("body_too_large", f"request body over {limit} bytes"))
        except _BodyTimeout:
            message = f"the request body did not arrive within {timeout} s"
            await reply(send, 408, error_body("request_timeout", message))

    def _naming(self, send: Send) -> Send:
        """``send`` that adds the replica's name to the response's headers."""
        replica = self._replica

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), replica]}
            await send(message)

        return named


class TracingMiddleware:
    """A span per HTTP request (see :mod:`actorflow._tracing`), the child of the caller's span
    when the request has a W3C ``traceparent`` header; nothing when tracing is off."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _tracing.enabled():
            await self.app(scope, receive, send)
            return
        parent = {
            k.decode("latin-1").lower(): v.decode("latin-1")
            for k, v in scope.get("headers", [])
            if k.lower() in (b"traceparent", b"tracestate")
        }
        method = scope.get("method", "")
        attributes = {"http.request.method": method, "url.path": app_path(scope)}
        with _tracing.span(f"HTTP {method}", parent=parent, attributes=attributes, kind="server") as current:

            async def traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    _tracing.set_status_code(current, message["status"])
                await send(message)

            await self.app(scope, receive, traced)


def app_path(scope: Scope) -> str:
    """The request's path inside the application (without the ``root_path`` it is mounted at,
    as :meth:`DirectCalls._target` reads it)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root + "/"):
        path = path[len(root) :]
    return path


class _BodyTooLarge(BaseException):
    """Raised from ``receive`` when a streamed body passes the limit; a control-flow signal, so
    no handler on the way up mistakes it for an application error."""


class _BodyTimeout(BaseException):
    """Raised from ``receive`` when the body has not all arrived by its deadline."""


async def reply(
    send: Send, status: int, body: dict[str, Any], extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": data})


class DirectCalls:
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
            response = await call_actor(self.run_call, *target, request)
        except StarletteHTTPException as exc:  # answered as FastAPI's handler would
            response = await http_exception_handler(request, exc)
        except RequestValidationError as exc:
            response = validation_response(exc)
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
