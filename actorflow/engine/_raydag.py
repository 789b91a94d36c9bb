"""The Ray 2.x ``ray.workflow`` front: DAGs of ``@ray.remote`` functions bound with ``.bind()``.

``workflow.run(dag)`` converts the Ray DAG into the same :class:`Workflow` graph the
``@workflow.step`` API builds, so both fronts share one engine. Per-task workflow options
travel through ``workflow.options(...)``; Ray 2.60 no longer accepts arbitrary task options,
so they ride in a task label that is stripped before the task is submitted.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from actorflow.engine._dag import StepOptions, Workflow, make_options, map_values, walk_values
from actorflow.errors import ConfigError

OPTIONS_LABEL = "actorflow.workflow/options"
_WORKFLOW_OPTION_NAMES = {"task_id", "checkpoint", "catch_exceptions", "max_retries", "metadata", "name"}


def app_retries(ray_opts: dict[str, Any]) -> int:
    """How often a ``@ray.remote`` task's application exception is retried as a step, as Ray has
    it: ``max_retries`` (default 3) times when ``retry_exceptions`` is true, else never (Ray's
    ``max_retries`` alone is about dead workers, which a step survives anyway: it is re-run by
    ``resume``). A list of exception types, or ``max_retries=-1`` (forever), is refused."""
    retry = ray_opts.get("retry_exceptions", False)
    if isinstance(retry, (list, tuple)):
        raise ConfigError("retry_exceptions with a list of exception types is not supported; give True")
    if not retry:
        return 0
    tries = ray_opts.get("max_retries", 3)
    if isinstance(tries, bool) or not isinstance(tries, int) or tries < 0:
        raise ConfigError(f"max_retries must be an integer >= 0 with retry_exceptions, got {tries!r}")
    return tries


def options(**kwargs: Any) -> dict[str, Any]:
    """Workflow options for one Ray task: ``f.options(**workflow.options(task_id="x")).bind()``.

    Accepts ``task_id`` (the step's name), ``checkpoint``, ``catch_exceptions``,
    ``max_retries`` and ``metadata``; the values are validated here.
    """
    unknown = set(kwargs) - _WORKFLOW_OPTION_NAMES
    if unknown:
        raise ConfigError(
            f"unknown workflow options {sorted(unknown)}; known: {sorted(_WORKFLOW_OPTION_NAMES)}"
        )
    step_opts = {("name" if k == "task_id" else k): v for k, v in kwargs.items()}
    make_options(**step_opts)  # validate now, with a clear message
    return {"_labels": {OPTIONS_LABEL: json.dumps(step_opts)}}


class Continuation:
    """Marks a DAG returned from a task as the rest of the workflow (``workflow.continuation``)."""

    def __init__(self, dag: Any) -> None:
        self.dag = dag


def continuation(dag: Any) -> Any:
    """Return this from a workflow task to continue the workflow with ``dag``. Called outside a
    workflow (a plain call of a function that returns one), it runs a Ray DAG with Ray, not
    durably, and returns its value, as Ray does, so one function serves both. Anything but a
    DAG or a step (an ``ObjectRef``, a value) is a TypeError."""
    from actorflow.engine._steps import current_step

    if not (isinstance(dag, Workflow) or _is_ray_dag(dag)):
        raise TypeError(f"continuation takes a DAG (f.bind(...)) or a step, not {type(dag).__name__}")
    if current_step() is None and _is_ray_dag(dag):
        import ray

        return ray.get(dag.execute())
    return Continuation(dag)


def _is_ray_dag(obj: Any) -> bool:
    # Only a program that imported ray.dag can hold a DAG node, so never import Ray here
    # (this runs on every actor turn, where importing Ray would stall the event loop).
    cls = getattr(sys.modules.get("ray.dag"), "DAGNode", None)
    return cls is not None and isinstance(obj, cls)


def as_workflow(obj: Any) -> Workflow[Any] | None:
    """The workflow a step returned, if it returned one (a node, a Ray DAG, a continuation)."""
    if isinstance(obj, Continuation):
        obj = obj.dag
    if isinstance(obj, Workflow):
        return obj
    if _is_ray_dag(obj):
        return from_ray_dag(obj)
    return None


def from_ray_dag(root: Any) -> Workflow[Any]:
    """Convert a Ray DAG of ``FunctionNode``s into a workflow graph (shared nodes stay shared)."""
    from ray.dag import DAGNode, FunctionNode

    done: dict[int, Workflow[Any]] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in done:
            continue
        if not isinstance(node, FunctionNode):
            raise ConfigError(
                f"workflows run DAGs of @ray.remote functions; {type(node).__name__} is not supported"
            )
        children = [v for v in walk_values((node.get_args(), node.get_kwargs())) if isinstance(v, DAGNode)]
        if not expanded:
            stack.append((node, True))
            stack.extend((c, False) for c in reversed(children) if id(c) not in done)
            continue
        ray_opts = dict(node.get_options())
        labels = dict(ray_opts.pop("_labels", None) or {})
        wf_opts = json.loads(labels.pop(OPTIONS_LABEL, "{}"))
        if labels:
            ray_opts["_labels"] = labels
        if "max_retries" not in wf_opts:
            wf_opts["max_retries"] = app_retries(ray_opts)
        ray_opts.pop("retry_exceptions", None)
        ray_opts.pop("max_retries", None)
        opts: StepOptions = make_options(**wf_opts, **ray_opts)
        sub = lambda v: done[id(v)] if isinstance(v, DAGNode) else v  # noqa: E731
        done[id(node)] = Workflow(
            node._body,
            opts,
            map_values(tuple(node.get_args()), sub),
            map_values(dict(node.get_kwargs()), sub),
        )
    return done[id(root)]
