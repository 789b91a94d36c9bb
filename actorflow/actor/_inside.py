"""What an actor method calls inside its turn: ``workflow.send`` and ``workflow.timers``.

Both only record what the method asks for on its :class:`~actorflow.actor._context.Turn`; the
turn's commit makes it happen, with the state, in one atomic write. If the method raises,
none of it happened.
"""

from __future__ import annotations

from typing import Any

from actorflow import _codec, _tracing
from actorflow.actor._class import lookup
from actorflow.actor._context import Message, Turn, current_turn
from actorflow.actor._handle import ActorMethod
from actorflow.actor._timers import Firing, current_firing, make_timer
from actorflow.errors import ActorError


def send(method: Any, *args: Any, **kwargs: Any) -> None:
    """Send a one-way message to another actor's method from inside an actor method.

    ``workflow.send(other.deposit, 10)``. The message is committed with the sender's turn (if
    the method raises, it is never sent) and delivered after the commit, exactly once, even if
    processes crash in between. Arguments are checked against the receiving method now.
    """
    turn = current_turn()
    if turn is None:
        raise ActorError("?", None, "workflow.send() works inside actor methods; elsewhere use .run()")
    if turn.readonly:
        raise ActorError(turn.actor_type, turn.actor_id, "a read-only method cannot send messages")
    if not isinstance(method, ActorMethod):
        raise TypeError(f"send() takes an actor method like handle.deposit, got {method!r}")
    ac = method.handle.actor_class
    ac.method(method.name).check_args(ac.type_name, args, kwargs)
    _codec.dumps((args, kwargs), what=f"the arguments of a message to {method!r}")
    trace = _tracing.carrier()
    turn.messages.append(
        Message(ac.type_name, method.handle.actor_id, method.name, args, kwargs, trace=trace)
    )


def current_actor() -> Any:
    """A handle on the actor whose method is running (its ``actor_type`` and ``actor_id``; its
    methods' ``.step`` for the workflow it returns). ``ActorError`` outside actor methods."""
    turn = current_turn()
    if turn is None:
        raise ActorError("?", None, "current_actor() works inside actor methods")
    return lookup(turn.actor_type).get(turn.actor_id)


class TimersApi:
    """``workflow.timers``: set, cancel and list the current actor's timers from its methods."""

    def set(
        self,
        name: str,
        *,
        method: str,
        after: float | None = None,
        at: float | str | None = None,
        every: float | str | None = None,
        cron: str | None = None,
        tz: str | None = None,
        args: Any = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Set (or replace) the timer ``name`` of the actor running this method; committed
        with the turn. ``after`` seconds from now, or ``at`` an epoch time or ISO-8601 date and
        time; ``every`` (seconds, ``"PT5M"``, ``"R5/PT1M"``) or ``cron`` (in zone ``tz``) to
        repeat (see :mod:`actorflow.actor._timers`). A bad field raises
        :class:`~actorflow.errors.InvalidTimerError` at once."""
        turn = _writer_turn("set timers")
        ac = lookup(turn.actor_type)
        now = turn.runtime.config.clock.time() if turn.runtime is not None else None
        turn.timers[name] = make_timer(
            ac,
            name,
            method=method,
            after=after,
            at=at,
            every=every,
            cron=cron,
            tz=tz,
            args=args,
            kwargs=kwargs,
            now=now,
        )

    def cancel(self, name: str) -> None:
        """Cancel the timer ``name`` (no error if there is none); committed with the turn."""
        turn = _writer_turn("cancel timers")
        turn.timers[name] = None

    def list(self) -> dict[str, dict[str, Any]]:
        """The actor's timers as this turn will leave them, by name."""
        turn = current_turn()
        if turn is None or turn.runtime is None:
            raise ActorError("?", None, "workflow.timers works inside actor methods")
        runtime = turn.runtime
        stored = runtime.workflows.blocking(runtime.scheduler.timers_of(turn.actor_type, turn.actor_id))
        out = {name: t.public() for name, t in stored.items()}
        for name, t in turn.timers.items():
            if t is None:
                out.pop(name, None)
            else:
                out[name] = t.public()
        return out

    def firing(self) -> Firing | None:
        """When a timer called the running method: its name, tick, missed count, attempt."""
        return current_firing.get()


def _writer_turn(action: str) -> Turn:
    turn = current_turn()
    if turn is None:
        raise ActorError("?", None, f"workflow.timers can {action} only inside actor methods")
    if turn.readonly:
        raise ActorError(turn.actor_type, turn.actor_id, f"a read-only method cannot {action}")
    return turn


timers = TimersApi()
