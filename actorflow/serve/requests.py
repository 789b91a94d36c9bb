"""Reading requests and writing answers, the same for every route of the HTTP API: strict JSON
bodies, call arguments, the idempotency key, results, and errors as JSON (their status and code
from the one table in :mod:`actorflow._wire`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
from fastapi import HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from actorflow import _wire, errors
from actorflow._codec import strict_json_dumps, strict_json_loads
from actorflow.actor import error_status, is_method_error

log = logging.getLogger("actorflow.http")


def status_for(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and error code for an error (:data:`actorflow._wire.ERRORS`). An
    exception an actor method raised is ``method_raised``, whatever its type (an actorflow
    error from a call the method made included); anything not actorflow's is
    ``internal_error``. So the code says whether the method itself raised; the status is 500,
    or what the actor's class declared for the exception (``errors=``)."""
    return _wire.status_for(exc, method_raised=is_method_error(exc), declared=error_status(exc))


def encode_result(result: Any) -> bytes:
    """A method's result as the JSON the API answers with (FastAPI's encoder, then strict JSON);
    :class:`~actorflow.errors.UnencodableResultError` when it has no such form. The runtime
    calls this before the turn commits."""
    kind = type(result)
    if kind is int or kind is bool or result is None:
        with contextlib.suppress(TypeError):  # (an integer past 64 bits: the general way below)
            return orjson.dumps(result)  # the bytes the general way writes, ten times faster
    try:
        return strict_json_dumps(jsonable_encoder(result))
    except Exception as exc:  # TypeError, ValueError, RecursionError for a cyclic one...
        raise errors.UnencodableResultError(
            f"the result ({type(result).__name__}) cannot be sent as JSON: {exc}"
        ) from None


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **extra}


def error_response(exc: BaseException) -> JSONResponse:
    """The answer that reports ``exc`` (see :func:`actorflow._wire.describe_error`)."""
    status, body, headers = _wire.describe_error(
        exc, method_raised=is_method_error(exc), declared=error_status(exc)
    )
    if status >= 500 and body["error"] != _wire.METHOD_RAISED:
        log.error("request failed: %r", exc)
    return JSONResponse(body, status_code=status, headers=headers or None)


def has_body(request: Request) -> bool:
    """Whether the request carries a body (reading an absent one still costs Serve a round trip
    from the replica back to its proxy, so it is skipped)."""
    headers = request.headers
    return "transfer-encoding" in headers or headers.get("content-length", "0") != "0"


async def json_body(request: Request, empty: Any = None) -> Any:
    """The request body as strict JSON; ``empty`` when there is none. The body is read from
    the request's ``receive`` (Starlette's ``Request.body`` would cost an async generator
    per request) and cannot be read again."""
    if not has_body(request):
        return empty
    raw = await _read_body(request.receive)
    if not raw.strip():
        return empty
    return strict_json_loads(raw, what="the request body")


async def _read_body(receive: Callable[[], Awaitable[Any]]) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def call_arguments(body: Any) -> tuple[list[Any], dict[str, Any]]:
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


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get(_wire.IDEMPOTENCY_HEADER)
    problem = _wire.idempotency_key_problem(key) if key is not None else None
    if problem is not None:
        raise errors.BadRequestError(f"Idempotency-Key: {problem}")
    return key


#: How a route runs an actor call: (type, id, method, args, kwargs, idempotency key, request) to
#: the result encoded by :func:`encode_result`.
RouteCall = Callable[[str, str, str, list[Any], dict[str, Any], str | None, Request], Awaitable[bytes]]


def validation_response(exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(
        error_body(
            "invalid_request", "request parameters are invalid", details=jsonable_encoder(exc.errors())
        ),
        status_code=422,
    )


async def call_actor(
    run_call: RouteCall,
    type_name: str,
    actor_id: str,
    method: str,
    request: Request,
) -> Response:
    """``POST /v1/actors/{type}/{id}/{method}``; errors are raised for the caller to map."""
    call_args, call_kwargs = call_arguments(await json_body(request, {}))
    key = idempotency_key(request)
    encoded = await run_call(type_name, actor_id, method, call_args, call_kwargs, key, request)
    return result_response(encoded)


def result_response(encoded: bytes) -> Response:
    """``{"result": ...}`` around a result :func:`encode_result` made, as FastAPI would write it."""
    return Response(b'{"result":' + encoded + b"}", media_type="application/json")


class ErrorMappingRoute(APIRoute):
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
