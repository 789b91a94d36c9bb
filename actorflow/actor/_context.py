"""What a running actor method can see of its turn, and what handles call into.

A :class:`Turn` collects what a method does besides changing ``self`` (messages it sends,
timers it sets), all committed with its state; :func:`current_turn` finds the one running in
this context. :class:`Invoker` is the seam between handles and whatever runs the calls: the
embedded runtime, or a client of a remote service.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from actorflow.actor._class import VirtualActorClass
    from actorflow.actor._runtime import ActorRuntime
    from actorflow.actor._timers import Timer


@dataclass
class Message:
    """A call one actor sends another (or an event posted to an actor), as its outbox keeps it."""

    target_type: str
    target_id: str
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    idem: str | None = None  # the receiver's idempotency key (default: derived from the message id)
    event: str | None = None  # for an event posted to the actor: its name and id
    event_id: str | None = None
    trace: dict[str, str] | None = None  # the sender's trace context (W3C headers; see _tracing)


@dataclass
class Turn:
    """What one running method does besides changing ``self``; committed with the state."""

    actor_type: str
    actor_id: str
    readonly: bool
    runtime: ActorRuntime | None = None
    messages: list[Message] = field(default_factory=list)
    timers: dict[str, Timer | None] = field(default_factory=dict)  # None: cancel


current: contextvars.ContextVar[Turn | None] = contextvars.ContextVar("actorflow_turn", default=None)


def current_turn() -> Turn | None:
    """The actor turn running in this context, if any."""
    return current.get()


class Invoker(Protocol):
    """What handles call into: the embedded runtime, or a client of a remote service."""

    def create(
        self, ac: VirtualActorClass, actor_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bool: ...
    def require(self, ac: VirtualActorClass, actor_id: str) -> None: ...
    def exists(self, ac: VirtualActorClass, actor_id: str) -> bool: ...
    def list_ids(self, type_name: str, *, start_after: str | None, limit: int | None) -> list[str]: ...
    def delete(self, ac: VirtualActorClass, actor_id: str) -> None: ...
    def submit(
        self,
        ac: VirtualActorClass,
        actor_id: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        idempotency_key: str | None,
    ) -> concurrent.futures.Future[Any]: ...


_override: Invoker | None = None
_embedded: Callable[[str | None], Invoker] | None = None


def use_embedded(factory: Callable[[str | None], Invoker]) -> None:
    """Register how to reach this process's embedded runtime for a storage URL (``None``: the
    default one). The runtime module registers itself when it is imported, as
    ``actorflow.actor`` does on import, so handles need not import what sits above them."""
    global _embedded
    _embedded = factory


def embedded(storage_url: str | None = None) -> Invoker:
    """The embedded runtime of this process for ``storage_url`` (``None``: the default)."""
    if _embedded is None:
        raise RuntimeError("no actor runtime registered (import actorflow.actor)")
    return _embedded(storage_url)


def invoker() -> Invoker:
    """What handles call: the runtime running the current method (handles used inside a method
    reach it), else a remote client after ``init(address=...)``, else the embedded runtime."""
    turn = current.get()
    if turn is not None and turn.runtime is not None:
        return turn.runtime
    if _override is not None:
        return _override
    return embedded()


def set_invoker(value: Invoker | None) -> None:
    """Route handles to ``value`` (``None``: back to the embedded runtime); closes the one
    replaced, if it can be closed."""
    global _override
    old, _override = _override, value
    close = getattr(old, "close", None)
    if old is not None and old is not value and close is not None:
        close()


def remote() -> Invoker | None:
    """The remote client handles use, if ``init(address=...)`` set one."""
    return _override
