"""Test actors and workflows in process, on a clock you move: ``actorflow.testing``.

::

    from actorflow import testing

    def test_unpaid_order_is_cancelled_after_a_day():
        with testing.Environment(modules=["examples.order"]) as env:
            env.call("Order", "o1", "place", pay_within=24 * 3600)
            env.advance(hours=24)
            assert env.call("Order", "o1", "info")["state"] == "cancelled"

An :class:`Environment` is the whole runtime in this process: storage of its own (in memory
unless given), the actor runtime, and workflow steps run in threads instead of Ray tasks
(:class:`~actorflow.engine.InlineRunner`), all reading one :class:`~actorflow._clock.ManualClock`.
It is the default runtime while it is open, so code under test keeps using its handles
(``Order.get("o1").place.run()``) and ``workflow.run``. Time moves only in :meth:`advance`,
which walks the clock from one due moment to the next (a timer's tick, a ``workflow.sleep``
ending) and, at each, fires what is due and waits until the work it set off has settled
(turns, message deliveries, the workflow steps that follow), so a test of a 24-hour timeout
takes milliseconds and sees the same order of events a day of real time would.

The clock is the one the runtime reads everywhere time matters to an application: timers,
``workflow.sleep``, idempotency-record ages, outbox retries, idle actors. Leases and the time
stamps of steps stay on the machine's clock: they are about processes, not about the
application's time. :meth:`http` is a client of the HTTP API over the same runtime, with no
sockets. Nothing here patches ``time.time``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from actorflow._clock import ManualClock
from actorflow.actor import ActorConfig, ActorRuntime, VirtualActorClass, adopt, lookup
from actorflow.engine import InlineRunner, WorkflowRuntime, use_default
from actorflow.errors import ActorflowError

#: Seconds the environment waits for work to settle before it reports it as stuck.
SETTLE_TIMEOUT = 30.0


class StuckError(ActorflowError):
    """Work in the environment did not settle: a step that neither ends nor sleeps on the
    clock (a real ``time.sleep``, a wait for an event nobody posts), or a call that hangs."""


class Environment:
    """actorflow in this process with a clock that moves only when told (see the module doc).

    ``modules`` are imported first (they define the actor types). ``storage`` defaults to a
    fresh in-memory store; ``start`` (an epoch time or an aware ``datetime``) is where the
    clock starts (default: now). Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        *,
        modules: Iterable[str] = (),
        storage: str | None = None,
        start: float | dt.datetime | None = None,
        config: ActorConfig | None = None,
    ) -> None:
        from actorflow.serve.backend import load_modules

        load_modules(list(modules))
        began = start.timestamp() if isinstance(start, dt.datetime) else start
        self.clock = ManualClock(began)
        self.runner = InlineRunner(self.clock)
        self.workflows = WorkflowRuntime(
            storage or f"memory://actorflow-testing-{uuid.uuid4().hex}", runner=self.runner
        )
        # Not started: its loops (the timer scheduler, outbox recovery) run when advance() says.
        self.actors = ActorRuntime(
            self.workflows, dataclasses.replace(config or ActorConfig(), clock=self.clock)
        )
        adopt(self.workflows, self.actors)
        self._before = use_default(self.workflows)
        self._closed = False

    # ------------------------------------------------------------------ lifetime
    def __enter__(self) -> Environment:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the runtime and put back the default runtime there was before. Idempotent."""
        if self._closed:
            return
        self._closed = True
        use_default(self._before)
        self.workflows.close()  # closes the actor runtime with it
        self.runner.close()

    # ------------------------------------------------------------------ time
    @property
    def now(self) -> float:
        """The clock's reading (epoch seconds)."""
        return self.clock.time()

    def advance(
        self, seconds: float = 0.0, *, minutes: float = 0.0, hours: float = 0.0, days: float = 0.0
    ) -> None:
        """Move the clock on by the sum of the arguments, stopping at every moment something is
        due on the way (a timer's tick, a retry, the end of a ``workflow.sleep``): each fires
        at its own time, in order, and what it sets off settles before time moves again. With
        no argument: fire what is due now and settle."""
        total = seconds + 60 * minutes + 3600 * hours + 86400 * days
        if total < 0:
            raise ValueError("time only moves forward")
        target = self.now + total
        while True:
            self.settle()
            due = [t for t in (self._next_timer(), self.clock.next_wake()) if t is not None]
            step = min([*due, target])
            if step > self.now:
                self.clock.advance(step - self.now)
            fired = self._blocking(self.actors.scheduler.fire_due())
            self._blocking(self.actors.outbox.recover())
            self.settle()
            if self.now >= target and not fired["fired"] + fired["retried"] and not self._due_now():
                return

    def settle(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until nothing runs but what waits on the clock: message deliveries done, every
        running workflow waiting for its steps and every step of theirs asleep on the clock.
        :class:`StuckError` if that takes longer than ``timeout`` seconds (real time)."""
        deadline = time.monotonic() + timeout
        calm = 0
        while calm < 2:  # twice in a row, a trip through the loop apart
            if time.monotonic() > deadline:
                raise StuckError(
                    f"work did not settle within {timeout:g} s: {self.runner.running()} steps run, "
                    f"{self.clock.sleeping()} of them asleep on the clock"
                )
            self._blocking(asyncio.sleep(0))  # callbacks already scheduled on the loop run first
            settled = self._blocking(self.actors.outbox.settled(0.0)) and self._quiet()
            calm = calm + 1 if settled else 0
            if not settled:
                time.sleep(0.001)

    def _quiet(self) -> bool:
        executors = list(self.workflows.engine.executors)
        if self.runner.running() != self.clock.sleeping():
            return False
        if not all(ex.waiting and not ex.completions for ex in executors):
            return False
        # A workflow is RUNNING in storage from the commit that creates it (or the take-over
        # that resumes it), before its executor exists here: until one waits for each of
        # them, a run is still starting (loading its steps on the runtime's loop).
        waiting = {ex.wid for ex in executors}
        running = self.workflows.list_all("RUNNING")
        return all(wid in waiting for wid, _ in running)

    def _next_timer(self) -> float | None:
        return self._blocking(self.actors.scheduler.next_due())

    def _due_now(self) -> bool:
        nxt = self._next_timer()
        return nxt is not None and nxt <= self.now

    def _blocking(self, coro: Any) -> Any:
        return self.workflows.blocking(coro, SETTLE_TIMEOUT)

    # ------------------------------------------------------------------ actors
    def call(
        self, actor_type: str | VirtualActorClass, actor_id: str, method: str, *args: Any, **kwargs: Any
    ) -> Any:
        """Call ``method`` of an actor (activating it when it is new, as over HTTP) and return
        its result once what the call set off has settled. ``idempotency_key=`` is the call's
        key, as with ``.options(idempotency_key=...)``."""
        ac = _type(actor_type)
        key = kwargs.pop("idempotency_key", None)
        result = self.actors.submit(ac, actor_id, method, args, kwargs, key).result(timeout=SETTLE_TIMEOUT)
        self.settle()
        return result

    def create(self, actor_type: str | VirtualActorClass, actor_id: str, *args: Any, **kwargs: Any) -> bool:
        """Create an actor with ``__init__(*args, **kwargs)`` unless it exists; whether it did."""
        return bool(self.actors.create(_type(actor_type), actor_id, args, kwargs))

    def state(self, actor_type: str | VirtualActorClass, actor_id: str) -> Any:
        """The actor's committed state, as ``__getstate__`` gives it (or its ``__dict__``)."""
        return self.actors.state(_type(actor_type), actor_id).state()

    def timers(self, actor_type: str | VirtualActorClass, actor_id: str) -> dict[str, dict[str, Any]]:
        """The actor's timers by name, as the HTTP API lists them (``due``, ``schedule``...)."""
        ac = _type(actor_type)
        got = self._blocking(self.actors.scheduler.timers_of(ac.type_name, actor_id))
        return {name: timer.public() for name, timer in got.items()}

    def post_event(
        self,
        actor_type: str | VirtualActorClass,
        actor_id: str,
        event: str,
        payload: Any = None,
        *,
        event_id: str | None = None,
    ) -> Any:
        """Deliver an external event, as ``POST .../events/{event}`` does, and return the
        handler's result once it has run."""
        ac = _type(actor_type)
        coro = self.actors.post_event(ac, actor_id, event, payload, event_id, True)
        handled, result = self._blocking(coro)
        self.settle()
        if not handled:
            raise StuckError(f"the event {event!r} for {ac.type_name}/{actor_id} was stored but not handled")
        return result

    # ------------------------------------------------------------------ workflows
    def workflows_list(self, status: str | None = None) -> list[tuple[str, str]]:
        """``(id, status)`` of the stored workflows (of one status, if given)."""
        return [(wid, s.value) for wid, s in self.workflows.list_all(status)]

    def workflow(self, workflow_id: str) -> dict[str, Any]:
        """A workflow's status, times and steps, as ``GET /v1/workflows/{id}`` answers."""
        meta = self._blocking(self.workflows.engine.metadata(workflow_id, None))
        return {**meta, "steps": self._blocking(self.workflows.engine.steps(workflow_id))}

    def post_workflow_event(self, workflow_id: str, key: str, payload: Any) -> bool:
        """An event for ``wait_for_event(key)`` in a workflow; whether it was new. Settles."""
        stored = self.workflows.post_event(workflow_id, key, payload)
        self.settle()
        return stored

    # ------------------------------------------------------------------ HTTP
    def http(self, token: str | None = None) -> Any:
        """A client (Starlette's ``TestClient``, an ``httpx.Client``) of the HTTP API over this
        environment, with no sockets; ``token``: the bearer token the API then requires."""
        from fastapi.testclient import TestClient

        from actorflow.serve.api import ApiSettings, create_api
        from actorflow.serve.backend import LocalBackend

        app = create_api(LocalBackend(self.workflows, self.actors), ApiSettings(token=token))
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return TestClient(app, headers=headers)


def _type(actor_type: str | VirtualActorClass) -> VirtualActorClass:
    return lookup(actor_type) if isinstance(actor_type, str) else actor_type


__all__ = ["SETTLE_TIMEOUT", "Environment", "StuckError"]
