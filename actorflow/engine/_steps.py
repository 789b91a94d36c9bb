"""The thin layer between workflow steps and Ray tasks.

A step runs as one Ray task. The task body calls the user's function, retries it in place
when it raises (``max_retries``), and returns a small tuple the executor understands:
``("ok", value, ...)``, ``("cont", workflow, ...)`` for a step that returned more steps, or
``("err", exception, ...)``, then whether the task committed the step's record itself (see
:mod:`._ahead`) and, last, the attempts of retried steps behind it that nobody watched. A
step's output is durable before any step that depends on it runs its function: the executor
commits it, or the task did, under the runner's lease.
"""

from __future__ import annotations

import collections
import contextvars
import hashlib
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from actorflow import _tracing
from actorflow.engine._ahead import commit_output, is_rerun, stored_outcome
from actorflow.engine._dag import StepOptions, Workflow


class StepFailure(Exception):
    """Stands in for a step's exception when the exception itself cannot be pickled."""

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        super().__init__(f"{type_name}: {message}")


def portable_exception(exc: BaseException) -> BaseException:
    try:
        cloudpickle.loads(cloudpickle.dumps(exc))
        return exc
    except Exception:
        return StepFailure(type(exc).__name__, str(exc))


@dataclass(frozen=True)
class StepContext:
    """Where the running step belongs: its storage URL, workflow id and step id; ``clock``, the
    time steps such as ``workflow.sleep`` read, when they run in the process that owns it (the
    inline runner of :mod:`actorflow.testing`; None: the system's)."""

    storage_url: str
    workflow_id: str
    step_id: str
    clock: Any = None
    #: The trace context of the run (W3C headers, see actorflow._tracing); None: no tracing.
    trace: dict[str, str] | None = None

    def now(self) -> float:
        return float(self.clock.time()) if self.clock is not None else time.time()

    def sleep_until(self, deadline: float) -> None:
        """Block until the step's clock reads ``deadline``."""
        if self.clock is not None:
            self.clock.sleep_until(deadline)
            return
        remaining = deadline - time.time()
        if remaining > 0:
            time.sleep(remaining)


_current_step: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar(
    "actorflow_step", default=None
)


def current_step() -> StepContext | None:
    """The step this code runs in, or ``None`` outside workflow steps."""
    return _current_step.get()


def _enter_step(ctx: StepContext) -> contextvars.Token[StepContext | None]:
    # A module function, so step bodies (pickled by value) refer to it by name.
    return _current_step.set(ctx)


def _leave_step(token: contextvars.Token[StepContext | None]) -> None:
    # A Ray worker runs other tasks after a step: they must not think they are in it.
    _current_step.reset(token)


@dataclass(frozen=True)
class Verbatim:
    """An argument Ray must not resolve (an ``ObjectRef`` a task is to receive as one): the
    step's body unwraps it before calling the function."""

    value: Any


def _unwrap(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if any(type(a) is Verbatim for a in args):
        args = tuple(a.value if type(a) is Verbatim else a for a in args)
    if any(type(v) is Verbatim for v in kwargs.values()):
        kwargs = {k: v.value if type(v) is Verbatim else v for k, v in kwargs.items()}
    return args, kwargs


def _resolve_top_level(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """What Ray does to a task's arguments, for arguments that came packed in one object: an
    ``ObjectRef`` at the top level becomes its value (nested ones, and ``Verbatim``, stay)."""
    import ray

    top = [i for i, a in enumerate(args) if isinstance(a, ray.ObjectRef)]
    names = [k for k, v in kwargs.items() if isinstance(v, ray.ObjectRef)]
    if not top and not names:
        return args, kwargs
    values = iter(ray.get([args[i] for i in top] + [kwargs[k] for k in names]))
    listed = list(args)
    for i in top:
        listed[i] = next(values)
    return tuple(listed), {**kwargs, **{k: next(values) for k in names}}


#: What a step submitted ahead returns when an output it consumes was not committed: it ran
#: nothing, and the executor submits it again once that output is durable.
SKIPPED = ("skip", None, 0.0, 0.0, 0, "", False, ())

#: How the executor asks a task to commit its own record and which of its arguments are the
#: outcome tuples of steps it was submitted ahead of: ``(lease, name, metadata, inputs)``,
#: ``lease`` None when the executor commits the record, ``inputs`` pairs of a position (an
#: int in args, a str in kwargs) and the id of the step whose outcome is there.
Ahead = tuple[bytes | None, str, dict[str, Any], tuple[tuple[int | str, str], ...]]


def _take_upstream(
    args: tuple[Any, ...], kwargs: dict[str, Any], inputs: tuple[tuple[int | str, str], ...]
) -> tuple[tuple[Any, ...], dict[str, Any], tuple[tuple[str, int], ...]] | None:
    """The arguments with each upstream outcome replaced by its output, and the attempts of
    the retried steps among and behind those (the runner may never watch them: it counts
    their retries from here); None unless every one ended "ok" and was committed (then the
    step must not run yet)."""
    listed, named = list(args), dict(kwargs)
    behind: dict[str, int] = {}
    for pos, sid in inputs:
        outcome = listed[pos] if isinstance(pos, int) else named[pos]
        if outcome[0] != "ok" or not outcome[6]:
            return None
        behind.update(outcome[7])
        if outcome[4] > 1:
            behind[sid] = outcome[4]
        if isinstance(pos, int):
            listed[pos] = outcome[1]
        else:
            named[pos] = outcome[1]
    return tuple(listed), named, tuple(behind.items())


def _make_body(func: Callable[..., Any], retries: int, catch: bool) -> Callable[..., Any]:
    def actorflow_step(
        *args: Any,
        _actorflow_ctx: StepContext | tuple[Any, ...],
        _actorflow_packed: tuple[tuple[Any, ...], dict[str, Any]] | None = None,
        _actorflow_ahead: Ahead | None = None,
        **kwargs: Any,
    ) -> tuple[Any, ...]:
        if _actorflow_packed is not None:  # many arguments, sent as one object (see RayRunner)
            args, kwargs = _resolve_top_level(*_actorflow_packed)
        args, kwargs = _unwrap(args, kwargs)
        behind: tuple[tuple[str, int], ...] = ()
        if _actorflow_ahead is not None and _actorflow_ahead[3]:
            taken = _take_upstream(args, kwargs, _actorflow_ahead[3])
            if taken is None:
                return SKIPPED
            args, kwargs, behind = taken
        ctx = _actorflow_ctx if isinstance(_actorflow_ctx, StepContext) else StepContext(*_actorflow_ctx)
        if is_rerun():
            # Ray runs this task again: an attempt before this one may have committed its
            # record before its worker died (when the task commits it itself), or Ray rebuilds
            # a lost output of a step the runner checkpointed since. A checkpointed step never
            # runs again: its record is the outcome.
            stored = stored_outcome(ctx.storage_url, ctx.workflow_id, ctx.step_id)
            if stored is not None:
                return (*stored, True, behind)
        token = _enter_step(ctx)
        attributes = {"actorflow.workflow_id": ctx.workflow_id, "actorflow.step_id": ctx.step_id}
        try:
            name = f"workflow step {actorflow_step.__name__}"
            with _tracing.span(name, parent=ctx.trace, attributes=attributes) as current:
                outcome = run(args, kwargs)
                if outcome[0] == "err":
                    _tracing.mark_error(current, repr(outcome[1]))
        finally:
            _leave_step(token)
        committed = False
        if _actorflow_ahead is not None and outcome[0] == "ok":
            lease, step_name, metadata, _ = _actorflow_ahead
            if lease is not None:
                url, wid, sid = ctx.storage_url, ctx.workflow_id, ctx.step_id
                committed = commit_output(url, wid, sid, lease, step_name, metadata, outcome)
        return (*outcome, committed, behind)

    def run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        start = time.time()
        attempts = 0
        out: Any = None
        while True:
            attempts += 1
            _tracing.event("attempt", {"attempt": attempts})
            try:
                out = func(*args, **kwargs)
            except Exception as exc:
                if attempts <= retries:
                    continue
                tb = traceback.format_exc()
                if catch:
                    return ("ok", (None, portable_exception(exc)), start, time.time(), attempts, tb)
                return ("err", portable_exception(exc), start, time.time(), attempts, tb)
            break
        from actorflow.engine._raydag import as_workflow

        cont = as_workflow(out)
        if cont is not None:
            return ("cont", cont, start, time.time(), attempts, "")
        if catch:
            out = (out, None)
        return ("ok", out, start, time.time(), attempts, "")

    actorflow_step.__qualname__ = actorflow_step.__name__ = getattr(func, "__name__", "step")
    return actorflow_step


_digests: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_remotes: collections.OrderedDict[tuple[str, str], Any] = collections.OrderedDict()
_REMOTE_CACHE_SIZE = 512
_cache_lock = threading.Lock()


def _digest(func: Callable[..., Any]) -> str:
    try:
        return _digests[func]
    except (KeyError, TypeError):
        pass
    d = hashlib.sha1(cloudpickle.dumps(func)).hexdigest()
    try:
        _digests[func] = d
    except TypeError:
        pass
    return d


def body_for(func: Callable[..., Any], options: StepOptions) -> Callable[..., Any]:
    """The function that runs a step of ``func`` in whatever process it lands in: retries,
    ``catch_exceptions``, and the outcome tuple the executor commits."""
    return _make_body(func, options.max_retries, options.catch_exceptions)


def remote_for(func: Callable[..., Any], options: StepOptions) -> Any:
    """The Ray remote function that runs steps of ``func`` with ``options`` (cached).

    Functions arriving in continuations are fresh copies each time, so the cache is keyed by
    the function's pickled content rather than its identity.
    """
    import ray

    key = (
        _digest(func),
        repr((options.max_retries, options.catch_exceptions, sorted(options.ray_options.items()))),
    )
    with _cache_lock:
        remote = _remotes.get(key)
        if remote is not None:
            _remotes.move_to_end(key)
            return remote
    opts = {"max_retries": options.max_retries, "retry_exceptions": False, **options.ray_options}
    remote = ray.remote(**opts)(body_for(func, options))
    with _cache_lock:
        _remotes[key] = remote
        while len(_remotes) > _REMOTE_CACHE_SIZE:
            _remotes.popitem(last=False)
    return remote


__all__ = [
    "SKIPPED",
    "Ahead",
    "StepContext",
    "StepFailure",
    "Verbatim",
    "Workflow",
    "body_for",
    "current_step",
    "portable_exception",
    "remote_for",
]
