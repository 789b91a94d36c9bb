"""Handles to virtual actors and their methods.

``handle.method.run(*args)`` calls and waits; ``run_async`` returns an :class:`ActorCall`
future at once (awaitable, ``.result()``); calls submitted from one thread run in submission
order. ``handle.method.options(idempotency_key=...)`` makes a call safe to repeat.
``handle.method.step(*args)`` is a workflow step that calls the actor exactly once.

Handles call whatever :func:`~actorflow.actor._context.invoker` gives: the runtime running
the current method, a remote client, or this process's embedded runtime.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from actorflow import _wire
from actorflow._ids import check_actor_id
from actorflow.actor._context import embedded, invoker, remote
from actorflow.actor._keys import step_call_key
from actorflow.engine import StepOptions, Workflow, current_step
from actorflow.errors import ActorError, ConfigError

if TYPE_CHECKING:
    from actorflow.actor._class import VirtualActorClass


class ActorCall(concurrent.futures.Future[Any]):
    """The pending result of ``run_async``: ``await call`` or ``call.result(timeout)``."""

    @classmethod
    def wrap(cls, fut: concurrent.futures.Future[Any]) -> ActorCall:
        call = cls()

        def copy(f: concurrent.futures.Future[Any]) -> None:
            if f.cancelled():  # e.g. the runtime closed under it: the waiter must not hang
                call.cancel()
                call.set_running_or_notify_cancel()
                return
            exc = f.exception()
            if exc is not None:
                call.set_exception(exc)
            else:
                call.set_result(f.result())

        fut.add_done_callback(copy)
        return call

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()

    def as_object_ref(self) -> Any:
        """A Ray ``ObjectRef`` of the result, for ``ray.get``/``ray.wait`` in Ray code.

        The call itself still runs where it was submitted (its ordering is unchanged); a small
        per-process Ray actor hands the outcome over to the object store.
        """
        from actorflow.actor._promise import promise_for  # Ray, loaded only for this

        return promise_for(self)


class ActorHandle:
    """A reference to one virtual actor; cheap, picklable, usable from any process."""

    def __init__(self, actor_class: VirtualActorClass, actor_id: str) -> None:
        self._class = actor_class
        self._id = check_actor_id(actor_id)

    @property
    def actor_id(self) -> str:
        return self._id

    @property
    def actor_type(self) -> str:
        return self._class.type_name

    @property
    def actor_class(self) -> VirtualActorClass:
        return self._class

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)  # protocol probes (copy, pickle) must see a plain miss
        if name == "ready" and "ready" not in self._class.methods:
            return self._ready  # Ray 1.x's handle.ready(); an actor method of that name wins
        self._class.method(name)  # raises ActorMethodNotFoundError (an AttributeError)
        return ActorMethod(self, name)

    def _ready(self) -> Any:
        """An ``ObjectRef`` that resolves to True once the actor exists (at once: creating one
        commits before ``get_or_create`` returns); ``ActorNotFoundError`` for a missing actor of
        a class that calls do not activate."""
        import concurrent.futures

        from actorflow.actor._promise import promise_for  # Ray, loaded only for this

        if not self._class.activates and not self._class.exists(self._id):
            raise self._class.not_found(self._id, deleted=False)
        done: concurrent.futures.Future[bool] = concurrent.futures.Future()
        done.set_result(True)
        return promise_for(done)

    def delete(self) -> None:
        """Delete this actor (see ``VirtualActorClass.delete``)."""
        self._class.delete(self._id)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ActorHandle, (self._class, self._id))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and (other.actor_type, other.actor_id) == (
            self.actor_type,
            self._id,
        )

    def __hash__(self) -> int:
        return hash((self.actor_type, self._id))

    def __repr__(self) -> str:
        return f"<actor {self.actor_type}/{self._id}>"


class ActorMethod:
    """One method of one actor. ``run``, ``run_async``, ``options``, ``step``."""

    def __init__(self, handle: ActorHandle, name: str, idempotency_key: str | None = None) -> None:
        self._handle = handle
        self._name = name
        self._key = idempotency_key

    @property
    def handle(self) -> ActorHandle:
        return self._handle

    @property
    def name(self) -> str:
        return self._name

    def options(self, *, idempotency_key: str | None = None) -> ActorMethod:
        """This method with an idempotency key: repeating a call with the same key returns the
        recorded result and changes nothing (records are kept for a bounded count and age)."""
        problem = _wire.idempotency_key_problem(idempotency_key) if idempotency_key is not None else None
        if problem is not None:
            raise ConfigError(f"idempotency_key: {problem}")
        return ActorMethod(self._handle, self._name, idempotency_key)

    def run_async(self, *args: Any, **kwargs: Any) -> ActorCall:
        """Submit the call and return at once. Calls submitted from one thread to one actor run
        in submission order. The arguments are checked against the signature first."""
        ac = self._handle.actor_class
        ac.method(self._name).check_args(ac.type_name, args, kwargs)
        fut = invoker().submit(ac, self._handle.actor_id, self._name, args, kwargs, self._key)
        return fut if isinstance(fut, ActorCall) else ActorCall.wrap(fut)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Call and wait. A writer's effects are committed when this returns; if the method
        raises, the actor is unchanged and the exception is raised here."""
        return self.run_async(*args, **kwargs).result()

    def step(self, *args: Any, **kwargs: Any) -> Workflow[Any]:
        """A workflow step that calls this method exactly once, however often the step is
        retried or its workflow resumed (its idempotency key comes from the workflow and step)."""
        ac = self._handle.actor_class
        ac.method(self._name).check_args(ac.type_name, args, kwargs)
        opts = StepOptions(name=f"{ac.type_name}.{self._name}", max_retries=3)
        return Workflow(_call_from_step, opts, (self._handle, self._name, args, kwargs), {})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"call actor methods with .run(...) or .run_async(...): {self!r}")

    def __repr__(self) -> str:
        return f"<actor method {self._handle.actor_type}/{self._handle.actor_id}.{self._name}>"


def _call_from_step(handle: ActorHandle, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ctx = current_step()
    if ctx is None:
        raise ActorError(handle.actor_type, handle.actor_id, "actor steps run inside workflows")
    inv = remote() or embedded(ctx.storage_url)
    key = step_call_key(ctx.workflow_id, ctx.step_id)
    return inv.submit(handle.actor_class, handle.actor_id, method, args, kwargs, key).result()
