"""What the HTTP API and its clients agree on, in one place.

* The header names: ``x-session-id`` (``{type}/{id}``, which the classic proxy routes on),
  ``idempotency-key`` and ``x-actorflow-replica`` (which replica answered).
* The idempotency-key rule: 1 to 256 characters.
* One table between the errors actorflow raises and their HTTP status and error code. The
  server answers an error as ``{"error": code, "message": ..., "type": class name, ...}`` with
  the attributes of :data:`ERROR_ATTRIBUTES` it has; a client rebuilds the same exception type
  from that (:func:`error_from_json`). A code may cover several types (``bad_request``: a
  :class:`~actorflow.errors.BadRequestError` or a :class:`~actorflow.errors.ConfigError`); the
  ``type`` field tells them apart, and a type the client does not know falls back to the code's.

No I/O and nothing above :mod:`actorflow.errors` is imported here: the server, the client and
the CLI all use it.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any

from actorflow import errors

SESSION_HEADER = "x-session-id"
IDEMPOTENCY_HEADER = "idempotency-key"
REPLICA_HEADER = "x-actorflow-replica"
MAX_IDEMPOTENCY_KEY = 256

#: The code of an error an actor method raised (whatever its type), with its class name and
#: the nearest built-in exception class it derives from.
METHOD_RAISED = "method_raised"
#: The code of any other failure of the service: a bug, or an error not in :data:`ERRORS`.
INTERNAL_ERROR = "internal_error"

#: Error type -> (HTTP status, code); the first row the error is an instance of wins, so
#: subclasses come before their bases. Every type in :mod:`actorflow.errors` is covered (the
#: last row catches the rest).
ERRORS: tuple[tuple[type[errors.ActorflowError], int, str], ...] = (
    (errors.ActorTypeNotFoundError, 404, "unknown_actor_type"),
    (errors.ActorMethodNotFoundError, 404, "unknown_method"),
    (errors.ActorEventNotFoundError, 404, "unknown_event"),
    (errors.ActorNotFoundError, 404, "actor_not_found"),
    (errors.WorkflowNotFoundError, 404, "workflow_not_found"),
    (errors.WorkflowStepNotFoundError, 404, "step_not_found"),
    (errors.ActorArgumentsError, 422, "invalid_arguments"),
    (errors.IdempotencyKeyReusedError, 422, "idempotency_key_reused"),
    (errors.IdempotencyWindowFullError, 429, "idempotency_window_full"),
    (errors.InvalidIdError, 400, "invalid_id"),
    (errors.BadRequestError, 400, "bad_request"),
    (errors.InvalidTimerError, 422, "invalid_timer"),
    (errors.ConfigError, 400, "bad_request"),
    (errors.UnencodableResultError, 500, "unencodable_result"),
    (errors.SerializationError, 400, "unserializable"),
    (errors.ActorConflictError, 409, "conflict"),
    (errors.StorageConflictError, 409, "conflict"),
    (errors.WorkflowRunningError, 409, "workflow_running"),
    (errors.WorkflowCancelledError, 409, "workflow_cancelled"),
    (errors.WorkflowNotResumableError, 409, "workflow_not_resumable"),
    (errors.WorkflowTimeoutError, 504, "timeout"),
    (errors.WorkflowExecutionError, 500, "workflow_failed"),
    (errors.RemoteError, 502, "remote_error"),
    (errors.StorageUnavailableError, 503, "storage_unavailable"),
    (errors.StorageError, 503, "storage_error"),
    (errors.ActorStateError, 500, "state_error"),
    (errors.ActorflowError, 500, INTERNAL_ERROR),
)
_BY_CODE: dict[str, tuple[type[errors.ActorflowError], ...]] = {}
for _type, _status, _code in ERRORS:
    _BY_CODE[_code] = (*_BY_CODE.get(_code, ()), _type)  # the first is the most specific

#: Attributes of an error that its JSON answer carries.
ERROR_ATTRIBUTES = ("actor_type", "actor_id", "method", "workflow_id", "key", "retry_after", "status")
#: Codes that report a failure of the service rather than an answer to the request: a keyed
#: call may be retried through them.
SERVICE_FAILURES = frozenset({INTERNAL_ERROR, "storage_unavailable", "storage_error"})


def idempotency_key_problem(key: object) -> str | None:
    """What is wrong with an idempotency key (it must be a string of 1 to 256 characters), or
    ``None`` if nothing is. The server answers a bad header with ``bad_request``; a handle's
    ``.options(idempotency_key=...)`` raises ``ConfigError``."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        return f"an idempotency key must be a string of 1 to {MAX_IDEMPOTENCY_KEY} characters"
    return None


def status_for(
    exc: BaseException, *, method_raised: bool = False, declared: int | None = None
) -> tuple[int, str]:
    """The HTTP status and code for an error; ``method_raised``: an actor method raised it
    (then the code is ``method_raised``, whatever its type, and the status 500 unless its class
    ``declared`` one for it: a client error, 4xx)."""
    if method_raised:
        return declared or 500, METHOD_RAISED
    for kind, status, code in ERRORS:
        if isinstance(exc, kind):
            return status, code
    return 500, INTERNAL_ERROR


def describe_error(
    exc: BaseException, *, method_raised: bool = False, declared: int | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, JSON body, extra headers)`` of the answer that reports ``exc``."""
    status, code = status_for(exc, method_raised=method_raised, declared=declared)
    body: dict[str, Any] = {"error": code, "message": str(exc), "type": type(exc).__name__}
    if method_raised:
        # The nearest built-in ancestor lets remote clients raise something catchable the
        # same way (InsufficientFunds(ValueError) is caught by ``except ValueError``).
        body["builtin"] = next(c.__name__ for c in type(exc).__mro__ if c.__module__ == "builtins")
    for attr in ERROR_ATTRIBUTES:
        value = getattr(exc, attr, None)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            body[attr] = value  # (a method's exception may carry anything)
    headers: dict[str, str] = {}
    if isinstance(exc, errors.IdempotencyWindowFullError):
        headers["retry-after"] = str(int(exc.retry_after + 0.999))
    return status, body, headers


def is_service_failure(status: int, body: Any) -> bool:
    """Whether an HTTP answer says the service failed (worth retrying a keyed call) rather
    than answered: 502/503/504, a 5xx that is not an actorflow error (e.g. Serve's bare
    ``Internal Server Error`` when a replica dies mid-request), or one of
    :data:`SERVICE_FAILURES`."""
    if status in (502, 503, 504):
        return True
    if status < 500:
        return False
    return not isinstance(body, dict) or "error" not in body or body["error"] in SERVICE_FAILURES


def error_from_json(status: int, body: Any) -> errors.ActorflowError:
    """The exception an error answer reports, of the type the server raised (see the module
    docstring); :class:`~actorflow.errors.RemoteError` for an answer that is not one."""
    if not isinstance(body, Mapping) or "error" not in body:
        return errors.RemoteError(f"unexpected HTTP {status} answer: {str(body)[:200]}", status)
    code = str(body["error"])
    message = str(body.get("message", ""))
    attrs = {k: body[k] for k in ERROR_ATTRIBUTES if k in body}
    if code == METHOD_RAISED:
        remote = str(body.get("type", "Exception"))
        builtin = str(body.get("builtin", remote))
        err = method_error_type(builtin)(attrs.get("actor_type", "?"), attrs.get("actor_id"), remote, message)
        err.args = (message,)  # read like the original exception's message
        return err
    types = _BY_CODE.get(code)
    if types is None:
        return errors.RemoteError(f"HTTP {status} {code}: {message}", status)
    named = getattr(errors, str(body.get("type", "")), None)
    if isinstance(named, type) and issubclass(named, types):
        cls: type[errors.ActorflowError] = named
    elif code == INTERNAL_ERROR:  # not an actorflow error on the server: a failure there
        return errors.RemoteError(f"HTTP {status} {code}: {message}", status)
    else:
        cls = types[0]
    if issubclass(cls, errors.RemoteError):
        attrs.setdefault("status", status)
    return errors.rebuild(cls, message, attrs)


_method_types: dict[str, type[errors.ActorMethodError]] = {}


def method_error_type(builtin: str) -> type[errors.ActorMethodError]:
    """``ActorMethodError``, also deriving from the built-in exception named ``builtin`` if any
    (so ``except ValueError`` catches a remote method's ``ValueError`` subclass)."""
    cls = _method_types.get(builtin)
    if cls is None:
        base = getattr(builtins, builtin, None)
        cls = errors.ActorMethodError
        if (
            isinstance(base, type)
            and issubclass(base, Exception)
            and not issubclass(base, errors.ActorflowError)
        ):
            try:
                cls = type(f"Remote{builtin}", (errors.ActorMethodError, base), {})
            except TypeError:  # layout conflicts (e.g. OSError subclasses)
                pass
        _method_types[builtin] = cls
    return cls
