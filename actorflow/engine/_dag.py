"""Steps and lazy workflow graphs.

``@workflow.step`` turns a function into a :class:`StepFunction`; ``f.step(*args)`` builds a
:class:`Workflow` node without running anything. Arguments may be plain values, other
``Workflow`` nodes, or lists/tuples/dicts of them; a node used twice is one step, run once.

Graphs are stored and shipped *flat* (:func:`flatten`): a list of :class:`StepSpec` in
dependency order whose arguments refer to other steps through :class:`StepRef`. A chain of
100,000 steps therefore pickles without deep recursion.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from actorflow import _codec
from actorflow._ids import check_id, step_name_for
from actorflow.errors import ConfigError, InvalidDefinitionError, InvalidIdError, SerializationError

if TYPE_CHECKING:
    import ray

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


@dataclass(frozen=True)
class StepOptions:
    """How one step runs.

    ``max_retries`` is the number of *extra* attempts after the first when the step raises
    (so 3 means up to 4 runs); a Ray worker crash is retried the same number of times.
    ``catch_exceptions=True`` makes the step's output ``(result, None)`` or ``(None, exc)``
    instead of failing the workflow. ``checkpoint=False`` skips storing the output: the step
    runs again on resume. ``ray_options`` go to the Ray task (``num_cpus``, ``resources``...).
    """

    max_retries: int = 3
    catch_exceptions: bool = False
    name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    checkpoint: bool = True
    ray_options: dict[str, Any] = field(default_factory=dict)

    def updated(self, **changes: Any) -> StepOptions:
        return make_options(self, **changes)


def check_metadata(metadata: dict[str, Any], what: str) -> None:
    """:class:`~actorflow.errors.InvalidDefinitionError` unless ``metadata`` is strict JSON."""
    try:
        _codec.check_json(metadata, what=what)
    except SerializationError as exc:
        raise InvalidDefinitionError(str(exc)) from exc


_OPTION_NAMES = {"max_retries", "catch_exceptions", "name", "metadata", "checkpoint"}


def make_options(base: StepOptions | None = None, **kwargs: Any) -> StepOptions:
    """Validate step options; unknown keywords are Ray task options, checked by Ray's rules."""
    base = base or StepOptions()
    own = {k: v for k, v in kwargs.items() if k in _OPTION_NAMES}
    ray_opts = {k: v for k, v in kwargs.items() if k not in _OPTION_NAMES}
    if "max_retries" in own:
        mr = own["max_retries"]
        if isinstance(mr, bool) or not isinstance(mr, int) or mr < 0:
            raise ConfigError(f"max_retries must be an integer >= 0, got {mr!r}")
    for flag in ("catch_exceptions", "checkpoint"):
        if flag in own and not isinstance(own[flag], bool):
            raise ConfigError(f"{flag} must be True or False, got {own[flag]!r}")
    if own.get("name") is not None:
        name = check_id("step name", own["name"])
        if ":" in name:
            raise InvalidIdError("step name", name, "':' is reserved for numbering duplicates")
    if "metadata" in own:
        md = own["metadata"]
        if md is None:
            own["metadata"] = {}
        elif not isinstance(md, dict):
            raise InvalidDefinitionError(f"metadata must be a dict, got {type(md).__name__}")
        else:
            check_metadata(md, "step metadata")
    if ray_opts:
        if ray_opts.get("num_returns", 1) != 1:
            raise ConfigError("steps return one value; num_returns is not supported")
        from ray._common.ray_option_utils import validate_task_options

        try:
            validate_task_options(ray_opts, in_options=True)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid step option: {exc}") from exc
        own["ray_options"] = {**base.ray_options, **ray_opts}
    return replace(base, **own)


class StepFunction(Generic[P, R]):
    """A function made durable by ``@workflow.step``. ``f.step(...)`` builds a lazy node."""

    def __init__(self, func: Callable[P, R], options: StepOptions) -> None:
        self._func = func
        self._options = options
        self.__name__ = getattr(func, "__name__", "step")
        self.__qualname__ = getattr(func, "__qualname__", self.__name__)
        self.__doc__ = func.__doc__
        self.__wrapped__ = func

    def step(self, *args: Any, **kwargs: Any) -> Workflow[R]:
        """A lazy node that calls the function with ``args`` once the inputs are ready.

        Arguments that are ``Workflow`` nodes (also inside lists, tuples and dicts) are
        replaced by their outputs. Raises ``TypeError`` if the arguments do not fit the
        function's signature.
        """
        _check_signature(self._func, args, kwargs, what=f"step {self.__qualname__}")
        return Workflow(self._func, self._options, args, kwargs)

    def options(self, **kwargs: Any) -> StepFunction[P, R]:
        """A copy with some options changed (see :class:`StepOptions`)."""
        return StepFunction(self._func, make_options(self._options, **kwargs))

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the plain function, with no durability (handy in unit tests)."""
        return self._func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<workflow step {self.__qualname__}>"


def _check_signature(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], what: str
) -> None:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"invalid arguments for {what}: {exc}") from None


@overload
def step(_func: Callable[P, R]) -> StepFunction[P, R]: ...


@overload
def step(_func: None = None, **options: Any) -> Callable[[Callable[P, R]], StepFunction[P, R]]: ...


def step(
    _func: Callable[P, R] | None = None, **options: Any
) -> StepFunction[P, R] | Callable[[Callable[P, R]], StepFunction[P, R]]:
    """Make a function a durable step: ``@step`` or ``@step(max_retries=..., ...)``."""
    opts = make_options(**options)

    def wrap(func: Callable[P, R]) -> StepFunction[P, R]:
        if not callable(func):
            raise TypeError(f"@workflow.step needs a function, got {func!r}")
        return StepFunction(func, opts)

    return wrap(_func) if _func is not None else wrap


@dataclass(frozen=True)
class StepRef:
    """Placeholder, inside stored arguments, for the output of another step."""

    step_id: str


@dataclass(frozen=True)
class RayArg:
    """A step's output given to a task of a Ray DAG the way Ray gives it: ``nested`` (the DAG
    node sat inside a list or dict) as an ``ObjectRef``; at the top level as the value, and an
    ``ObjectRef`` the producing task returned stays one (Ray resolves one level only).
    ``inner`` is the producing :class:`Workflow` before flattening, its :class:`StepRef` after."""

    inner: Any
    nested: bool


@dataclass
class StepSpec:
    """One step of a flattened graph: what to call and with which arguments."""

    step_id: str
    func: Callable[..., Any]
    options: StepOptions
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def deps(self) -> list[str]:
        """The ids of the steps whose outputs this one takes, each once, in argument order."""
        refs = (ref.step_id for ref in map(_step_ref, walk_values((self.args, self.kwargs))) if ref)
        return list(dict.fromkeys(refs))

    def passed_whole(self) -> set[str]:
        """The ids of the steps whose outputs this one takes only as whole arguments (a plain
        step reference, or a Ray DAG node at the top level): what Ray can hand it from the
        producing task's ``ObjectRef`` (see ``engine._ahead``)."""
        whole: set[str] = set()
        inside: set[str] = set()
        for v in (*self.args, *self.kwargs.values()):
            ref = v.inner if isinstance(v, RayArg) and not v.nested else v
            if isinstance(ref, StepRef):
                whole.add(ref.step_id)
            else:
                inside.update(r.step_id for r in map(_step_ref, walk_values(v)) if r)
        return whole - inside

    @property
    def name(self) -> str:
        return self.options.name or step_name_for(getattr(self.func, "__qualname__", "step"))


class Workflow(Generic[T]):
    """A lazy step node: the type of ``f.step(...)``. Run it with :meth:`run`."""

    __slots__ = ("_args", "_func", "_kwargs", "_options")

    def __init__(
        self, func: Callable[..., T], options: StepOptions, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._func = func
        self._options = options
        self._args = args
        self._kwargs = kwargs

    def run(self, workflow_id: str | None = None, metadata: dict[str, Any] | None = None) -> T:
        """Run the workflow to completion and return its output.

        The graph is stored before the first step starts, so after any crash the workflow
        can be resumed under ``workflow_id`` (generated when omitted). If a workflow with
        this id exists already it is resumed instead; steps with stored outputs never run
        again. ``metadata`` must be a JSON-serializable dict.
        """
        from actorflow.engine._runtime import default_runtime

        return default_runtime().run(self, workflow_id=workflow_id, metadata=metadata)

    def run_async(
        self, workflow_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> ray.ObjectRef[T]:
        """Like :meth:`run` but return at once: an ``ObjectRef`` to ``ray.get`` or ``await``.

        The graph is stored before this returns.
        """
        from actorflow.engine._runtime import default_runtime

        return default_runtime().run_async(self, workflow_id=workflow_id, metadata=metadata)

    def __reduce__(self) -> tuple[Any, ...]:
        specs = flatten(self, IdAssigner())
        return (_rebuild, (specs,))

    def __repr__(self) -> str:
        return f"<Workflow {getattr(self._func, '__qualname__', '?')}>"


def _rebuild(specs: list[StepSpec]) -> Workflow[Any]:
    nodes: dict[str, Workflow[Any]] = {}
    for s in specs:
        sub = lambda v: nodes[v.step_id] if isinstance(v, StepRef) else v  # noqa: E731
        nodes[s.step_id] = Workflow(s.func, s.options, map_values(s.args, sub), map_values(s.kwargs, sub))
    return nodes[specs[-1].step_id]


def _step_ref(v: Any) -> StepRef | None:
    if isinstance(v, RayArg):
        v = v.inner
    return v if isinstance(v, StepRef) else None


def _child(v: Any) -> Workflow[Any] | None:
    if isinstance(v, RayArg):
        v = v.inner
    return v if isinstance(v, Workflow) else None


def walk_values(obj: Any) -> Iterator[Any]:
    """Every leaf value inside lists, tuples, dicts and sets, in a deterministic order."""
    stack = [obj]
    while stack:
        v = stack.pop()
        if isinstance(v, (list, tuple)):
            stack.extend(reversed(v))
        elif isinstance(v, dict):
            stack.extend(reversed(list(v.values())))
        elif isinstance(v, (set, frozenset)):
            stack.extend(v)
        else:
            yield v


def map_values(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """Copy of ``obj`` with ``fn`` applied to every leaf inside lists, tuples and dicts."""
    if isinstance(obj, list):
        return [map_values(v, fn) for v in obj]
    if isinstance(obj, tuple) and type(obj) is tuple:
        return tuple(map_values(v, fn) for v in obj)
    if isinstance(obj, dict) and type(obj) is dict:
        return {k: map_values(v, fn) for k, v in obj.items()}
    return fn(obj)


def flatten(root: Workflow[Any], assign: Callable[[str], str]) -> list[StepSpec]:
    """The graph under ``root`` as step specs in dependency order (root last).

    ``assign`` turns a step's base name into its unique step id; it is called once per
    distinct node, in a deterministic (post-)order, so the same graph always gets the same ids.
    """
    ids: dict[int, str] = {}
    specs: list[StepSpec] = []
    stack: list[tuple[Workflow[Any], bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in ids:
            continue
        children = [c for c in map(_child, walk_values((node._args, node._kwargs))) if c is not None]
        if not expanded:
            stack.append((node, True))
            for child in reversed(children):
                if id(child) not in ids:
                    stack.append((child, False))
            continue
        base = node._options.name or _base_name(node._func)
        sid = assign(base)
        ids[id(node)] = sid
        specs.append(
            StepSpec(
                sid,
                node._func,
                node._options,
                map_values(node._args, lambda v: _placeholder(v, ids)),
                map_values(node._kwargs, lambda v: _placeholder(v, ids)),
            )
        )
    return specs


def _placeholder(v: Any, ids: dict[int, str]) -> Any:
    """``v`` with the workflow it is (or a :class:`RayArg` wraps) replaced by its step's ref."""
    if isinstance(v, RayArg) and isinstance(v.inner, Workflow):
        return RayArg(StepRef(ids[id(v.inner)]), v.nested)
    return StepRef(ids[id(v)]) if isinstance(v, Workflow) else v


def _base_name(func: Callable[..., Any]) -> str:
    return step_name_for(str(getattr(func, "__qualname__", None) or getattr(func, "__name__", "step")))


class IdAssigner:
    """Deterministic unique step ids: ``add``, ``add:1``, ``add:2``... per base name.

    Step names cannot contain ``:``, so a numbered duplicate never collides with a name.
    """

    def __init__(self, counters: dict[str, int] | None = None) -> None:
        self.counters: dict[str, int] = dict(counters or {})

    def __call__(self, base: str) -> str:
        n = self.counters.get(base, 0)
        self.counters[base] = n + 1
        return base if n == 0 else f"{base}:{n}"
