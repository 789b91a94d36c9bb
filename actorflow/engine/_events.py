"""Durable waits inside workflows: external events and sleeps.

``workflow.wait_for_event("payment")`` is a step whose output is the payload posted to
``POST /v1/workflows/{id}/events/payment`` (or ``workflow.post_event``). Events are stored as
soon as they are posted, whether or not anything waits yet, so an event that arrives before
the wait begins is delivered, never rejected. Once the step's output (the payload) is
checkpointed the event is never waited for again, even after a crash and resume.

``workflow.wait_for_event(MyListener, *args)`` does the same for any source: subclass
:class:`EventListener` and implement ``poll_for_event``; ``event_checkpointed`` runs after the
event is durable (it may run again after a crash, so make it idempotent).

``workflow.sleep(seconds)``: the wake-up time is fixed (and checkpointed) when the sleep first
runs, so a resumed workflow sleeps only for what is left.

Waiting steps ask Ray for no CPU, so a workflow blocked on an event holds no CPU slot. A
storage outage only delays the event: the wait keeps polling (with backoff) until storage is
back. (``sleep`` touches no storage at all.)
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from actorflow import _codec
from actorflow.engine._dag import Workflow, step
from actorflow.engine._fencing import ride_out
from actorflow.engine._steps import current_step
from actorflow.engine._store import k_event
from actorflow.errors import ConfigError, WorkflowError


class EventListener:
    """A source of one event for ``wait_for_event``. Instances are created in the waiting step
    with no arguments; the arguments given to ``wait_for_event`` go to ``poll_for_event``."""

    async def poll_for_event(self, *args: Any, **kwargs: Any) -> Any:
        """Return the event once it has arrived (may wait as long as it needs)."""
        raise NotImplementedError

    async def event_checkpointed(self, event: Any) -> None:
        """Called after the event is stored as the step's output (e.g. to ack a queue)."""


class HTTPListener(EventListener):
    """Waits for an event posted to this workflow under a key (HTTP or ``post_event``)."""

    async def poll_for_event(self, key: str, poll_interval: float = 0.1) -> Any:
        """Poll storage for the event until it is there.

        Storage that cannot be reached is polled again with backoff, for as long as it takes:
        failing the step would only make it retry, and the wait has no deadline of its own.
        If the runner gives up on the workflow meanwhile, it cancels this step.
        """
        from actorflow.engine._runtime import runtime_for

        ctx = current_step()
        if ctx is None:
            raise WorkflowError("?", "HTTPListener runs inside a workflow step")
        url, event = ctx.storage_url, k_event(ctx.workflow_id, key)
        # Opening the runtime connects to storage, which may be down too.
        rt = await ride_out(lambda: asyncio.to_thread(runtime_for, url), _forever, "opening storage")

        async def get() -> bytes | None:
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(rt.storage.get(event), rt.loop))

        delay = 0.01
        while True:
            raw = await ride_out(get, _forever, "waiting for an event")
            if raw is not None:
                return _codec.json_loads(raw)
            await asyncio.sleep(delay)
            delay = min(delay * 2, poll_interval)


def _forever() -> float:
    return math.inf


@step(name="wait_for_event", num_cpus=0)
def _poll(listener: type[EventListener], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return asyncio.run(listener().poll_for_event(*args, **kwargs))


@step(name="event_checkpointed", num_cpus=0)
def _checkpointed(listener: type[EventListener], event: Any) -> Any:
    asyncio.run(listener().event_checkpointed(event))
    return event


def wait_for_event(source: str | type[EventListener], *args: Any, **kwargs: Any) -> Workflow[Any]:
    """A step that waits for an event and returns it (see the module docstring).

    ``source`` is an event key (a string: events posted to this workflow under that key) or an
    :class:`EventListener` subclass.
    """
    if isinstance(source, str):
        from actorflow._ids import check_id

        check_id("event key", source)
        listener: type[EventListener] = HTTPListener
        args = (source, *args)
    elif isinstance(source, type) and issubclass(source, EventListener):
        listener = source
    else:
        raise TypeError(f"wait_for_event takes an event key or an EventListener subclass, not {source!r}")
    return _checkpointed.step(listener, _poll.step(listener, args, kwargs))


@step(name="sleep_deadline")
def _deadline(seconds: float) -> float:
    ctx = current_step()
    return (ctx.now() if ctx is not None else time.time()) + seconds


@step(name="sleep", num_cpus=0)
def _sleep_until(deadline: float) -> None:
    ctx = current_step()
    if ctx is not None:
        ctx.sleep_until(deadline)  # the step's clock: the system's, or a test's
    elif deadline > time.time():
        time.sleep(deadline - time.time())


def sleep(seconds: float) -> Workflow[None]:
    """A step that returns after ``seconds``, counted from when it first runs (durably)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise ConfigError(f"sleep needs a non-negative number of seconds, got {seconds!r}")
    return _sleep_until.step(_deadline.step(float(seconds)))
