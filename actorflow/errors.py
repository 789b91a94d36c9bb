"""Every error actorflow raises, in one rooted tree.

::

    ActorflowError
    ├── ConfigError                 bad settings: storage URL, init arguments
    │   ├── InvalidDefinitionError      metadata or a class that cannot work (also a ValueError)
    │   └── InvalidTimerError           a timer field that makes no timer (HTTP 422; also a ValueError)
    ├── BadRequestError             input from a client that breaks the API's rules (also a ValueError)
    ├── InvalidIdError              a workflow, actor or step id that breaks the id rules
    ├── SerializationError          a value that cannot be stored (names the step or actor)
    │   └── UnencodableResultError      a method's result that cannot be sent as JSON
    ├── RemoteError                 a remote actorflow service could not be reached or answered badly
    ├── StorageError                the storage backend failed (names the URL)
    │   ├── StorageUnavailableError     cannot reach the backend
    │   └── StorageConflictError        a compare-and-set lost against another writer
    ├── WorkflowError               about one workflow (carries ``workflow_id``)
    │   ├── WorkflowNotFoundError
    │   ├── WorkflowRunningError        the operation needs a workflow that is not running
    │   ├── WorkflowCancelledError
    │   ├── WorkflowExecutionError      a step failed (also of the step's exception class, its cause)
    │   ├── WorkflowNotResumableError   asked for the output of a workflow that needs ``resume``
    │   ├── WorkflowTimeoutError        ``get_output(timeout=)`` ran out (also a TimeoutError)
    │   └── WorkflowStepNotFoundError   ``get_metadata(wid, name=...)`` with an unknown step
    └── ActorError                  about one virtual actor (carries ``actor_type``, ``actor_id``)
        ├── ActorNotFoundError
        ├── ActorTypeNotFoundError
        ├── ActorMethodNotFoundError    (also an AttributeError)
        ├── ActorEventNotFoundError     no handler for an external event
        ├── ActorArgumentsError         arguments that do not fit the method (also a TypeError)
        ├── ActorStateError             state that cannot be encoded or decoded
        ├── ActorConflictError          a turn kept losing compare-and-set races
        ├── IdempotencyKeyReusedError   a key seen before with another method or other arguments
        ├── IdempotencyWindowFullError  the actor holds as many idempotency records as it may
        └── ActorMethodError            a method raised in a remote service (type and message)

Control-flow signals that must cross user code unharmed derive from ``BaseException`` (such
as ``LeaseLost`` in :mod:`actorflow.engine._executor`), so a user's ``except Exception`` cannot
swallow them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar


class ActorflowError(Exception):
    """Root of every error raised by actorflow itself.

    Errors pickle with their attributes (they cross Ray task and Serve boundaries), whatever
    their constructor's signature.
    """

    def __reduce__(self) -> tuple[object, ...]:
        return (rebuild, (type(self), str(self), dict(self.__dict__)))


def rebuild(cls: type[E], message: str, attrs: Mapping[str, object]) -> E:
    """An error of type ``cls`` with ``message`` and attributes ``attrs``, made without calling
    its constructor (whose signature varies): how errors are unpickled, and how a client
    rebuilds one a service reported."""
    exc = cls.__new__(cls)
    BaseException.__init__(exc, message)
    exc.__dict__.update(attrs)
    return exc


_rebuild = rebuild  # the name pickles made before it was public refer to


E = TypeVar("E", bound=ActorflowError)


class ConfigError(ActorflowError):
    """Invalid configuration: an unknown storage scheme, conflicting init arguments."""


class InvalidTimerError(ConfigError, ValueError):
    """A timer request whose fields cannot make a timer: a bad time, period, cron expression
    or zone (HTTP 422). Nothing is set."""


class InvalidDefinitionError(ConfigError, ValueError):
    """A workflow, step or actor class given in a way that cannot work: metadata that is not a
    JSON object, a class with only one of ``__getstate__``/``__setstate__``. Also a
    ``ValueError``, as Ray raised for these."""


class BadRequestError(ActorflowError, ValueError):
    """Input from a client that breaks the API's rules: a body that is not strict JSON, JSON
    nested too deeply, a field of the wrong kind. Nothing was changed."""


class InvalidIdError(ActorflowError, ValueError):
    """An id (workflow, actor, step) that is empty, too long or has forbidden characters."""

    def __init__(self, kind: str, value: object, reason: str) -> None:
        self.kind = kind
        self.value = value
        super().__init__(f"invalid {kind} {value!r}: {reason}")


class SerializationError(ActorflowError, TypeError):
    """A value could not be serialized for storage; the message names what it belonged to."""


class UnencodableResultError(SerializationError):
    """A method's result cannot be sent as JSON (a remote caller asked for it). The turn that
    produced it was not committed."""


class RemoteError(ActorflowError):
    """A remote service could not be reached, refused the request, or answered badly."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class StorageError(ActorflowError):
    """The storage backend failed. ``url`` names the storage (without its password)."""

    def __init__(self, message: str, url: str | None = None) -> None:
        self.url = url
        super().__init__(f"{message} [storage {url}]" if url else message)


class StorageUnavailableError(StorageError):
    """The storage backend cannot be reached."""


class StorageConflictError(StorageError):
    """A compare-and-set write lost against another writer."""


class WorkflowError(ActorflowError):
    """An error about one workflow."""

    def __init__(self, workflow_id: str, message: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(message)


class WorkflowNotFoundError(WorkflowError, ValueError):
    """No workflow has that id (also a ValueError, as Ray raised for unknown ids)."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(workflow_id, f"no workflow with id {workflow_id!r}")


class WorkflowRunningError(WorkflowError):
    def __init__(self, workflow_id: str, action: str) -> None:
        super().__init__(workflow_id, f"cannot {action} workflow {workflow_id!r} while it is running")


class WorkflowCancelledError(WorkflowError):
    def __init__(self, workflow_id: str) -> None:
        super().__init__(workflow_id, f"workflow {workflow_id!r} was cancelled")


class WorkflowExecutionError(WorkflowError):
    """A workflow failed: a step raised after its retries. ``__cause__`` is that exception, and
    the error is also an instance of the cause's class where Python allows it (see
    :func:`execution_error`), so ``except ValueError`` still catches a step's ValueError. What
    Ray's ``ray.workflow`` raised from ``run`` and ``get_output``."""

    def __init__(self, workflow_id: str, message: str | None = None) -> None:
        super().__init__(workflow_id, message or f"Workflow[id={workflow_id}] failed during execution.")


_execution_types: dict[type[BaseException], type[WorkflowExecutionError]] = {}


def execution_error(workflow_id: str, cause: BaseException) -> WorkflowExecutionError:
    """The :class:`WorkflowExecutionError` for ``cause``, of a class that derives from both it
    and ``cause``'s class (cached per class), carrying ``cause``'s attributes, with ``cause``
    as ``__cause__``; a plain one when the two classes cannot be combined."""
    if isinstance(cause, WorkflowExecutionError):
        return cause
    kind = type(cause)
    cls = _execution_types.get(kind)
    if cls is None:
        try:
            name = f"WorkflowExecutionError[{kind.__name__}]"
            cls = type(name, (WorkflowExecutionError, kind), {"__module__": __name__, "__qualname__": name})
        except TypeError:  # an incompatible layout (some builtin exceptions), or a final class
            cls = WorkflowExecutionError
        _execution_types[kind] = cls
    exc = cls.__new__(cls)
    message = f"Workflow[id={workflow_id}] failed during execution: {type(cause).__name__}: {cause}"
    BaseException.__init__(exc, message)
    if cls is not WorkflowExecutionError:
        exc.__dict__.update(getattr(cause, "__dict__", {}))
    exc.workflow_id = workflow_id
    exc.__cause__ = cause
    return exc


class WorkflowNotResumableError(WorkflowError):
    """The workflow stopped without finishing (its runner died); call ``resume`` first."""


class WorkflowTimeoutError(WorkflowError, TimeoutError):
    """``get_output(..., timeout=)`` ran out of time; the workflow goes on."""


class WorkflowStepNotFoundError(WorkflowError, ValueError):
    """The workflow has no step of that id, or none with an output yet (also a ValueError)."""

    def __init__(self, workflow_id: str, step_id: str) -> None:
        self.step_id = step_id
        super().__init__(workflow_id, f"no step {step_id!r} in workflow {workflow_id!r}")


class ActorError(ActorflowError):
    """An error about one virtual actor."""

    def __init__(self, actor_type: str, actor_id: str | None, message: str) -> None:
        self.actor_type = actor_type
        self.actor_id = actor_id
        super().__init__(message)


class ActorNotFoundError(ActorError):
    def __init__(self, actor_type: str, actor_id: str, hint: str | None = None) -> None:
        tail = f": {hint}" if hint else ""
        super().__init__(actor_type, actor_id, f"no actor {actor_type}/{actor_id}{tail}")


class ActorTypeNotFoundError(ActorError):
    def __init__(self, actor_type: str) -> None:
        super().__init__(actor_type, None, f"no virtual actor type named {actor_type!r}")


class ActorMethodNotFoundError(ActorError, AttributeError):
    def __init__(self, actor_type: str, method: str) -> None:
        self.method = method
        super().__init__(actor_type, None, f"actor type {actor_type!r} has no public method {method!r}")


class ActorEventNotFoundError(ActorError):
    def __init__(self, actor_type: str, event: str) -> None:
        self.event = event
        super().__init__(actor_type, None, f"actor type {actor_type!r} has no handler for event {event!r}")


class ActorArgumentsError(ActorError, TypeError):
    """Arguments that do not fit the method's (or ``__init__``'s) signature."""


class ActorConflictError(ActorError):
    """A turn lost the compare-and-set race too many times in a row (extreme contention)."""


class IdempotencyKeyReusedError(ActorError):
    """An idempotency key that an earlier call on this actor used with another method or other
    arguments. The earlier call's effect stands; this call changed nothing."""

    def __init__(self, actor_type: str, actor_id: str | None, key: str, message: str) -> None:
        self.key = key
        super().__init__(actor_type, actor_id, message)


class IdempotencyWindowFullError(ActorError):
    """The actor holds as many unexpired idempotency records as it may keep; a new keyed call
    must wait until older ones age out (records are never dropped early, so that a retry
    inside the window is always recognised). Nothing was changed."""

    def __init__(self, actor_type: str, actor_id: str | None, message: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(actor_type, actor_id, message)


class ActorStateError(ActorError):
    """Actor state that cannot be encoded or decoded."""


class ActorMethodError(ActorError):
    """A method raised in a remote service. ``remote_type`` names the exception's class; when
    that is a built-in exception, the error raised is also an instance of it (so
    ``except ValueError`` works as it would in embedded mode)."""

    def __init__(self, actor_type: str, actor_id: str | None, remote_type: str, message: str) -> None:
        self.remote_type = remote_type
        super().__init__(actor_type, actor_id, f"{remote_type}: {message}")


__all__ = [
    "ActorArgumentsError",
    "ActorConflictError",
    "ActorError",
    "ActorEventNotFoundError",
    "ActorMethodError",
    "ActorMethodNotFoundError",
    "ActorNotFoundError",
    "ActorStateError",
    "ActorTypeNotFoundError",
    "ActorflowError",
    "BadRequestError",
    "ConfigError",
    "IdempotencyKeyReusedError",
    "IdempotencyWindowFullError",
    "InvalidDefinitionError",
    "InvalidIdError",
    "InvalidTimerError",
    "RemoteError",
    "SerializationError",
    "StorageConflictError",
    "StorageError",
    "StorageUnavailableError",
    "UnencodableResultError",
    "WorkflowCancelledError",
    "WorkflowError",
    "WorkflowExecutionError",
    "WorkflowNotFoundError",
    "WorkflowNotResumableError",
    "WorkflowRunningError",
    "WorkflowStepNotFoundError",
    "WorkflowTimeoutError",
]
