"""The durable workflow engine: graphs of steps run as Ray tasks, checkpointed in storage.

It knows nothing of actors or HTTP. The actor layer and the HTTP edge use it through
:class:`WorkflowRuntime` (one storage, one event loop) and its async methods; the public
``actorflow.workflow`` module is the facade over it.
"""

from actorflow.engine._dag import StepFunction, StepOptions, Workflow, step
from actorflow.engine._engine import Prepared, WorkflowEngine, as_status
from actorflow.engine._events import EventListener, sleep, wait_for_event
from actorflow.engine._raydag import as_workflow, continuation, options
from actorflow.engine._runners import InlineRunner, RayRunner, StepRunner
from actorflow.engine._runtime import (
    WorkflowRuntime,
    canonical_url,
    close_all,
    default_runtime,
    init,
    runtime_for,
    use_default,
)
from actorflow.engine._steps import StepFailure, current_step
from actorflow.engine._store import Lease, WorkflowStatus

__all__ = [
    "EventListener",
    "InlineRunner",
    "Lease",
    "Prepared",
    "RayRunner",
    "StepFailure",
    "StepFunction",
    "StepOptions",
    "StepRunner",
    "Workflow",
    "WorkflowEngine",
    "WorkflowRuntime",
    "WorkflowStatus",
    "as_status",
    "as_workflow",
    "canonical_url",
    "close_all",
    "continuation",
    "current_step",
    "default_runtime",
    "init",
    "options",
    "runtime_for",
    "sleep",
    "step",
    "use_default",
    "wait_for_event",
]
