"""The pieces of the HTTP API's OpenAPI document that its operations share: the error body and
the responses that reference it (statuses and codes from :data:`actorflow._wire.ERRORS`), the
bearer security requirement, the ``Idempotency-Key`` and ``actor_id`` parameters, and the
fixed component schemas (call arguments, a creation's answer, a timer's specification, the
bodies and answer of the bulk operations, the listing of actor types)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from actorflow import _wire
from actorflow.engine import WorkflowStatus
from actorflow.serve.backend import COUNT_LIMIT, DEFAULT_BULK_LIMIT, MAX_BULK_LIMIT
from actorflow.serve.docs import BEARER

Schema = dict[str, Any]

#: Component names: dotted, which pydantic never makes of a class name, so they cannot clash
#: with the models of the actors' type hints.
ERROR = "actorflow.Error"
ARGUMENTS = "actorflow.Arguments"
CREATED = "actorflow.Created"
TIMER_SPEC = "actorflow.TimerSpec"
BULK_WORKFLOWS = "actorflow.BulkWorkflowFilter"
BULK_ACTORS = "actorflow.BulkActorFilter"
BULK_RESULT = "actorflow.BulkResult"
ACTOR_TYPES = "actorflow.ActorTypes"
ANY_JSON: Schema = {}

REF = "#/components/schemas/{model}"

# What every error status means here: the codes from the one table, and those the edge answers.
_EXTRA_CODES: dict[int, tuple[str, ...]] = {
    400: ("bad_request",),
    401: ("unauthorized",),
    404: ("timer_not_found",),
    408: ("request_timeout",),
    413: ("body_too_large",),
    415: ("unsupported_media_type",),
    422: ("invalid_request",),
    500: (_wire.METHOD_RAISED,),
}
_WHAT = {
    400: "the input breaks the API's rules; nothing ran",
    401: "missing or wrong bearer token",
    404: "no such actor type, actor, method, event, timer or workflow",
    408: "the request body did not arrive in time",
    409: "a conflict with the stored state",
    413: "the request body is over the limit",
    415: "request bodies must be application/json",
    422: "the arguments do not fit the signature, or the idempotency key was used for another call",
    429: "too many idempotency records on this actor; retry after Retry-After",
    500: "the method raised (its type and message), or the service failed",
    503: "storage is unavailable; a keyed call may be repeated safely",
}

IDEMPOTENCY_KEY: Schema = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes a repeated request give the first answer with no second effect (for an event: "
    "its id, handled once). The key is scoped to the actor.",
    "schema": {"type": "string", "minLength": 1, "maxLength": _wire.MAX_IDEMPOTENCY_KEY},
}
ACTOR_ID: Schema = {
    "name": "actor_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[A-Za-z0-9._:@-]+$"},
}


def security(token_required: bool) -> list[dict[str, list[str]]]:
    """The security requirement of every operation but ``/healthz``.

    The bearer scheme is declared either way, so Swagger UI always offers "Authorize" and a
    client generated from the document always knows where a token goes. With a token
    configured it is required. Without one it is optional (``{}``, no requirement, is the
    second choice): Swagger UI sends the request with or without an entered token and the
    service accepts both, so "Try it out" works in both cases, and the document does not claim
    a token the service does not check.
    """
    return [{BEARER: []}] if token_required else [{BEARER: []}, {}]


def error_responses(
    statuses: Iterable[int],
    unauthorized: bool,
    declared: dict[int, list[str]] | None = None,
    *,
    workflows: bool = True,
) -> dict[str, Any]:
    """The responses for ``statuses`` (plus 401 if ``unauthorized``), each the error body;
    ``declared``: status -> exception names an actor class declared for it (``errors=``);
    ``workflows=False``: leave out the codes only workflow routes answer."""
    declared = declared or {}
    wanted = sorted({*statuses, *declared, *([401] if unauthorized else [])})
    out: dict[str, Any] = {}
    for status in wanted:
        codes = [code for _, s, code in _wire.ERRORS if s == status] + list(_EXTRA_CODES.get(status, ()))
        if not workflows:
            codes = [code for code in codes if not code.startswith(("workflow_", "step_"))]
        text = _WHAT.get(status, "the method raised an exception its class declared the caller's fault")
        if codes:
            text += f" (error: {', '.join(dict.fromkeys(codes))})"
        if status in declared:
            text += f"; method_raised: {', '.join(declared[status])}, declared by the actor's class"
        out[str(status)] = {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=ERROR)}}},
        }
    return out


def json_content(schema: Schema | str, description: str | None = None, required: bool = False) -> Schema:
    """A JSON request body or response with ``schema`` (or a reference to component ``schema``)."""
    body: Schema = {
        "content": {
            "application/json": {
                "schema": {"$ref": REF.format(model=schema)} if isinstance(schema, str) else schema
            }
        }
    }
    if description is not None:
        body["description"] = description
    if required:
        body["required"] = True
    return body


def result_schema(result: Schema) -> Schema:
    return {"type": "object", "properties": {"result": result}, "required": ["result"]}


def _bulk_filters() -> tuple[dict[str, Schema], dict[str, Schema]]:
    """The properties of every bulk body (the prefix and the page), and those only workflow
    bodies have (status and age)."""
    text = {"type": "string"}
    page: dict[str, Schema] = {
        "prefix": {
            **text,
            "minLength": 1,
            "maxLength": 256,
            "pattern": "^[A-Za-z0-9._:@-]+$",
            "description": "only ids that start with this",
        },
        "all": {
            "type": "boolean",
            "default": False,
            "description": "act with no filter at all (a body with no filter is refused without it)",
        },
        "dry_run": {
            "type": "boolean",
            "default": False,
            "description": "change nothing; answer what would be done",
        },
        "limit": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_BULK_LIMIT,
            "default": DEFAULT_BULK_LIMIT,
            "description": "how many ids this request looks at",
        },
        "start_after": {
            "anyOf": [text, {"type": "null"}],
            "description": "the next of the previous answer: where this page starts",
        },
    }
    workflow_filters: dict[str, Schema] = {
        "status": {
            "type": "array",
            "items": {"type": "string", "enum": [s.value for s in WorkflowStatus]},
            "minItems": 1,
            "description": "only workflows in one of these statuses (checked again as each is changed); "
            "one status as a string is taken too",
        },
        "older_than": {
            "type": "number",
            "minimum": 0,
            "description": "only workflows whose current run started more than this many seconds ago",
        },
        "started_before": {
            "type": "number",
            "description": "only workflows whose current run started before this Unix time (or older_than)",
        },
    }
    return page, workflow_filters


def bulk_schemas() -> dict[str, Schema]:
    """The bodies of the bulk operations (workflows; actors of a type) and their answer."""
    page, workflow_filters = _bulk_filters()
    text = {"type": "string"}
    count = {"type": "integer", "minimum": 0}
    return {
        BULK_WORKFLOWS: {
            "title": "BulkWorkflowFilter",
            "type": "object",
            "properties": {**page, **workflow_filters},
            "additionalProperties": False,
        },
        BULK_ACTORS: {
            "title": "BulkActorFilter",
            "type": "object",
            "properties": page,
            "additionalProperties": False,
        },
        BULK_RESULT: {
            "title": "BulkResult",
            "type": "object",
            "properties": {
                "dry_run": {"type": "boolean"},
                "scanned": {**count, "description": "ids looked at"},
                "matched": {**count, "description": "of those, how many fit the filters"},
                "affected": {**count, "description": "cancelled, deleted or purged (dry_run: would be)"},
                "skipped": {**count, "description": "matched but left as they are: ended, running, gone"},
                "ids": {"type": "array", "items": text, "description": "the affected ids"},
                "next": {
                    "anyOf": [text, {"type": "null"}],
                    "description": "start_after of the next request; null: nothing is left to look at",
                },
            },
            "required": ["dry_run", "scanned", "matched", "affected", "skipped", "ids", "next"],
        },
    }


def actor_types_schema() -> Schema:
    """The answer of ``GET /v1/actors``: every registered type with its count of actors."""
    text = {"type": "string"}
    return {
        "title": "ActorTypes",
        "type": "object",
        "properties": {
            "types": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "type": text,
                        "count": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": COUNT_LIMIT,
                            "description": f"stored actors of the type, counted up to {COUNT_LIMIT}",
                        },
                        "more": {"type": "boolean", "description": f"there are more than {COUNT_LIMIT}"},
                    },
                    "required": ["type", "count", "more"],
                },
            }
        },
        "required": ["types"],
    }


def fixed_schemas() -> dict[str, Schema]:
    """The components every document has: the error body, call arguments, a creation's answer,
    a timer's specification, the bulk operations' bodies and answer, the actor types' listing."""
    text = {"type": "string"}
    error_properties = {
        "error": {**text, "description": "A code: who failed and why (see the API's error table)"},
        "message": text,
        "type": {**text, "description": "The exception's class"},
        "builtin": {**text, "description": "method_raised: the nearest built-in exception class"},
        **{attr: text for attr in ("actor_type", "actor_id", "method", "workflow_id", "key")},
        "retry_after": {"type": "number"},
        "status": {"type": "integer"},
        "details": {"type": "array", "items": {}, "description": "invalid_request: what was invalid"},
    }
    number = {"type": "number"}
    return {
        **bulk_schemas(),
        ERROR: {
            "title": "Error",
            "type": "object",
            "properties": error_properties,
            "required": ["error", "message"],
            "additionalProperties": True,
        },
        ARGUMENTS: {
            "title": "Arguments",
            "type": "object",
            "properties": {
                "args": {"type": "array", "items": {}},
                "kwargs": {"type": "object", "additionalProperties": True},
            },
            "additionalProperties": False,
        },
        ACTOR_TYPES: actor_types_schema(),
        CREATED: {
            "title": "Created",
            "type": "object",
            "properties": {"type": text, "id": text, "created": {"type": "boolean"}},
            "required": ["type", "id", "created"],
        },
        TIMER_SPEC: {
            "title": "TimerSpec",
            "type": "object",
            "properties": {
                "after": {**number, "description": "seconds from now (or at)"},
                "at": {
                    "anyOf": [number, text],
                    "description": "a Unix time, or an ISO-8601 date and time (or after)",
                },
                "every": {
                    "anyOf": [{**number, "minimum": 1}, text],
                    "description": "repeat: seconds, an ISO-8601 duration (PT5M) or repeating "
                    "interval (R5/PT1M)",
                },
                "cron": {**text, "description": "repeat at a cron expression's times (or every)"},
                "tz": {**text, "description": "IANA zone of cron, or of an at without offset"},
                "method": {**text, "description": "the method the timer calls"},
                "args": {"type": "array", "items": {}},
                "kwargs": {"type": "object", "additionalProperties": True},
            },
            "required": ["method"],
            "additionalProperties": False,
        },
    }
