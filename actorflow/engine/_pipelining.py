"""How an executor submits steps ahead of the outputs they consume, and follows a chain of
them without a round trip to the runner per step (the task's side is :mod:`._ahead`).

* A step whose consumers could go right behind it (each takes at most
  :data:`AHEAD_MAX_INPUTS` outputs) is told to commit its own record.
* A consumer whose inputs are all stored, or being committed by their own tasks and taken
  whole, is submitted at once with those tasks' ``ObjectRef``\\ s. Ray starts it when they
  return; it runs its function only if each says it was committed, else it returns
  ``"skip"`` and is submitted again once its inputs are in.
* The runner does not watch the completion of a step whose consumers all went ahead of it:
  once one of them has run, the step ended "ok" and its record is stored, so it is finished
  then, with its task's ``ref`` standing for its output (:class:`ByRef`). When one of them
  skips instead, the runner watches the step after all and handles it as any other.
"""

from __future__ import annotations

import abc
import asyncio
import collections
from dataclasses import dataclass
from typing import Any

from actorflow import _metrics
from actorflow.engine._dag import RayArg, StepRef, StepSpec, map_values
from actorflow.engine._runners import Running, StepRunner
from actorflow.errors import WorkflowError

#: A step taking more outputs than this is never submitted ahead of them (a wide join waits
#: for its inputs; its producers then leave their checkpoints to the runner, in batches).
AHEAD_MAX_INPUTS = 8


class _Released:
    """Stands in :attr:`Executor.done` for an output every consumer has been given already."""

    def __repr__(self) -> str:
        return "<released output>"


RELEASED: Any = _Released()


@dataclass(frozen=True)
class ByRef:
    """Stands in :attr:`Executor.done` for an output known to be stored that the runner never
    fetched (a step submitted ahead of it ran on it): its task's ``ref``, that later consumers
    take as an input (a nested one is fetched)."""

    ref: Any


class Pipelining(abc.ABC):
    """The part of :class:`~._executor.Executor` that submits steps ahead (see module doc)."""

    wid: str
    runner: StepRunner
    ahead_ok: bool
    specs: dict[str, StepSpec]
    deps: dict[str, list[str]]
    dependents: dict[str, list[str]]
    done: dict[str, Any]
    active: set[str]
    missing: dict[str, int]
    ready: collections.deque[str]
    in_flight: dict[str, Running]
    completions: collections.deque[tuple[str, Any]]
    wakeup: asyncio.Event

    def _init_pipelining(self) -> None:
        self.ahead: set[str] = set()  # in flight, submitted before all their inputs were in
        self.committing: set[str] = set()  # in flight, told to commit their own outputs
        self.upstream_of: dict[str, list[str]] = {}  # in flight: inputs given as task refs
        self.unwatched: set[str] = set()  # in flight: finished by the steps ahead of them
        self.submitted: list[str] = []  # since the last _watch_submitted
        self._wake_pending = False  # a wake-up of the loop is scheduled and has not run yet

    @abc.abstractmethod
    def _finish(self, sid: str, value: Any) -> None:
        """Record ``sid`` as finished with ``value`` and ready the steps waiting on it."""

    @abc.abstractmethod
    def _release_inputs(self, sid: str) -> None:
        """``sid`` has taken its inputs: drop those no other consumer waits for."""

    # ----------------------------------------------------------------- submitting
    def _may_go_ahead(self, sid: str) -> bool:
        """Whether every input of ``sid`` is in, or is being committed by its own task and is
        taken whole (so Ray can hand it over)."""
        deps = self.deps[sid]
        if len(deps) > AHEAD_MAX_INPUTS or self.missing[sid] <= 0:
            return False
        whole = self.specs[sid].passed_whole()
        for d in deps:
            if d in self.done:
                if self.done[d] is RELEASED:
                    return False
            elif d not in self.committing or d not in whole:
                return False
        return True

    def _commits_itself(self, sid: str) -> bool:
        """Whether the task of ``sid`` should commit its own output: a consumer might be
        submitted right behind it."""
        if not self.ahead_ok or not self.specs[sid].options.checkpoint:
            return False
        return any(len(self.deps[b]) <= AHEAD_MAX_INPUTS for b in self.dependents.get(sid, ()))

    def _arguments(
        self, spec: StepSpec
    ) -> tuple[tuple[Any, ...], dict[str, Any], list[tuple[int | str, str]], list[str]]:
        """A step's arguments. An input taken whole that is still running, or stored and never
        fetched, is its task's ``ref``; third come the positions of those with their steps,
        fourth those steps (each once)."""
        positions: list[tuple[int | str, str]] = []
        upstream: list[str] = []

        def whole(pos: int | str, v: Any) -> Any:
            ref = v.inner if isinstance(v, RayArg) and not v.nested else v
            if isinstance(ref, StepRef):
                d = ref.step_id
                if d not in self.done:
                    given = self.in_flight[d].ref
                elif isinstance(self.done[d], ByRef):
                    given = self.done[d].ref
                else:
                    return map_values(v, self._arg)
                positions.append((pos, d))
                upstream.append(d)
                return given
            return map_values(v, self._arg)

        args = tuple(whole(i, v) for i, v in enumerate(spec.args))
        kwargs = {k: whole(k, v) for k, v in spec.kwargs.items()}
        return args, kwargs, positions, list(dict.fromkeys(upstream))

    def _arg(self, v: Any) -> Any:
        if isinstance(v, StepRef):
            return self._value(v.step_id)
        if isinstance(v, RayArg):
            return self.runner.task_arg(self._value(v.inner.step_id), v.nested)
        return v

    def _value(self, sid: str) -> Any:
        v = self.done[sid]
        return self.runner.output_of(v.ref) if isinstance(v, ByRef) else v

    # ----------------------------------------------------------------- completions
    def _watch_submitted(self) -> None:
        """Watch each step just submitted, unless every consumer of it went ahead of it."""
        for sid in self.submitted:
            consumers = self.dependents.get(sid)
            if (
                sid in self.committing
                and consumers
                and all(b in self.in_flight and sid in self.upstream_of.get(b, ()) for b in consumers)
            ):
                self.unwatched.add(sid)
            else:
                self._watch(sid)
        self.submitted.clear()

    def _watch(self, sid: str) -> None:
        loop = asyncio.get_running_loop()

        def on_done(fut: Any, sid: str = sid) -> None:
            # From Ray's (or a thread's) callback: the deque's append is atomic, and one wake-up
            # of the loop serves every completion that arrives before it runs.
            self.completions.append((sid, fut))
            if not self._wake_pending:
                self._wake_pending = True
                loop.call_soon_threadsafe(self._wake)

        self.in_flight[sid].future.add_done_callback(on_done)

    def _wake(self) -> None:
        self._wake_pending = False
        self.wakeup.set()

    def _skipped(self, sid: str, fut: Any) -> bool:
        """For a completed step given task refs as inputs: whether it ran nothing (an input
        was not committed, or, submitted ahead, its task failed), to be submitted again once
        its inputs are in. If it ran, the steps behind its refs are finished."""
        upstream = self.upstream_of.pop(sid)
        ahead = sid in self.ahead
        self.ahead.discard(sid)
        retried: dict[str, int] = {}
        try:
            outcome = fut.result()
            ran, retried = outcome[0] != "skip", dict(outcome[7])
        except BaseException:  # ahead: its input's task died, or its own; else it failed
            ran = not ahead
        if ran:
            self._finish_behind(upstream, retried)
            if ahead:
                self._release_inputs(sid)
            return False
        if not ahead:  # its inputs were all stored: nothing can make it skip
            raise WorkflowError(self.wid, f"step {sid!r} of {self.wid!r} found a stored input missing")
        for a in upstream:  # what kept it from running comes from them: watch them
            if a in self.unwatched:
                self.unwatched.discard(a)
                self._watch(a)
        if sid in self.active and sid not in self.done and self.missing[sid] == 0:
            self.ready.append(sid)
        return True

    def _finish_behind(self, upstream: list[str], retried: dict[str, int]) -> None:
        """A step ran on the outputs of ``upstream``: each of them (and what it ran on, in turn)
        ended "ok" with its record stored. Finish those nobody watches; ``retried`` has the
        attempts of those that were retried, as the step saw them."""
        stack = list(upstream)
        while stack:
            a = stack.pop()
            if a not in self.unwatched:
                continue  # watched (its completion comes), or finished already
            self.unwatched.discard(a)
            running = self.in_flight.pop(a)
            self.committing.discard(a)
            _metrics.inc("actorflow_workflow_steps", ("ok",))
            if retried.get(a, 1) > 1:
                _metrics.inc("actorflow_workflow_step_retries", (), retried[a] - 1)
            if a in self.ahead:
                self.ahead.discard(a)
                self._release_inputs(a)
            stack.extend(self.upstream_of.pop(a, ()))
            self._finish(a, ByRef(running.ref))


__all__ = ["AHEAD_MAX_INPUTS", "RELEASED", "ByRef", "Pipelining"]
