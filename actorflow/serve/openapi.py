"""The HTTP API's OpenAPI document, typed per actor type, and Swagger UI at ``/docs`` offline.

FastAPI documents the generic routes (``/v1/actors/{type_name}/{actor_id}/{method}``...), which
say nothing about what a call takes or returns. :func:`install` replaces ``app.openapi`` with a
builder that keeps those 24 operations, declares their bodies and the errors they really answer
(the JSON body of :func:`actorflow._wire.describe_error`, not FastAPI's ``HTTPValidationError``,
which this API never sends), and adds, for every registered actor type, a create operation
(``POST /v1/actors/{Type}/{actor_id}``, ``__init__``'s parameters) and one operation per public
method (``POST /v1/actors/{Type}/{actor_id}/{method}``, ``operationId`` ``{Type}_{method}``).
Their bodies are ``{"args": [...], "kwargs": {...}}`` with ``kwargs`` typed from the method's
signature and type hints through pydantic, and their results ``{"result": ...}``. Those are
documentation-only entries: the same requests are served by the generic route (or its fast
path, :class:`~actorflow.serve.edge.DirectCalls`), so their answers are the generic route's,
byte for byte. A parameter pydantic cannot model is any JSON (``{}``), never a broken document.

The ``/docs`` page itself is :mod:`actorflow.serve.docs`.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

from actorflow.actor import VirtualActorClass, registered_types
from actorflow.serve.docs import BEARER, docs_router
from actorflow.serve.openapi_parts import (
    ACTOR_ID,
    ACTOR_TYPES,
    ANY_JSON,
    ARGUMENTS,
    BULK_ACTORS,
    BULK_RESULT,
    BULK_WORKFLOWS,
    CREATED,
    IDEMPOTENCY_KEY,
    REF,
    TIMER_SPEC,
    Schema,
    error_responses,
    fixed_schemas,
    json_content,
    result_schema,
    security,
)

log = logging.getLogger("actorflow.http")

# The error statuses each generic route answers (by its function in api.py), besides 500 and 503
# (and 401 when a token is configured).
_BODY = (400, 408, 413, 415)
_ROUTE_ERRORS: dict[str, tuple[int, ...]] = {
    "healthz": (),
    "metrics": (),
    "create_actor": (*_BODY, 404, 409, 422),
    "call_actor": (*_BODY, 404, 409, 422, 429),
    "describe_actor": (400, 404),
    "delete_actor": (400, 404, 409),
    "list_types": (),
    "list_actors": (400, 404, 422),
    "list_timers": (400, 404),
    "set_timer": (*_BODY, 404, 409, 422),
    "get_timer": (400, 404),
    "cancel_timer": (400, 404, 409),
    "tick": (),
    "post_event": (*_BODY, 404, 409, 422, 429),
    "post_workflow_event": (*_BODY, 404),
    "list_workflows": (400,),
    "get_workflow": (400, 404),
    "resume_workflow": (400, 404, 409),
    "cancel_workflow": (400, 404, 409),
    "delete_workflow": (400, 404, 409),
    "bulk_cancel_workflows": _BODY,
    "bulk_delete_workflows": _BODY,
    "bulk_delete_actors": (*_BODY, 404, 409),
    "bulk_purge_failed_timers": (*_BODY, 404, 409),
}
_BULK = {
    "bulk_cancel_workflows": BULK_WORKFLOWS,
    "bulk_delete_workflows": BULK_WORKFLOWS,
    "bulk_delete_actors": BULK_ACTORS,
    "bulk_purge_failed_timers": BULK_ACTORS,
}
# A typed operation is the generic route's request, so it answers the same errors.
_METHOD_ERRORS = _ROUTE_ERRORS["call_actor"]
_CREATE_ERRORS = _ROUTE_ERRORS["create_actor"]
_NO_SERVICE_ERRORS = {"healthz", "metrics"}


def install(app: FastAPI, *, token_required: bool) -> None:
    """Give ``app`` the typed document (``app.openapi``) and the offline ``/docs`` page.

    ``token_required``: whether the service checks a bearer token; the document says so (see
    :func:`security`). The document is built on first use and again whenever the registered
    actor types change.
    """
    built: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        registered = registered_types()
        types_now = tuple((name, id(ac)) for name, ac in sorted(registered.items()))
        if built.get("types") != types_now:
            built["doc"] = build_document(app, registered.values(), token_required=token_required)
            built["types"] = types_now
        doc: dict[str, Any] = built["doc"]
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
    app.include_router(docs_router(app.openapi_url or "/openapi.json", app.title))


def build_document(
    app: FastAPI, actor_types: Iterable[VirtualActorClass], *, token_required: bool
) -> dict[str, Any]:
    """The OpenAPI document of ``app``'s routes and of ``actor_types``' typed operations."""
    doc = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
    )
    components = doc.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    for fastapi_only in ("HTTPValidationError", "ValidationError"):  # never answered by this API
        schemas.pop(fastapi_only, None)
    schemas.update(fixed_schemas())
    components["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "The service's token (ACTORFLOW_TOKEN), when it has one",
        }
    }
    required = security(token_required)
    for path, item in doc["paths"].items():
        for method, op in item.items():
            name = _route_name(path, method, op["operationId"])
            _document_generic(name, op)
            statuses = _ROUTE_ERRORS.get(name, (400, 404))
            if name not in _NO_SERVICE_ERRORS:
                statuses = (*statuses, 500, 503)
            op["responses"] = {k: v for k, v in op["responses"].items() if k != "422"}
            unauthorized = token_required and name != "healthz"
            workflows = path != "/v1/actors" and not path.startswith(("/v1/actors/", "/v1/bulk/actors/"))
            op["responses"].update(error_responses(statuses, unauthorized, workflows=workflows))
            if name != "healthz":
                op["security"] = required
    used = {op["operationId"] for item in doc["paths"].values() for op in item.values()}
    typed = _TypedOperations(token_required, used)
    for ac in sorted(actor_types, key=lambda ac: ac.type_name):
        typed.add_type(ac)
    paths, defs = typed.finish()
    doc["paths"].update(paths)
    schemas.update(defs)
    return doc


def _route_name(path: str, method: str, operation_id: str) -> str:
    """The name of the api.py function behind an operation FastAPI documented, from the
    operation id FastAPI made of it (``generate_unique_id``: name, path, method); "" if none."""
    for name in _ROUTE_ERRORS:
        if re.sub(r"\W", "_", name + path) + "_" + method == operation_id:
            return name
    return ""


def _document_generic(name: str, op: dict[str, Any]) -> None:
    """Bodies and result shapes of the generic routes, which read their request themselves."""
    responses = op["responses"]
    if name in ("create_actor", "call_actor"):
        op["requestBody"] = json_content(ARGUMENTS, "The arguments (no body: none)")
    if name == "create_actor":
        responses["201"] = json_content(CREATED, "Created")
        responses["200"] = json_content(CREATED, "It existed: nothing changed")
    if name == "call_actor":
        op.setdefault("parameters", []).append(IDEMPOTENCY_KEY)
        responses["200"] = json_content(result_schema(ANY_JSON), "The method's result")
    if name == "list_types":
        responses["200"] = json_content(ACTOR_TYPES, "The registered actor types, by name")
    if name == "set_timer":
        op["requestBody"] = json_content(TIMER_SPEC, required=True)
    if name == "post_event":
        op.setdefault("parameters", []).append(IDEMPOTENCY_KEY)
        op["requestBody"] = json_content(ANY_JSON, "The event's payload: any JSON")
        responses["202"] = json_content(
            {
                "type": "object",
                "properties": {"accepted": {"type": "boolean"}, "event": {"type": "string"}},
                "required": ["accepted", "event"],
            },
            "Stored; it is handled once",
        )
        responses["200"] = json_content(result_schema(ANY_JSON), "With ?wait=true: the handler's result")
    if name == "post_workflow_event":
        op["requestBody"] = json_content(ANY_JSON, "The event's payload: any JSON")
    if name in _BULK:
        op["requestBody"] = json_content(_BULK[name], "The filters, and which page", required=True)
        responses["200"] = json_content(BULK_RESULT, "What this page did (with dry_run: would do)")


# --- the typed operations of the actor types ---------------------------------------------------

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_NO_DEFAULT = object()
_Key = tuple[str, ...]
_Mode = typing.Literal["validation", "serialization"]


@dataclass(frozen=True)
class _Param:
    name: str
    kind: inspect._ParameterKind
    required: bool
    default: Any  # its JSON form, or _NO_DEFAULT (none, or none that JSON can show)
    key: _Key | None  # the schema's key in the pydantic pass; None: any JSON


@dataclass(frozen=True)
class _Operation:
    actor: VirtualActorClass
    method: str | None  # None: the create operation
    operation_id: str
    component: str  # the prefix of its schemas' component names
    params: list[_Param] | None  # None: the signature could not be read
    result: _Key | None


class _TypedOperations:
    """Collects the operations of the actor types, then makes all their schemas in one pydantic
    pass (so two models of one name from two modules get distinct component names)."""

    def __init__(self, token_required: bool, operation_ids: Iterable[str]) -> None:
        self.token_required = token_required
        self.used = set(operation_ids)
        self.components: set[str] = set()
        self.inputs: list[tuple[_Key, _Mode, TypeAdapter[Any]]] = []
        self.operations: list[_Operation] = []

    def add_type(self, ac: VirtualActorClass) -> None:
        """The create operation and one operation per public method of ``ac``."""
        t = ac.type_name
        base = _unique(re.sub(r"[^A-Za-z0-9._-]", "_", t), self.components)
        for name, info in sorted(ac.methods.items()):
            hints = _type_hints(info.func)
            key = ("result", t, name)
            result = self._slot(key, hints.get("return", inspect.Parameter.empty), "serialization")
            self.operations.append(
                _Operation(
                    ac,
                    name,
                    _unique(f"{t}_{name}", self.used),
                    f"{base}.{name}",
                    self._params(("method", t, name), info.signature, hints),
                    result,
                )
            )
        init = inspect.getattr_static(ac.cls, "__init__", object.__init__)
        hints = _type_hints(init) if init is not object.__init__ else {}
        params = self._params(("init", t), ac.init_signature, hints)
        self.operations.append(
            _Operation(ac, None, _unique(f"{t}_create", self.used), f"{base}.__init__", params, None)
        )

    def _params(
        self, key: _Key, signature: inspect.Signature | None, hints: dict[str, Any]
    ) -> list[_Param] | None:
        if signature is None:
            return None
        out = []
        for p in list(signature.parameters.values())[1:]:  # not self
            default = _NO_DEFAULT if p.default is p.empty else _json_default(p.default)
            required = p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            slot = self._slot((*key, p.name), hints.get(p.name, p.empty), "validation")
            out.append(_Param(p.name, p.kind, required, default, slot))
        return out

    def _slot(self, key: _Key, hint: Any, mode: _Mode) -> _Key | None:
        """``key`` if ``hint`` gets a schema from pydantic; ``None`` (any JSON) if it has none:
        no annotation, ``Any``, or a type pydantic cannot model."""
        if hint is inspect.Parameter.empty or hint is Any:
            return None
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(hint)
            adapter.json_schema(mode=mode)
        except Exception as exc:  # PydanticSchemaGenerationError, PydanticInvalidForJsonSchema...
            log.debug("no JSON schema for %s (%r): %s", "/".join(key), hint, exc)
            return None
        self.inputs.append((key, mode, adapter))
        return key

    def finish(self) -> tuple[dict[str, Any], dict[str, Schema]]:
        """``(paths, component schemas)`` of the collected operations."""
        try:
            found, top = TypeAdapter.json_schemas(self.inputs, ref_template=REF)
        except Exception as exc:  # each had a schema alone (see _slot); keep the document whole
            log.warning("the actor types' schemas failed together, their values are any JSON: %s", exc)
            found, top = {}, {}
        schemas: dict[str, Schema] = dict(top.get("$defs", {}))

        def schema_of(key: _Key | None, mode: _Mode) -> Schema:
            return dict(found.get((key, mode), ANY_JSON)) if key is not None else {}

        paths: dict[str, Any] = {}
        for op in self.operations:
            t = op.actor.type_name
            kwargs, request = _arguments(op.params, lambda key: schema_of(key, "validation"))
            schemas[f"{op.component}.Kwargs"] = {"title": f"{op.component}.Kwargs", **kwargs}
            request["properties"]["kwargs"] = {"$ref": REF.format(model=f"{op.component}.Kwargs")}
            schemas[f"{op.component}.Request"] = {"title": f"{op.component}.Request", **request}
            body = json_content(f"{op.component}.Request", required=bool(request.get("required")))
            if op.method is None:
                path, operation = f"/v1/actors/{t}/{{actor_id}}", self._create(op, body)
            else:
                result = schema_of(op.result, "serialization")
                schemas[f"{op.component}.Result"] = {
                    "title": f"{op.component}.Result",
                    **result_schema(result),
                }
                path, operation = f"/v1/actors/{t}/{{actor_id}}/{op.method}", self._call(op, body)
            paths[path] = {"post": operation}
        return paths, schemas

    def _declared(self, ac: VirtualActorClass) -> dict[int, list[str]]:
        declared: dict[int, list[str]] = {}
        for kind, status in ac.errors.items():
            declared.setdefault(status, []).append(kind.__name__)
        return declared

    def _call(self, op: _Operation, body: Schema) -> dict[str, Any]:
        ac, method = op.actor, op.method or ""
        info = ac.methods[method]
        notes = [inspect.getdoc(info.func) or ""]
        if info.readonly:
            notes.append("Read-only: it sees the last committed state and changes nothing.")
        if not ac.activates:
            notes.append(
                f"The actor must exist (create it first: POST /v1/actors/{ac.type_name}/{{actor_id}})."
            )
        notes.append('Named arguments go in "kwargs"; "args" takes them by position too.')
        return {
            "tags": [ac.type_name],
            "summary": f"{ac.type_name}.{method}",
            "description": "\n\n".join(n for n in notes if n),
            "operationId": op.operation_id,
            "parameters": [ACTOR_ID, IDEMPOTENCY_KEY],
            "requestBody": body,
            "responses": {
                "200": json_content(f"{op.component}.Result", "The method's result"),
                **error_responses(
                    (*_METHOD_ERRORS, 500, 503), self.token_required, self._declared(ac), workflows=False
                ),
            },
            "security": security(self.token_required),
        }

    def _create(self, op: _Operation, body: Schema) -> dict[str, Any]:
        ac = op.actor
        return {
            "tags": [ac.type_name],
            "summary": f"Create {ac.type_name}",
            "description": f"Create the {ac.type_name} with ``__init__(**kwargs)`` unless it exists "
            "(201; 200 if it did: nothing changes).",
            "operationId": op.operation_id,
            "parameters": [ACTOR_ID],
            "requestBody": body,
            "responses": {
                "201": json_content(CREATED, "Created"),
                "200": json_content(CREATED, "It existed: nothing changed"),
                **error_responses(
                    (*_CREATE_ERRORS, 500, 503), self.token_required, self._declared(ac), workflows=False
                ),
            },
            "security": security(self.token_required),
        }


def _arguments(
    params: list[_Param] | None, schema_of: Callable[[_Key | None], Schema]
) -> tuple[Schema, Schema]:
    """``(kwargs schema, request body schema)`` for a signature's parameters: ``kwargs`` an
    object of the named parameters (the required ones required), ``args`` the positional ones
    in order (a positional-only parameter can only go there)."""
    if params is None:
        return {"type": "object", "additionalProperties": True}, {
            "type": "object",
            "properties": {"args": {"type": "array", "items": {}}},
            "additionalProperties": False,
        }
    properties: dict[str, Schema] = {}
    required: list[str] = []
    prefix: list[Schema] = []
    positional_required = 0
    var_args: Schema | None = None
    var_kwargs: Schema | bool = False
    for p in params:
        schema = schema_of(p.key)
        if p.kind in _POSITIONAL:
            prefix.append(schema)
            if p.kind is p.kind.POSITIONAL_ONLY and p.required:
                positional_required += 1
        if p.kind in _NAMED:
            properties[p.name] = schema if p.default is _NO_DEFAULT else {**schema, "default": p.default}
            if p.required:
                required.append(p.name)
        if p.kind is p.kind.VAR_POSITIONAL:
            var_args = schema
        if p.kind is p.kind.VAR_KEYWORD:
            var_kwargs = schema or True
    kwargs: Schema = {"type": "object", "properties": properties, "additionalProperties": var_kwargs}
    if required:
        kwargs["required"] = required
    args: Schema = {"type": "array", "description": "the arguments by position"}
    if prefix:
        args["prefixItems"] = prefix
    if var_args is not None:
        args["items"] = var_args
    elif prefix:
        args["maxItems"] = len(prefix)
    else:
        args.update(items={}, maxItems=0)
    if positional_required:
        args["minItems"] = positional_required
    request: Schema = {"type": "object", "properties": {"args": args}, "additionalProperties": False}
    body_required = [name for name, needed in (("args", positional_required), ("kwargs", required)) if needed]
    if body_required:
        request["required"] = body_required
    return kwargs, request


def _type_hints(func: Callable[..., Any]) -> dict[str, Any]:
    """The function's resolved type hints, each on its own: one that does not resolve (a name
    that is not defined, say) is left out, the others kept."""
    raw = getattr(func, "__annotations__", None) or {}
    namespace = getattr(func, "__globals__", {})
    hints: dict[str, Any] = {}
    for name, annotation in raw.items():
        holder = types.SimpleNamespace(__annotations__={name: annotation})
        try:
            hints[name] = typing.get_type_hints(holder, globalns=namespace, include_extras=True)[name]
        except Exception:  # NameError, TypeError, SyntaxError from a string annotation...
            continue
    return hints


def _json_default(value: Any) -> Any:
    """A default value as JSON, or ``_NO_DEFAULT`` when it has no JSON form."""
    try:
        return json.loads(json.dumps(jsonable_encoder(value), allow_nan=False))
    except Exception:
        return _NO_DEFAULT


def _unique(name: str, used: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... the first not in ``used`` (which it joins)."""
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}_{n}"
    used.add(candidate)
    return candidate
