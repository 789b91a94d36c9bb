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

from actorflow.engine._dag import RayArg, StepOptions, Workflow, make_options, map_values, walk_values
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


class WorkflowOptions(dict[str, Any]):
    """What :func:`options` returns: Ray task options to unpack (``f.options(**opts)``), and a
    decorator that applies them to a ``@ray.remote`` function (``@workflow.options(...)`` above
    ``@ray.remote``), as Ray's was."""

    def __call__(self, remote_function: Any) -> Any:
        if not hasattr(remote_function, "options"):
            raise TypeError("@workflow.options(...) goes above @ray.remote, on a remote function")
        return remote_function.options(**self)


def options(**kwargs: Any) -> WorkflowOptions:
    """Workflow options for one Ray task: ``f.options(**workflow.options(task_id="x")).bind()``,
    or ``@workflow.options(task_id="x")`` above ``@ray.remote``.

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
    return WorkflowOptions(_labels={OPTIONS_LABEL: json.dumps(step_opts)})


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


def as_workflow(
    obj: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
) -> Workflow[Any] | None:
    """The workflow a step returned, if it returned one (a node, a Ray DAG, a continuation).
    ``args`` and ``kwargs`` are the inputs of a DAG built on an ``InputNode``."""
    if isinstance(obj, Continuation):
        obj = obj.dag
    if isinstance(obj, Workflow):
        if args or kwargs:
            raise TypeError("a workflow of steps takes no inputs; only a Ray DAG with an InputNode does")
        return obj
    if _is_ray_dag(obj):
        return from_ray_dag(obj, args, kwargs or {})
    return None


def _input_value(node: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """What an ``InputNode`` or one of its attributes stands for, given the run's inputs, as
    ``dag.execute(*args, **kwargs)`` has it: one positional input is the input itself (and its
    items or attributes the attributes); otherwise ``inp[i]`` is ``args[i]``, ``inp.x``
    ``kwargs["x"]``."""
    from ray.dag import InputNode

    if not args and not kwargs:
        raise TypeError(
            "the DAG takes inputs (it has an InputNode): pass them, workflow.run(dag, *args, **kwargs)"
        )
    single = len(args) == 1 and not kwargs
    if isinstance(node, InputNode):
        if single:
            return args[0]
        raise TypeError("with several inputs, use the InputNode's items or attributes (inp[0], inp.x)")
    key, accessor = node._key, node._accessor_method
    try:
        if single:
            obj = args[0]
            return getattr(obj, key) if accessor == "__getattr__" else obj[key]
        return args[key] if isinstance(key, int) else kwargs[key]
    except (IndexError, KeyError, AttributeError, TypeError) as exc:
        raise TypeError(f"the DAG's input {key!r} was not given: {exc!r}") from None


def _ray_arg(value: Any, nested: bool) -> Any:
    return RayArg(value, nested) if isinstance(value, Workflow) else value


def from_ray_dag(
    root: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
) -> Workflow[Any]:
    """Convert a Ray DAG of ``FunctionNode``s into a workflow graph (shared nodes stay shared),
    its ``InputNode`` replaced by the run's inputs (stored with the graph, so a resume has them)."""
    from ray.dag import DAGNode, FunctionNode, InputAttributeNode, InputNode

    kwargs = kwargs or {}
    uses_input = False

    done: dict[int, Workflow[Any]] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in done:
            continue
        if isinstance(node, (InputNode, InputAttributeNode)):
            done[id(node)] = _input_value(node, args, kwargs)
            uses_input = True
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

        def arg(v: Any, done: dict[int, Any] = done) -> Any:
            """A task argument as Ray passes it: a node's output at the top level, an
            ``ObjectRef`` of it inside a list or dict (an input is its value anywhere)."""
            if isinstance(v, DAGNode):
                return _ray_arg(done[id(v)], nested=False)
            return map_values(
                v, lambda x: _ray_arg(done[id(x)], nested=True) if isinstance(x, DAGNode) else x
            )

        done[id(node)] = Workflow(
            node._body,
            opts,
            tuple(arg(a) for a in node.get_args()),
            {k: arg(v) for k, v in node.get_kwargs().items()},
        )
    if (args or kwargs) and not uses_input:
        raise TypeError("inputs were given for a DAG without an InputNode")
    return done[id(root)]
