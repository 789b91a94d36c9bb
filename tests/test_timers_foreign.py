"""A process whose runtime does not know an actor type must leave that type's timers alone.

Every process that touches actors runs a timer scheduler, Ray workers running workflow steps
and scripts included, and each imports only the modules it needs. Seen in the service: a saga
step's Ray worker (which had imported examples.trip only) claimed an approval deadline of
examples.approval, could not find the type, and dropped the timer; the expense was never
escalated. Here a second process with no actor module at all runs its scheduler on the same
storage past the timer's due time; the timer must still be there, and fire here."""

from __future__ import annotations

import os
import pathlib
import sys
import time

from _procs import child, wait_while_alive

from actorflow import workflow
from actorflow._clock import ManualClock
from actorflow.actor import ActorConfig, ActorRuntime, lookup
from actorflow.engine import WorkflowRuntime

STRANGER = r"""
import sys, time
from actorflow import workflow
from actorflow.actor import actor_runtime
from actorflow.engine import default_runtime

workflow.init(sys.argv[1])
actor_runtime(default_runtime())  # started: its scheduler passes every 20 ms
print("scheduling", flush=True)
time.sleep(float(sys.argv[2]))
"""


@workflow.virtual_actor(name="ForeignBell")
class ForeignBell:
    def __init__(self) -> None:
        self.rang = 0

    def arm(self, after: float) -> None:
        workflow.timers.set("bell", after=after, method="ring")

    def ring(self) -> None:
        self.rang += 1


def test_a_scheduler_that_does_not_know_the_type_leaves_its_timer(tmp_path: pathlib.Path) -> None:
    storage = f"sqlite://{tmp_path}/foreign.db"
    wf = WorkflowRuntime(storage)
    clock = ManualClock()  # this process's scheduler runs only when told
    rt = ActorRuntime(wf, ActorConfig(clock=clock))
    bell = lookup("ForeignBell")
    try:
        rt.submit(bell, "b", "arm", (0.0,), {}, None).result(timeout=10)  # due at once, for real
        script = tmp_path / "stranger.py"
        script.write_text(STRANGER)
        out = tmp_path / "stranger.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACTORFLOW_")}
        with (
            out.open("w") as log,
            child([sys.executable, str(script), storage, "2"], env=env, stdout=log) as proc,
        ):
            wait_while_alive(proc, lambda: "scheduling" in out.read_text(), "the stranger's scheduler")
            time.sleep(1.0)  # fifty passes of the stranger's scheduler over the due timer
        assert "bell" in rt.blocking(rt.scheduler.timers_of("ForeignBell", "b"), 10)
        assert rt.blocking(rt.scheduler.fire_due(), 10)["fired"] == 1
        assert rt.state(bell, "b").state() == {"rang": 1}
    finally:
        rt.close()
        wf.close()
