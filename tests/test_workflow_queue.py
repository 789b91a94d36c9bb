"""Ray's workflow queue: ``workflow.init(max_running_workflows=, max_pending_workflows=)``.

Past ``max_running`` a workflow waits PENDING and starts when one ends, in the order submitted;
past ``max_pending`` too, ``run_async`` raises ``queue.Full`` and stores nothing. The queue is
storage: a host that dies leaves its PENDING workflows to the next one. Each test on SQLite,
Redis and Redis Cluster; steps wait on a file the test creates, since they run elsewhere.
"""

from __future__ import annotations

import os
import pathlib
import queue
import time
from typing import Any

import pytest
import ray

from actorflow import workflow
from actorflow.engine import _runtime
from actorflow.engine._detached import NAMESPACE, host_name, stop_host, workflow_host

pytestmark = [pytest.mark.usefixtures("wf_storage", "ray_session"), pytest.mark.timeout(120)]


@workflow.step(max_retries=0)
def gated(gate: str, marker: str, value: str) -> str:
    pathlib.Path(marker).touch()  # it ran
    deadline = time.time() + 60
    while not os.path.exists(gate):
        if time.time() > deadline:
            raise TimeoutError(gate)
        time.sleep(0.02)
    return value


def _until(cond: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _job(tmp: pathlib.Path, name: str) -> Any:
    return gated.step(str(tmp / "gate"), str(tmp / f"ran-{name}"), name)


def _first_takes_the_slot(storage: str, tmp: pathlib.Path, workflow_id: str, max_pending: int = 5) -> Any:
    """Limit the queue to one running workflow and start ``workflow_id`` (job "a"), which holds
    the slot until the gate opens; its ``ObjectRef`` once it runs."""
    workflow.init(storage, max_running_workflows=1, max_pending_workflows=max_pending)
    first = _job(tmp, "a").run_async(workflow_id=workflow_id)
    _until(lambda: (tmp / "ran-a").exists(), "the first workflow started")
    return first


def test_past_max_running_a_workflow_waits_pending_and_past_max_pending_none_is_stored(
    wf_storage: str, tmp_path: pathlib.Path
) -> None:
    first = _first_takes_the_slot(wf_storage, tmp_path, "q-a", max_pending=1)
    second = _job(tmp_path, "b").run_async(workflow_id="q-b")
    assert workflow.get_status("q-b") == workflow.PENDING
    with pytest.raises(queue.Full, match="nothing was stored"):
        _job(tmp_path, "c").run_async(workflow_id="q-c")
    with pytest.raises(workflow.WorkflowNotFoundError):
        workflow.get_status("q-c")
    assert dict(workflow.list_all(workflow.PENDING)) == {"q-b": workflow.PENDING}
    time.sleep(0.5)
    assert not (tmp_path / "ran-b").exists()  # no slot yet

    (tmp_path / "gate").touch()
    assert ray.get(first, timeout=60) == "a" and ray.get(second, timeout=60) == "b"
    a, b = workflow.get_metadata("q-a")["stats"], workflow.get_metadata("q-b")["stats"]
    assert b["start_time"] >= a["end_time"]  # it started once the first ended, not before
    # With a slot free again, a run goes through the queue and returns its output.
    assert workflow.run(_job(tmp_path, "d"), workflow_id="q-d") == "d"


def test_queue_full_quotes_the_limits_the_host_applies(wf_storage: str, tmp_path: pathlib.Path) -> None:
    # Another driver on this storage set other limits since this one did: the host applies the
    # last ones stored, and the refusal says which.
    first = _first_takes_the_slot(wf_storage, tmp_path, "qf-a", max_pending=3)
    host = workflow_host(_runtime.canonical_url(wf_storage), 10.0)
    ray.get(host.configure.remote(1, 0), timeout=60)  # as workflow.init in another driver
    with pytest.raises(queue.Full, match="'qf-b' not started: 1 workflows run and 0 wait already"):
        _job(tmp_path, "b").run_async(workflow_id="qf-b")
    with pytest.raises(workflow.WorkflowNotFoundError):
        workflow.get_status("qf-b")
    (tmp_path / "gate").touch()
    assert ray.get(first, timeout=60) == "a"


def test_a_driver_that_set_no_limits_is_queued_by_the_ones_stored(
    wf_storage: str, tmp_path: pathlib.Path
) -> None:
    # The limits count every workflow of the cluster on this storage: a second driver (here a
    # runtime of its own on the same storage) that never called workflow.init with limits is
    # queued and refused like the one that set them.
    first = _first_takes_the_slot(wf_storage, tmp_path, "qd-a", max_pending=1)
    other = _runtime.WorkflowRuntime(wf_storage)
    try:
        second = other.run_async(_job(tmp_path, "b"), workflow_id="qd-b")
        assert workflow.get_status("qd-b") == workflow.PENDING
        with pytest.raises(queue.Full, match="nothing was stored"):
            other.run(_job(tmp_path, "c"), workflow_id="qd-c")
        time.sleep(0.5)
        assert not (tmp_path / "ran-b").exists()  # it waits for the slot
        (tmp_path / "gate").touch()
        assert ray.get(first, timeout=60) == "a" and ray.get(second, timeout=60) == "b"
        a, b = workflow.get_metadata("qd-a")["stats"], workflow.get_metadata("qd-b")["stats"]
        assert b["start_time"] >= a["end_time"]
    finally:
        other.close()


def test_bad_queue_limits_are_refused_and_change_nothing(wf_storage: str, tmp_path: pathlib.Path) -> None:
    for bad, error in (
        ({"max_running_workflows": 0}, ValueError),
        ({"max_running_workflows": -2}, ValueError),
        ({"max_pending_workflows": -5}, ValueError),
        ({"max_running_workflows": "2"}, TypeError),
        ({"max_running_workflows": True}, TypeError),
        ({"max_pending_workflows": 1.5}, TypeError),
    ):
        with pytest.raises(error, match=r"max_(running|pending)_workflows"):
            workflow.init(wf_storage, **bad)
    assert not _runtime.default_runtime()._queue_limited()  # nothing stored
    (tmp_path / "gate").touch()
    assert workflow.run(_job(tmp_path, "free"), workflow_id="q-free") == "free"


def test_a_pending_workflow_cancelled_never_runs(wf_storage: str, tmp_path: pathlib.Path) -> None:
    first = _first_takes_the_slot(wf_storage, tmp_path, "qc-a")
    _job(tmp_path, "b").run_async(workflow_id="qc-b")
    third = _job(tmp_path, "c").run_async(workflow_id="qc-c")
    workflow.cancel("qc-b")
    assert workflow.get_status("qc-b") == workflow.CANCELED
    (tmp_path / "gate").touch()
    assert ray.get(first, timeout=60) == "a" and ray.get(third, timeout=60) == "c"
    assert workflow.get_status("qc-b") == workflow.CANCELED
    assert not (tmp_path / "ran-b").exists()


def test_pending_workflows_outlive_their_host(wf_storage: str, tmp_path: pathlib.Path) -> None:
    _first_takes_the_slot(wf_storage, tmp_path, "qh-a")
    _job(tmp_path, "b").run_async(workflow_id="qh-b")
    assert stop_host(_runtime.canonical_url(wf_storage))  # the host and its queue in memory go
    assert workflow.get_status("qh-b") == workflow.PENDING  # the queue in storage stays
    (tmp_path / "gate").touch()
    # The next host (made by this init) finds qh-b and runs it; qh-a, whose runner died with
    # the host, is RESUMABLE as any workflow whose runner died.
    workflow.init(wf_storage, max_running_workflows=1, max_pending_workflows=5)
    assert workflow.get_output("qh-b", timeout=60) == "b"
    _until(lambda: workflow.get_status("qh-a") == workflow.RESUMABLE, "the first workflow reads RESUMABLE")


def test_a_new_host_starts_the_stored_pending_workflows_oldest_first(
    wf_storage: str, tmp_path: pathlib.Path
) -> None:
    # Ids whose byte order is not the order they were submitted in; one is deleted while no
    # host runs, so the new host reads a listed workflow that is gone.
    _first_takes_the_slot(wf_storage, tmp_path, "qo-a")
    order = ["qo-z", "qo-m", "qo-x", "qo-b"]
    for wid in order:
        _job(tmp_path, wid).run_async(workflow_id=wid)
    assert stop_host(_runtime.canonical_url(wf_storage))
    workflow.delete("qo-x")
    (tmp_path / "gate").touch()
    workflow.init(wf_storage, max_running_workflows=1, max_pending_workflows=5)
    kept = [w for w in order if w != "qo-x"]
    assert [workflow.get_output(w, timeout=60) for w in kept] == kept
    starts = [workflow.get_metadata(w)["stats"]["start_time"] for w in kept]
    assert starts == sorted(starts)  # in the order submitted
    with pytest.raises(workflow.WorkflowNotFoundError):
        workflow.get_status("qo-x")


def test_queue_limits_outlive_a_restart_of_their_host(wf_storage: str, tmp_path: pathlib.Path) -> None:
    # The host is made without limits (as a plain run_async makes it) and limited afterwards.
    # Ray restarts a dead host with the arguments it was made with, so the limits must come
    # back from storage, or every PENDING workflow would start at once.
    url = _runtime.canonical_url(wf_storage)
    host = workflow_host(url, 10.0)
    assert ray.get(host.ready.remote(), timeout=60)
    _first_takes_the_slot(wf_storage, tmp_path, "qr-a")
    _job(tmp_path, "b").run_async(workflow_id="qr-b")
    _job(tmp_path, "c").run_async(workflow_id="qr-c")
    ray.kill(host, no_restart=False)  # its process dies; Ray makes it again
    # qr-a's runner died with the old host; the new one has a free slot and starts qr-b only.
    _until(lambda: (tmp_path / "ran-b").exists(), "the restarted host started the next workflow", 60)
    time.sleep(1.0)
    assert not (tmp_path / "ran-c").exists()
    assert workflow.get_status("qr-c") == workflow.PENDING
    (tmp_path / "gate").touch()
    assert workflow.get_output("qr-b", timeout=60) == "b"
    assert workflow.get_output("qr-c", timeout=60) == "c"
    b, c = workflow.get_metadata("qr-b")["stats"], workflow.get_metadata("qr-c")["stats"]
    assert c["start_time"] >= b["end_time"]  # one at a time, still


def test_a_host_killed_for_good_behind_the_drivers_back_is_made_again(
    wf_storage: str, tmp_path: pathlib.Path
) -> None:
    # An operator (or Ray, after an __init__ that failed) ends the host for good; this driver
    # still holds its handle. The next run, limit change and queued run make a new host.
    url = _runtime.canonical_url(wf_storage)
    (tmp_path / "gate").touch()
    assert workflow.run(_job(tmp_path, "a"), workflow_id="qk-a") == "a"  # plain run: no host
    assert ray.get(_job(tmp_path, "b").run_async(workflow_id="qk-b"), timeout=60) == "b"
    ray.kill(ray.get_actor(host_name(url), namespace=NAMESPACE), no_restart=True)
    _until(lambda: _host_gone(url), "the host is gone")
    assert ray.get(_job(tmp_path, "c").run_async(workflow_id="qk-c"), timeout=60) == "c"
    ray.kill(ray.get_actor(host_name(url), namespace=NAMESPACE), no_restart=True)
    _until(lambda: _host_gone(url), "the second host is gone")
    workflow.init(wf_storage, max_running_workflows=1, max_pending_workflows=1)
    ray.kill(ray.get_actor(host_name(url), namespace=NAMESPACE), no_restart=True)
    _until(lambda: _host_gone(url), "the third host is gone")
    assert ray.get(_job(tmp_path, "d").run_async(workflow_id="qk-d"), timeout=60) == "d"


def _host_gone(url: str) -> bool:
    try:
        ray.get_actor(host_name(url), namespace=NAMESPACE)
    except ValueError:
        return True
    return False


def test_a_run_of_a_stored_resumable_id_waits_for_a_slot(wf_storage: str, tmp_path: pathlib.Path) -> None:
    # A run of a stored id resumes it; under the limits that resume waits its turn too.
    workflow.init(wf_storage, max_running_workflows=1, max_pending_workflows=5)
    _job(tmp_path, "b").run_async(workflow_id="qs-b")
    _until(lambda: (tmp_path / "ran-b").exists(), "qs-b started")
    assert stop_host(_runtime.canonical_url(wf_storage))  # its runner dies with the host
    _until(lambda: workflow.get_status("qs-b") == workflow.RESUMABLE, "qs-b reads RESUMABLE")
    first = _job(tmp_path, "a").run_async(workflow_id="qs-a")  # takes the slot
    _until(lambda: workflow.get_status("qs-a") == workflow.RUNNING, "qs-a runs")
    again = _job(tmp_path, "b").run_async(workflow_id="qs-b")
    time.sleep(1.0)
    assert workflow.get_status("qs-b") == workflow.RESUMABLE  # queued, not resumed past the limit
    (tmp_path / "gate").touch()
    assert ray.get(first, timeout=60) == "a" and ray.get(again, timeout=60) == "b"
    a, b = workflow.get_metadata("qs-a")["stats"], workflow.get_metadata("qs-b")["stats"]
    assert b["start_time"] >= a["end_time"]


def test_a_workflow_submitted_again_while_it_waits_in_the_queue_keeps_its_place(
    wf_storage: str, tmp_path: pathlib.Path
) -> None:
    # As a driver's retry after a host that died before answering would: the second submit
    # finds the id stored and queued, and must not start it past max_running.
    first = _first_takes_the_slot(wf_storage, tmp_path, "qa-a")
    _job(tmp_path, "b").run_async(workflow_id="qa-b")
    again = _job(tmp_path, "b").run_async(workflow_id="qa-b")
    time.sleep(1.0)
    assert not (tmp_path / "ran-b").exists()
    assert workflow.get_status("qa-b") == workflow.PENDING
    (tmp_path / "gate").touch()
    assert ray.get(first, timeout=60) == "a" and ray.get(again, timeout=60) == "b"
    a, b = workflow.get_metadata("qa-a")["stats"], workflow.get_metadata("qa-b")["stats"]
    assert b["start_time"] >= a["end_time"]
