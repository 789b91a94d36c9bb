"""Durable steps and workflow management, on both storage backends."""

from __future__ import annotations

import asyncio
import pathlib
import threading
import time
from typing import Any

import pytest
import ray

from actorflow import workflow
from actorflow.errors import (
    ConfigError,
    InvalidDefinitionError,
    InvalidIdError,
    SerializationError,
    WorkflowCancelledError,
    WorkflowNotFoundError,
    WorkflowRunningError,
    WorkflowStepNotFoundError,
)
from actorflow.workflow import WorkflowStatus

pytestmark = pytest.mark.usefixtures("ray_session", "wf_storage")


def wait_for(cond: Any, timeout: float = 30.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class Tally:
    """Counts step executions in a file, so counts survive any process."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = str(path)

    def hit(self, name: str) -> None:
        with open(self.path, "a") as f:
            f.write(name + "\n")

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        try:
            lines = pathlib.Path(self.path).read_text().split()
        except FileNotFoundError:
            return out
        for line in lines:
            out[line] = out.get(line, 0) + 1
        return out


@workflow.step
def add(a: int, b: int) -> int:
    return a + b


@workflow.step
def total(values: list[int]) -> int:
    return sum(values)


def test_lists_of_steps_as_arguments_and_shared_nodes() -> None:
    shared = add.step(1, 1)
    parts = [add.step(shared, i) for i in range(5)]
    assert total.step([*parts, shared]).run(workflow_id="lists") == sum(2 + i for i in range(5)) + 2
    # the shared node is one step
    meta = workflow.get_metadata("lists", "add")
    assert meta["status"] == "SUCCESSFUL"
    with pytest.raises(WorkflowStepNotFoundError):
        workflow.get_metadata("lists", "add:6")


def test_status_output_and_metadata(tmp_path: pathlib.Path) -> None:
    @workflow.step(name="slow_add", metadata={"team": "billing"})
    def slow_add(a: int, b: int) -> int:
        time.sleep(0.2)
        return a + b

    assert slow_add.step(2, 3).run(workflow_id="meta-1", metadata={"order": 7}) == 5
    assert workflow.get_status("meta-1") is WorkflowStatus.SUCCESSFUL
    assert workflow.get_output("meta-1") == 5
    meta = workflow.get_metadata("meta-1")
    assert meta["status"] == "SUCCESSFUL"
    assert meta["user_metadata"] == {"order": 7}
    assert meta["stats"]["end_time"] >= meta["stats"]["start_time"] + 0.2
    step = workflow.get_metadata("meta-1", "slow_add")
    assert step["user_metadata"] == {"team": "billing"}
    assert step["stats"]["end_time"] >= step["stats"]["start_time"] + 0.2
    assert workflow.get_metadata("meta-1", task_id="slow_add") == step


def test_run_async_is_an_awaitable_object_ref(tmp_path: pathlib.Path) -> None:
    gate = tmp_path / "gate"

    @workflow.step
    def wait_gate(x: int) -> int:
        while not gate.exists():
            time.sleep(0.02)
        return x * 2

    ref = wait_gate.step(21).run_async(workflow_id="async-1")
    assert isinstance(ref, ray.ObjectRef)
    wait_for(lambda: workflow.get_status("async-1") is WorkflowStatus.RUNNING)
    assert ("async-1", WorkflowStatus.RUNNING) in workflow.list_all(WorkflowStatus.RUNNING)
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(workflow.get_output("async-1", timeout=60)))
    t.start()
    time.sleep(0.3)
    assert not result  # get_output waits while the workflow runs
    gate.touch()
    assert ray.get(ref, timeout=60) == 42
    t.join(timeout=60)
    assert result == [42]

    async def awaited() -> Any:
        return await add.step(1, 2).run_async(workflow_id="async-2")

    assert asyncio.run(awaited()) == 3
    assert {"async-1", "async-2"} <= {w for w, _ in workflow.list_all({"SUCCESSFUL"})}


def test_retries_and_catch_exceptions(tmp_path: pathlib.Path) -> None:
    tally = Tally(tmp_path / "tally")

    def flaky_body(fail_times: int) -> str:
        tally.hit("flaky")
        if tally.counts()["flaky"] <= fail_times:
            raise ValueError("not yet")
        return "done"

    flaky = workflow.step(max_retries=2)(flaky_body)
    assert flaky.step(2).run(workflow_id="retry-ok") == "done"
    assert tally.counts()["flaky"] == 3

    tally.path = str(tmp_path / "tally2")
    with pytest.raises(ValueError, match="not yet"):
        flaky.options(max_retries=1).step(5).run(workflow_id="retry-fail")
    assert tally.counts()["flaky"] == 2
    assert workflow.get_status("retry-fail") is WorkflowStatus.FAILED
    assert workflow.get_metadata("retry-fail")["error"]["type"] == "ValueError"

    @workflow.step(catch_exceptions=True, max_retries=0)
    def boom() -> int:
        raise KeyError("k")

    result, err = boom.step().run(workflow_id="caught")
    assert result is None and isinstance(err, KeyError)
    ok, none = add.options(catch_exceptions=True).step(1, 2).run(workflow_id="caught-ok")
    assert (ok, none) == (3, None)


def test_existing_id_resumes_and_finished_steps_never_rerun(tmp_path: pathlib.Path) -> None:
    tally = Tally(tmp_path / "tally")
    flag = tmp_path / "fail"
    flag.touch()

    @workflow.step(max_retries=0)
    def counted(name: str, x: int) -> int:
        tally.hit(name)
        if name == "c" and flag.exists():
            raise RuntimeError("c fails while the flag exists")
        return x + 1

    wf = counted.step("c", counted.step("b", counted.step("a", 0)))
    with pytest.raises(RuntimeError):
        wf.run(workflow_id="resume-1")
    assert workflow.get_status("resume-1") is WorkflowStatus.FAILED
    assert tally.counts() == {"a": 1, "b": 1, "c": 1}
    flag.unlink()
    assert workflow.resume("resume-1") == 3
    assert tally.counts() == {"a": 1, "b": 1, "c": 2}
    # Running the id again returns the stored output without running anything.
    assert wf.run(workflow_id="resume-1") == 3
    assert workflow.resume("resume-1") == 3
    assert tally.counts() == {"a": 1, "b": 1, "c": 2}


def test_resume_all_and_list_filters(tmp_path: pathlib.Path) -> None:
    flag = tmp_path / "fail"
    flag.touch()

    @workflow.step(max_retries=0)
    def fragile(x: int) -> int:
        if flag.exists():
            raise RuntimeError("fragile")
        return x

    for i in range(3):
        with pytest.raises(RuntimeError):
            fragile.step(i).run(workflow_id=f"ra-{i}")
    assert sorted(w for w, _ in workflow.list_all("FAILED")) == ["ra-0", "ra-1", "ra-2"]
    assert workflow.resume_all() == []  # FAILED ones only when asked
    flag.unlink()
    refs = workflow.resume_all(include_failed=True)
    assert sorted(ray.get([r for _, r in refs], timeout=60)) == [0, 1, 2]
    assert workflow.list_all({WorkflowStatus.FAILED}) == []
    with pytest.raises(ConfigError):
        workflow.list_all("NOT_A_STATUS")


def test_a_runner_presumed_dead_cannot_write_into_a_delete(monkeypatch: pytest.MonkeyPatch) -> None:
    # The runner of a RESUMABLE workflow may still be alive (a paused process) and still hold
    # its lease's exact bytes, as a step's task that commits its own record does. Its commit
    # landing while the delete sweeps must not leave a checkpoint for the next run of the id.
    from actorflow.engine import _runtime
    from actorflow.engine._store import Lease, k_lease, k_meta, k_step
    from actorflow.storage import Batch

    assert add.step(1, 2).run(workflow_id="zombie") == 3
    rt = _runtime.default_runtime()
    meta = rt.blocking(rt.storage.get(k_meta("zombie")))
    lease = Lease.new(-1.0).encode()  # lapsed: the workflow reads RESUMABLE
    running = meta.replace(b'"SUCCESSFUL"', b'"RUNNING"')
    orphaned = Batch().put(k_meta("zombie"), running).put(k_lease("zombie"), lease)
    assert rt.blocking(rt.storage.commit(orphaned))
    assert workflow.get_status("zombie") is WorkflowStatus.RESUMABLE
    sweep, landed = rt.storage.delete_prefix, []

    async def sweep_then_zombie_commits(prefix: str) -> int:
        n = await sweep(prefix)
        if prefix.endswith("/s/"):
            zombie = Batch().require(k_lease("zombie"), lease).put(k_step("zombie", "add"), b"stale")
            landed.append(await rt.storage.commit(zombie))
        return n

    monkeypatch.setattr(rt.storage, "delete_prefix", sweep_then_zombie_commits)
    workflow.delete("zombie")
    assert landed == [False]
    assert rt.blocking(rt.storage.list_keys("wf/zombie/s/")) == []


def test_cancel_and_delete(tmp_path: pathlib.Path) -> None:
    started = tmp_path / "started"

    @workflow.step
    def forever() -> int:
        started.touch()
        time.sleep(120)
        return 0

    ref = add.step(forever.step(), 1).run_async(workflow_id="cancel-1")
    wait_for(started.exists)
    with pytest.raises(WorkflowRunningError):
        workflow.delete("cancel-1")
    workflow.cancel("cancel-1")
    assert workflow.get_status("cancel-1") is WorkflowStatus.CANCELED
    with pytest.raises(WorkflowCancelledError):
        ray.get(ref, timeout=60)
    with pytest.raises(WorkflowCancelledError):
        workflow.resume("cancel-1")
    workflow.cancel("cancel-1")  # idempotent
    workflow.delete("cancel-1")
    with pytest.raises(WorkflowNotFoundError, match="cancel-1"):
        workflow.get_status("cancel-1")
    # The id is free again, with no stale checkpoints.
    assert add.step(2, 2).run(workflow_id="cancel-1") == 4


def test_ray2_front_with_bind_options_and_continuation() -> None:
    @ray.remote
    def double(x: int) -> int:
        return 2 * x

    @ray.remote
    def plus(a: int, b: int) -> int:
        return a + b

    @ray.remote
    def countdown(n: int) -> Any:
        if n == 0:
            return "liftoff"
        return workflow.continuation(countdown.bind(n - 1))

    dag = plus.bind(double.options(**workflow.options(task_id="twice")).bind(5), double.bind(1))
    assert workflow.run(dag, workflow_id="ray2-1") == 12
    assert workflow.get_metadata("ray2-1", task_id="twice")["status"] == "SUCCESSFUL"
    assert workflow.run(countdown.bind(5), workflow_id="ray2-2") == "liftoff"
    assert ray.get(workflow.run_async(plus.bind(1, 2), workflow_id="ray2-3"), timeout=60) == 3
    with pytest.raises(ConfigError):
        workflow.options(task_idd="x")


def test_checkpoint_false_reruns_on_resume(tmp_path: pathlib.Path) -> None:
    tally = Tally(tmp_path / "tally")
    flag = tmp_path / "fail"
    flag.touch()

    @workflow.step(checkpoint=False)
    def volatile(x: int) -> int:
        tally.hit("volatile")
        return x

    @workflow.step(max_retries=0)
    def last(x: int) -> int:
        if flag.exists():
            raise RuntimeError("later")
        return x

    with pytest.raises(RuntimeError):
        last.step(volatile.step(7)).run(workflow_id="nockpt")
    flag.unlink()
    assert workflow.resume("nockpt") == 7
    assert tally.counts() == {"volatile": 2}


# ------------------------------------------------------------------ bad input changes nothing
def test_unserializable_arguments_name_the_step() -> None:
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="add"):
        add.step(1, lock).run(workflow_id="bad-args")  # type: ignore[arg-type]
    with pytest.raises(WorkflowNotFoundError):
        workflow.get_status("bad-args")
    assert workflow.list_all() == []


@pytest.mark.parametrize("bad", ["", "x" * 257, "has space", "slash/id", "ünïcode", "a*b"])
def test_bad_workflow_ids(bad: str) -> None:
    with pytest.raises(InvalidIdError):
        add.step(1, 2).run(workflow_id=bad)
    assert workflow.list_all() == []


def test_wrong_arguments_and_options() -> None:
    with pytest.raises(TypeError, match="add"):
        add.step(1)  # type: ignore[call-arg]
    with pytest.raises(ConfigError):
        workflow.step(max_retries=-1)
    with pytest.raises(InvalidDefinitionError) as caught:  # a ValueError, as with Ray
        workflow.step(metadata={"x": object()})
    assert isinstance(caught.value, ValueError) and isinstance(caught.value.__cause__, SerializationError)
    with pytest.raises(ConfigError):
        workflow.step(num_cpuz=1)
    with pytest.raises(InvalidIdError):
        workflow.step(name="a:b")


def test_unknown_ids_raise_not_found() -> None:
    for call in (
        workflow.resume,
        workflow.get_status,
        workflow.get_output,
        workflow.delete,
        workflow.get_metadata,
        workflow.cancel,
    ):
        with pytest.raises(WorkflowNotFoundError, match="nope-42"):
            call("nope-42")


def test_unknown_storage_scheme_names_the_url() -> None:
    with pytest.raises(ConfigError, match="ftp://example/x"):
        workflow.init(storage="ftp://example/x")
