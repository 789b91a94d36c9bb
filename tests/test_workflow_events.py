"""Events and sleeps inside workflows, including a runner killed while it waits."""

from __future__ import annotations

import os
import pathlib
import sys
import time
from typing import Any

import pytest
import ray
from _procs import child, sigkill, wait_while_alive

from actorflow import workflow
from actorflow.errors import WorkflowNotFoundError
from actorflow.workflow import EventListener, WorkflowStatus

pytestmark = pytest.mark.usefixtures("ray_session", "wf_storage")


@workflow.step
def wait_for_file(path: str) -> int:
    while not os.path.exists(path):
        time.sleep(0.02)
    return 1


@workflow.step
def then_wait(_: int, key: str) -> Any:
    return workflow.wait_for_event(key)


def test_event_posted_before_the_wait_begins_is_delivered(tmp_path: pathlib.Path) -> None:
    gate = tmp_path / "gate"
    ref = then_wait.step(wait_for_file.step(str(gate)), "pay").run_async(workflow_id="ev-early")
    # Nothing waits yet (the wait starts after the gate opens): the event is buffered.
    assert workflow.post_event("ev-early", "pay", {"amount": 3}) is True
    assert workflow.post_event("ev-early", "pay", {"amount": 999}) is False  # first one kept
    gate.touch()
    assert ray.get(ref, timeout=60) == {"amount": 3}
    with pytest.raises(WorkflowNotFoundError):
        workflow.post_event("no-such-workflow", "pay", 1)


def test_waiting_workflow_is_running_and_gets_the_event_later() -> None:
    ref = workflow.wait_for_event("approve").run_async(workflow_id="ev-late")
    time.sleep(1.0)
    assert workflow.get_status("ev-late") is WorkflowStatus.RUNNING
    workflow.post_event("ev-late", "approve", "yes")
    assert ray.get(ref, timeout=60) == "yes"


def test_a_deleted_workflows_events_go_with_it() -> None:
    # A new workflow under the id of a deleted one must neither get the old run's event nor
    # have its own refused as a repeat.
    ref = workflow.wait_for_event("pay").run_async(workflow_id="ev-again")
    assert workflow.post_event("ev-again", "pay", "old") is True
    assert ray.get(ref, timeout=60) == "old"
    workflow.delete("ev-again")
    ref = workflow.wait_for_event("pay").run_async(workflow_id="ev-again")
    time.sleep(0.5)
    assert workflow.get_status("ev-again") is WorkflowStatus.RUNNING  # it waits: nothing stored
    assert workflow.post_event("ev-again", "pay", "new") is True
    assert ray.get(ref, timeout=60) == "new"


class FileListener(EventListener):
    """A custom event source: a file appearing, acknowledged by writing another file."""

    async def poll_for_event(self, path: str) -> str:
        import asyncio

        while not os.path.exists(path):
            await asyncio.sleep(0.02)
        return pathlib.Path(path).read_text()

    async def event_checkpointed(self, event: str) -> None:
        pathlib.Path(event).with_suffix(".ack").write_text("ok")


def test_custom_event_listener(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "event.txt"
    ref = workflow.wait_for_event(FileListener, str(source)).run_async(workflow_id="ev-custom")
    time.sleep(0.5)
    source.write_text(str(tmp_path / "acked.txt"))
    assert ray.get(ref, timeout=60) == str(tmp_path / "acked.txt")
    assert (tmp_path / "acked.ack").read_text() == "ok"
    with pytest.raises(TypeError):
        workflow.wait_for_event(dict)  # type: ignore[arg-type]


def test_sleep_lasts_at_least_its_duration() -> None:
    start = time.monotonic()
    assert workflow.sleep(1.0).run(workflow_id="nap") is None
    assert time.monotonic() - start >= 1.0
    with pytest.raises(Exception, match="non-negative"):
        workflow.sleep(-1)


WAITER = r"""
import os, sys, time
from actorflow import workflow

storage, tally = sys.argv[1:3]
workflow.init(storage)

@workflow.step
def count(name, x):
    with open(tally, "a") as f:
        f.write(name + "\n")
    return x

@workflow.step
def wait_after(_):
    return workflow.wait_for_event("payment")

@workflow.step
def settle(payment):
    with open(tally, "a") as f:
        f.write("settle\n")
    return {"settled": payment}

if sys.argv[3] == "event":
    print(settle.step(wait_after.step(count.step("before", 1))).run(workflow_id="waiter"))
else:
    print(workflow.sleep(3.0).run(workflow_id="sleeper"))
"""


def _start_and_kill(tmp_path: pathlib.Path, storage: str, ray_address: str, mode: str, when: Any) -> None:
    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    with child([sys.executable, str(script), storage, str(tmp_path / "tally"), mode], env=env) as proc:
        wait_while_alive(proc, when, f"the waiter ({mode}) reached its point")
        sigkill(proc)


def _kill_while_waiting(tmp_path: pathlib.Path, storage: str, ray_address: str) -> pathlib.Path:
    """Run the event-waiting workflow in another process and kill it while it waits."""
    tally = tmp_path / "tally"

    def waiting() -> bool:
        try:
            return workflow.get_metadata("waiter", "count")["status"] == "SUCCESSFUL" and tally.exists()
        except WorkflowNotFoundError:
            return False

    _start_and_kill(tmp_path, storage, ray_address, "event", waiting)
    return tally


@pytest.mark.slow
def test_killed_while_waiting_for_an_event_then_resumed(
    tmp_path: pathlib.Path, wf_storage: str, ray_address: str
) -> None:
    tally = _kill_while_waiting(tmp_path, wf_storage, ray_address)
    time.sleep(0.5)
    assert workflow.get_status("waiter") is WorkflowStatus.RESUMABLE
    workflow.post_event("waiter", "payment", {"amount": 12})
    assert workflow.resume("waiter") == {"settled": {"amount": 12}}
    assert tally.read_text().split() == ["before", "settle"]  # each step once, the event once
    assert workflow.resume("waiter") == {"settled": {"amount": 12}}


@pytest.mark.slow
def test_sleep_end_time_survives_resume(tmp_path: pathlib.Path, wf_storage: str, ray_address: str) -> None:
    def sleeping() -> bool:
        try:
            return workflow.get_metadata("sleeper", "sleep_deadline")["status"] == "SUCCESSFUL"
        except WorkflowNotFoundError:
            return False

    _start_and_kill(tmp_path, wf_storage, ray_address, "sleep", sleeping)
    started = workflow.get_metadata("sleeper", "sleep_deadline")["stats"]["end_time"]
    assert workflow.resume("sleeper") is None
    finished = time.time()
    # It woke at the deadline fixed when it first ran, not three seconds after the resume.
    assert started + 3.0 <= finished < started + 3.0 + 2.0


@pytest.mark.slow
def test_abandoned_workflow_is_recovered_automatically(
    tmp_path: pathlib.Path, wf_storage: str, ray_address: str
) -> None:
    tally = _kill_while_waiting(tmp_path, wf_storage, ray_address)
    workflow.post_event("waiter", "payment", {"amount": 1})
    workflow.init(wf_storage, recovery=True)  # nobody calls resume: the recovery loop does
    deadline = time.monotonic() + 60
    while workflow.get_status("waiter") is not WorkflowStatus.SUCCESSFUL:
        assert time.monotonic() < deadline, workflow.get_status("waiter")
        time.sleep(0.1)
    assert workflow.get_output("waiter") == {"settled": {"amount": 1}}
    assert tally.read_text().split() == ["before", "settle"]
