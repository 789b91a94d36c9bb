"""Durable workflows: the seed's ``workflow`` API (and Ray 2.x's ``ray.workflow`` names).

::

    from actorflow import workflow

    @workflow.step
    def add(a: int, b: int) -> int:
        return a + b

    workflow.init(storage="sqlite:///./actorflow.db")     # or "redis://host:6379/0"
    assert add.step(1, add.step(2, 3)).run(workflow_id="w1") == 6
    workflow.get_status("w1")      # WorkflowStatus.SUCCESSFUL

Guarantees: a workflow's graph is stored before its first step runs; each step's output is
stored before any step that consumes it runs, and a step whose output is stored never runs
again. After any crash the workflow is RESUMABLE and ``resume`` finishes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from actorflow.actor import ActorHandle, VirtualActorClass, current_actor, send, timers, virtual_actor
from actorflow.actor._context import set_invoker
from actorflow.engine import (
    EventListener,
    StepFailure,
    StepFunction,
    StepOptions,
    Workflow,
    WorkflowRuntime,
    WorkflowStatus,
    as_workflow,
    continuation,
    default_runtime,
    options,
    sleep,
    step,
    wait_for_event,
)
from actorflow.engine import init as init_storage
from actorflow.errors import (
    WorkflowCancelledError,
    WorkflowError,
    WorkflowExecutionError,
    WorkflowNotFoundError,
    WorkflowTimeoutError,
)

# Ray's ray.workflow names for the same things.
WorkflowCancellationError = WorkflowCancelledError
RUNNING = WorkflowStatus.RUNNING
SUCCESSFUL = WorkflowStatus.SUCCESSFUL
FAILED = WorkflowStatus.FAILED
RESUMABLE = WorkflowStatus.RESUMABLE
CANCELED = WorkflowStatus.CANCELED
PENDING = WorkflowStatus.PENDING


def init(
    storage: str | None = None,
    *,
    address: str | None = None,
    token: str | None = None,
    lease_ttl: float | None = None,
    recovery: bool = False,
    max_running_workflows: int | None = None,
    max_pending_workflows: int | None = None,
) -> None:
    """Set where the module-level API keeps workflows and finds actors.

    ``storage`` is ``sqlite:///path/file.db``, ``redis://host:port/db`` (or ``rediss://``),
    or a directory path (a SQLite file inside it). Without it the current storage is kept; the
    first default is ``$ACTORFLOW_STORAGE`` or a SQLite file in the per-user data directory.
    An unknown scheme or unreachable storage raises an error naming the URL.

    ``address`` (or ``$ACTORFLOW_ADDRESS``) makes actor handles remote: ``http://host:port`` of
    a running ``actorflow serve`` (with ``token``, or ``$ACTORFLOW_TOKEN``), or
    ``serve://actorflow`` from code inside its Ray cluster. Actors then live in the service;
    ``storage`` still says where workflows run from this process are kept.

    ``recovery=True`` resumes abandoned workflows (whose runner died) automatically from this
    process, every few seconds; the hosted service always does.

    ``max_running_workflows`` and ``max_pending_workflows`` (Ray's queue): past that many
    workflows running in the cluster on this storage, ``run`` and ``run_async`` store a new one
    PENDING and it starts when one ends, in the order submitted; past that many pending too,
    they raise ``queue.Full`` and store nothing. None or -1: no limit (the default). With a
    limit, every workflow ``run`` or ``run_async`` starts runs in the storage's detached host.
    """
    import os

    address = address or os.environ.get("ACTORFLOW_ADDRESS") or None
    invoker = None
    if address:
        from actorflow.client import connect

        invoker = connect(address, token or os.environ.get("ACTORFLOW_TOKEN") or None)
    queue = max_running_workflows is not None or max_pending_workflows is not None
    if storage is not None or not address or queue:
        init_storage(
            storage,
            lease_ttl=lease_ttl,
            recovery=recovery,
            max_running_workflows=max_running_workflows,
            max_pending_workflows=max_pending_workflows,
        )
    set_invoker(invoker)


def run(
    dag: Any,
    *args: Any,
    workflow_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Run a workflow (a ``Workflow`` or a Ray DAG of ``@ray.remote`` functions) to the end.
    ``args`` and ``kwargs`` are the inputs of a DAG built on an ``InputNode``, as with Ray."""
    wf = _as_workflow(dag, args, kwargs)
    return default_runtime().run(wf, workflow_id=workflow_id, metadata=metadata)


def run_async(
    dag: Any,
    *args: Any,
    workflow_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Start a workflow where it outlives this process (a detached Ray actor); return an
    ``ObjectRef`` of its output."""
    wf = _as_workflow(dag, args, kwargs)
    return default_runtime().run_async(wf, workflow_id=workflow_id, metadata=metadata)


def _as_workflow(dag: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Workflow[Any]:
    wf = as_workflow(dag, args, kwargs)
    if wf is None:
        raise TypeError(f"expected a workflow step or a Ray DAG (f.bind(...)), got {type(dag).__name__}")
    return wf


def get_actor(actor_id: str) -> ActorHandle:
    """Ray 1.x: a handle on the stored virtual actor ``actor_id``, of whichever type (among those
    this process has imported) holds it. ``ActorNotFoundError`` when none does, ``ActorError``
    when several types have an actor of that id (then use ``Cls.get(actor_id)``)."""
    from actorflow.actor import registered_types
    from actorflow.errors import ActorError, ActorNotFoundError

    found = [ac for ac in registered_types().values() if ac.exists(actor_id)]
    if not found:
        raise ActorNotFoundError("?", actor_id, "no imported actor type has an actor of that id")
    if len(found) > 1:
        names = ", ".join(sorted(ac.type_name for ac in found))
        raise ActorError("?", actor_id, f"actors of types {names} have the id {actor_id!r}: use Cls.get(id)")
    return found[0].get(actor_id)


def post_event(workflow_id: str, key: str, payload: Any = None) -> bool:
    """Deliver an event to ``wait_for_event(key)`` in a workflow (buffered if nothing waits
    yet). Returns False if that key already had an event (the first one is kept)."""
    return default_runtime().post_event(workflow_id, key, payload)


def resume(workflow_id: str) -> Any:
    """Continue a stopped workflow in this process and return its output (see WorkflowRuntime)."""
    return default_runtime().resume(workflow_id)


def resume_async(workflow_id: str) -> Any:
    """Continue a stopped workflow in the detached Ray actor; return an ``ObjectRef`` of its output."""
    return default_runtime().resume_async(workflow_id)


def resume_all(include_failed: bool = False) -> list[tuple[str, Any]]:
    """Resume every RESUMABLE workflow (and FAILED ones if asked); ``[(id, ObjectRef)]``."""
    return default_runtime().resume_all(include_failed)


def get_status(workflow_id: str) -> WorkflowStatus:
    """The workflow's status. Raises ``WorkflowNotFoundError`` for an unknown id."""
    return default_runtime().get_status(workflow_id)


def get_output(
    workflow_id: str, name: str | None = None, *, task_id: str | None = None, timeout: float | None = None
) -> Any:
    """The workflow's output, waiting while it runs; or the stored output of one step (``name``,
    as Ray 1.x called it, or Ray 2.x's ``task_id``). A failed workflow raises
    ``WorkflowExecutionError``, caused by (and also of the class of) the step's exception."""
    return default_runtime().get_output(workflow_id, timeout=timeout, task_id=name or task_id)


def get_output_async(workflow_id: str, *, task_id: str | None = None) -> Any:
    """Like :func:`get_output`, as an ``ObjectRef`` of the output (``ray.get`` it, or await it)."""
    from actorflow.actor import promise_for

    return promise_for(default_runtime().get_output_future(workflow_id, task_id=task_id))


def list_all(
    status_filter: str | WorkflowStatus | Iterable[str | WorkflowStatus] | None = None,
) -> list[tuple[str, WorkflowStatus]]:
    """``[(workflow_id, status)]`` of stored workflows, optionally only those with a status."""
    return default_runtime().list_all(status_filter)


def cancel(workflow_id: str) -> None:
    """Cancel a workflow for good; its checkpoints are kept."""
    default_runtime().cancel(workflow_id)


def delete(workflow_id: str) -> None:
    """Delete a workflow that is not running, with all its checkpoints."""
    default_runtime().delete(workflow_id)


def get_metadata(workflow_id: str, name: str | None = None, *, task_id: str | None = None) -> dict[str, Any]:
    """Metadata of a workflow, or of one of its steps (``name``, or Ray 2.x's ``task_id``)."""
    return default_runtime().get_metadata(workflow_id, name or task_id)


__all__ = [
    "CANCELED",
    "FAILED",
    "PENDING",
    "RESUMABLE",
    "RUNNING",
    "SUCCESSFUL",
    "ActorHandle",
    "EventListener",
    "StepFailure",
    "StepFunction",
    "StepOptions",
    "VirtualActorClass",
    "Workflow",
    "WorkflowCancellationError",
    "WorkflowCancelledError",
    "WorkflowError",
    "WorkflowExecutionError",
    "WorkflowNotFoundError",
    "WorkflowRuntime",
    "WorkflowStatus",
    "WorkflowTimeoutError",
    "cancel",
    "continuation",
    "current_actor",
    "delete",
    "get_actor",
    "get_metadata",
    "get_output",
    "get_output_async",
    "get_status",
    "init",
    "list_all",
    "options",
    "post_event",
    "resume",
    "resume_all",
    "resume_async",
    "run",
    "run_async",
    "send",
    "sleep",
    "step",
    "timers",
    "virtual_actor",
    "wait_for_event",
]
