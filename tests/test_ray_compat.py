"""Ray's ``ray.workflow`` behaviour that code converted by renaming the import relies on, each
from Ray's documentation: the module's status names and error classes; a failed workflow
raising ``WorkflowExecutionError`` with the step's exception as its cause; one step's output by
``task_id`` (2.x) or ``name`` (1.x) and ``get_output_async``; ``retry_exceptions`` deciding
whether a task's application error is retried; ``resume_async`` reading RUNNING as soon as it
returns, with a new start time; no ``end_time`` while a workflow runs or once it is cancelled.
"""

from __future__ import annotations

import pathlib
import threading
import time
from typing import Any

import pytest
import ray

from actorflow import workflow
from actorflow.engine import WorkflowStatus
from actorflow.errors import ActorError, ActorNotFoundError

pytestmark = pytest.mark.usefixtures("wf_storage", "ray_session")

COUNTS: dict[str, str] = {}  # where a test's tasks count their runs (a file; tasks run elsewhere)


def runs(path: str) -> int:
    p = pathlib.Path(path)
    return len(p.read_text().split()) if p.exists() else 0


def test_status_names_and_error_classes_are_rays() -> None:
    for name in ("RUNNING", "SUCCESSFUL", "FAILED", "RESUMABLE", "CANCELED", "PENDING"):
        assert getattr(workflow, name) is WorkflowStatus[name]
    assert issubclass(workflow.WorkflowExecutionError, workflow.WorkflowError)
    assert workflow.WorkflowCancellationError is workflow.WorkflowCancelledError
    assert issubclass(workflow.WorkflowNotFoundError, workflow.WorkflowError)


@workflow.step(max_retries=0)
def fails(message: str) -> int:
    raise ValueError(message)


@workflow.step
def succeed(x: int) -> int:
    return x + 1


def test_a_failed_workflow_raises_workflow_execution_error_caused_by_the_step() -> None:
    with pytest.raises(workflow.WorkflowExecutionError) as caught:
        succeed.step(fails.step("card declined")).run(workflow_id="exec-err")
    err = caught.value
    assert isinstance(err, ValueError)  # code that caught the step's ValueError still does
    assert isinstance(err.__cause__, ValueError) and str(err.__cause__) == "card declined"
    assert err.workflow_id == "exec-err" and "Workflow[id=exec-err] failed during execution" in str(err)
    assert workflow.get_status("exec-err") == workflow.FAILED
    with pytest.raises(workflow.WorkflowExecutionError) as again:
        workflow.get_output("exec-err")
    assert str(again.value.__cause__) == "card declined"


def test_a_cancelled_workflows_output_raises_workflow_cancellation_error() -> None:
    @workflow.step
    def slow() -> int:
        time.sleep(5)
        return 1

    ref = slow.step().run_async(workflow_id="to-cancel")
    deadline = time.monotonic() + 30
    while workflow.get_status("to-cancel") != workflow.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "end_time" not in workflow.get_metadata("to-cancel")["stats"]  # none while it runs
    workflow.cancel("to-cancel")
    assert workflow.get_status("to-cancel") == workflow.CANCELED
    assert "end_time" not in workflow.get_metadata("to-cancel")["stats"]  # nor once cancelled
    with pytest.raises(workflow.WorkflowCancellationError):
        workflow.get_output("to-cancel")
    with pytest.raises(ray.exceptions.RayTaskError):  # its ObjectRef says so too
        ray.get(ref, timeout=60)


@ray.remote
def double(x: int) -> int:
    return 2 * x


@ray.remote
def plus(x: int, y: int) -> int:
    return x + y


def test_one_tasks_output_by_task_id_or_name_and_get_output_async() -> None:
    first = double.options(**workflow.options(task_id="first")).bind(5)
    dag = plus.options(**workflow.options(task_id="last")).bind(first, 1)
    assert workflow.run(dag, workflow_id="outputs") == 11
    assert workflow.get_output("outputs", task_id="first") == 10  # Ray 2.x
    assert workflow.get_output("outputs", name="first") == 10  # Ray 1.x
    assert ray.get(workflow.get_output_async("outputs")) == 11
    assert ray.get(workflow.get_output_async("outputs", task_id="first")) == 10
    with pytest.raises(workflow.WorkflowError):
        workflow.get_output("outputs", task_id="no-such-task")


def test_retry_exceptions_decides_whether_an_application_error_is_retried(tmp_path: pathlib.Path) -> None:
    counter = str(tmp_path / "count")

    def make(**options: Any) -> Any:
        def flaky(path: str) -> None:
            with open(path, "a") as f:
                f.write("run\n")
            raise RuntimeError("always")

        return ray.remote(**options)(flaky) if options else ray.remote(flaky)

    once = make(max_retries=10, retry_exceptions=False)
    with pytest.raises(workflow.WorkflowExecutionError):
        workflow.run(once.bind(counter), workflow_id="no-retries")
    assert runs(counter) == 1  # asked to run once: it ran once
    pathlib.Path(counter).unlink()
    thrice = make(max_retries=2, retry_exceptions=True)
    with pytest.raises(workflow.WorkflowExecutionError):
        workflow.run(thrice.bind(counter), workflow_id="two-retries")
    assert runs(counter) == 3
    pathlib.Path(counter).unlink()
    with pytest.raises(workflow.WorkflowExecutionError):
        workflow.run(make().bind(counter), workflow_id="ray-default")
    assert runs(counter) == 1  # Ray's default: application errors are not retried


@workflow.step(max_retries=0)
def until_flag(path: str) -> str:
    if not pathlib.Path(path).exists():
        raise RuntimeError("no flag yet")
    time.sleep(1.0)
    return "done"


def test_resume_async_reads_running_at_once_with_a_new_start_time(tmp_path: pathlib.Path) -> None:
    flag = str(tmp_path / "flag")
    with pytest.raises(workflow.WorkflowExecutionError):
        until_flag.step(flag).run(workflow_id="resumed")
    first_start = workflow.get_metadata("resumed")["stats"]["start_time"]
    assert workflow.get_status("resumed") == workflow.FAILED
    pathlib.Path(flag).write_text("go")
    time.sleep(0.05)
    ref = workflow.resume_async("resumed")
    assert workflow.get_status("resumed") == workflow.RUNNING  # as soon as resume_async returns
    meta = workflow.get_metadata("resumed")
    assert meta["stats"]["start_time"] > first_start and "end_time" not in meta["stats"]
    assert ray.get(ref) == "done"
    stats = workflow.get_metadata("resumed")["stats"]
    assert stats["end_time"] >= stats["start_time"] > first_start


def test_resuming_from_threads_at_once_runs_the_workflow_once(tmp_path: pathlib.Path) -> None:
    flag = str(tmp_path / "flag")
    with pytest.raises(workflow.WorkflowExecutionError):
        until_flag.step(flag).run(workflow_id="raced")
    pathlib.Path(flag).write_text("go")
    refs: list[Any] = []
    threads = [threading.Thread(target=lambda: refs.append(workflow.resume_async("raced"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert [ray.get(r) for r in refs] == ["done"] * 3
    assert workflow.get_metadata("raced", task_id="until_flag")["stats"]["attempts"] == 1


DRIVER = r"""
import os, sys, time
from actorflow import workflow

storage, tally, go = sys.argv[1:4]
workflow.init(storage)

@workflow.step
def leg(n: int, before: int) -> int:
    with open(tally, "a") as f:
        f.write(f"leg{n}\n")
    while n == 0 and not os.path.exists(go):  # the first leg holds until the test says go
        time.sleep(0.05)
    return before + n

wf = leg.step(0, 0)
for n in range(1, 5):
    wf = leg.step(n, wf)
workflow.run_async(wf, workflow_id="fire-and-forget")  # five steps, one after another
print("leaving", flush=True)
"""


@pytest.mark.slow
def test_a_workflow_started_by_a_driver_that_exits_runs_to_the_end(
    tmp_path: pathlib.Path, wf_storage: str, ray_address: str
) -> None:
    """As with Ray: run_async from a short-lived script is fire and forget. The workflow runs
    in a detached actor that outlives the driver; another process sees it finish, each step once."""
    import os
    import subprocess
    import sys

    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    tally, go = tmp_path / "tally", tmp_path / "go"
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    done = subprocess.run(
        [sys.executable, str(script), wf_storage, str(tally), str(go)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "leaving" in done.stdout, done.stderr[-2000:]
    assert workflow.get_status("fire-and-forget") == workflow.RUNNING  # the driver is gone
    go.touch()
    deadline = time.monotonic() + 90
    while (status := workflow.get_status("fire-and-forget")) != workflow.SUCCESSFUL:
        assert status == workflow.RUNNING, status
        assert time.monotonic() < deadline, "the workflow did not finish without its driver"
        time.sleep(0.2)
    assert workflow.get_output("fire-and-forget") == 0 + 1 + 2 + 3 + 4
    assert tally.read_text().split() == ["leg0", "leg1", "leg2", "leg3", "leg4"]  # each once


TWO_DRIVERS = r"""
import sys
from actorflow import workflow

storage, tally, name = sys.argv[1:4]
workflow.init(storage)

@workflow.step
def leg(wid: str, n: int) -> int:
    with open(tally, "a") as f:
        f.write(f"{wid}/{n}\n")
    return n

@workflow.step
def total(a: int, b: int) -> int:
    return a + b

for wid in [f"{name}-{i}" for i in range(10)] + ["shared"]:
    workflow.run_async(total.step(leg.step(wid, 1), leg.step(wid, 2)), workflow_id=wid)
print("leaving", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("storage_url", ["redis"], indirect=True)
def test_two_drivers_submitting_at_once_share_one_host_and_run_each_step_once(
    tmp_path: pathlib.Path, wf_storage: str, ray_address: str
) -> None:
    """Two short-lived scripts start at the same moment on one storage with no workflow host
    yet: they race to create it, each submits ten workflows of its own and both submit one
    with the same id, and both exit. Every workflow ends, each step ran once, the shared one
    once in all."""
    import collections
    import os
    import subprocess
    import sys

    script, tally = tmp_path / "driver.py", tmp_path / "tally"
    script.write_text(TWO_DRIVERS)
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    drivers = [
        subprocess.Popen(
            [sys.executable, str(script), wf_storage, str(tally), name],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("d1", "d2")
    ]
    for proc in drivers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "leaving" in out, err[-2000:]
    wids = [f"{d}-{i}" for d in ("d1", "d2") for i in range(10)] + ["shared"]
    deadline = time.monotonic() + 90
    while any(workflow.get_status(w) != workflow.SUCCESSFUL for w in wids):
        assert time.monotonic() < deadline, {w: workflow.get_status(w) for w in wids}
        time.sleep(0.2)
    assert {w: workflow.get_output(w) for w in wids} == dict.fromkeys(wids, 3)
    ran = collections.Counter(tally.read_text().split())
    assert ran == collections.Counter(f"{w}/{n}" for w in wids for n in (1, 2))  # each once


def test_bad_metadata_and_a_half_custom_state_class_are_value_errors() -> None:
    @workflow.step
    def one() -> int:
        return 1

    for bad in ("not a dict", {"x": object()}, {"nan": float("nan")}):
        with pytest.raises(ValueError, match="metadata"):
            one.step().run(workflow_id="bad-metadata", metadata=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="metadata"):
            one.options(metadata=bad).step()  # type: ignore[arg-type]
    with pytest.raises(workflow.WorkflowNotFoundError):
        workflow.get_status("bad-metadata")  # nothing was stored
    with pytest.raises(ValueError, match="define both __getstate__ and __setstate__"):

        @workflow.virtual_actor
        class OnlySetstate:
            def __init__(self) -> None:
                self.x = 1

            def __setstate__(self, state: Any) -> None:
                self.x = state


@ray.remote
def countdown(n: int) -> Any:
    """Ray's recursion idiom: the same function is a workflow's task and a plain call."""
    if n == 0:
        return "liftoff"
    return workflow.continuation(countdown.bind(n - 1))


def test_continuation_outside_a_workflow_runs_the_dag_and_refuses_an_object_ref() -> None:
    assert workflow.run(countdown.bind(3), workflow_id="countdown") == "liftoff"  # durable
    assert ray.get(countdown.remote(3)) == "liftoff"  # a plain Ray call: each level runs the next
    with pytest.raises(TypeError, match="continuation takes a DAG"):
        workflow.continuation(countdown.remote(0))
    with pytest.raises(TypeError):
        workflow.continuation(42)


@ray.remote
def ten() -> int:
    return 10


@ray.remote
def broken() -> int:
    raise ValueError("inner step failed")


@ray.remote
def continue_with(inner: str) -> Any:
    return workflow.continuation((ten if inner == "ten" else broken).bind())


@ray.remote
def descend(n: int) -> Any:
    if n == 1:
        raise ValueError(f"depth {n}")
    return workflow.continuation(descend.bind(n - 1))


def test_catch_exceptions_covers_what_a_continuation_returns() -> None:
    catching = workflow.options(catch_exceptions=True)
    assert workflow.run(continue_with.options(**catching).bind("ten"), workflow_id="c-ok") == (10, None)
    value, err = workflow.run(continue_with.options(**catching).bind("broken"), workflow_id="c-err")
    assert value is None and isinstance(err, ValueError) and str(err) == "inner step failed"
    assert workflow.get_status("c-err") == workflow.SUCCESSFUL  # caught: the workflow did not fail
    value, err = workflow.run(descend.options(**catching).bind(3), workflow_id="c-deep")
    assert value is None and isinstance(err, ValueError) and str(err) == "depth 1"


@workflow.step
def twenty() -> int:
    return 20


@workflow.step(max_retries=0)
def refuses() -> int:
    raise KeyError("nope")


@workflow.step(catch_exceptions=True)
def returns_a_step(good: bool) -> Any:
    return twenty.step() if good else refuses.step()


def test_catch_exceptions_covers_a_returned_step_in_the_1x_api() -> None:
    assert returns_a_step.step(True).run(workflow_id="s-ok") == (20, None)
    value, err = returns_a_step.step(False).run(workflow_id="s-err")
    assert value is None and isinstance(err, KeyError)
    assert workflow.resume("s-err")[0] is None  # resuming finds the caught outcome stored


@workflow.options(task_id="greet", metadata={"team": "payments"})
@ray.remote
def greet(name: str) -> str:
    return f"hello {name}"


def test_workflow_options_as_a_decorator_on_a_remote_function() -> None:
    assert workflow.run(greet.bind("ann"), workflow_id="decorated") == "hello ann"
    step = workflow.get_metadata("decorated", task_id="greet")
    assert step["user_metadata"] == {"team": "payments"}
    with pytest.raises(TypeError, match=r"above @ray\.remote"):
        workflow.options(task_id="x")(lambda: 1)


def test_dags_built_on_an_input_node_take_the_runs_inputs() -> None:
    from ray.dag import InputNode

    with InputNode() as inp:
        dag = plus.bind(double.bind(inp[0]), inp.y)
    assert workflow.run(dag, 5, y=1, workflow_id="inputs") == 11
    assert workflow.run(dag, 7, y=2, workflow_id="inputs-2") == 16  # one DAG, two runs
    with InputNode() as whole:
        single = double.bind(whole)
    assert workflow.run(single, 21, workflow_id="single-input") == 42
    assert ray.get(workflow.run_async(single, 4, workflow_id="single-async")) == 8
    with pytest.raises(TypeError, match="takes inputs"):
        workflow.run(dag, workflow_id="no-inputs")
    with pytest.raises(TypeError, match="without an InputNode"):
        workflow.run(double.bind(1), 5, workflow_id="stray-input")
    with pytest.raises(workflow.WorkflowNotFoundError):
        workflow.get_status("no-inputs")  # refused before anything was stored


@workflow.virtual_actor(name="CompatLedger")
class CompatLedger:
    def __init__(self, owner: str) -> None:  # needs an argument: calls do not activate it
        self.owner = owner

    @workflow.virtual_actor.readonly
    def whose(self) -> str:
        return self.owner


def test_get_actor_and_ready_as_in_ray_1x() -> None:
    CompatLedger.get_or_create("ledger-1", "ann")
    handle = workflow.get_actor("ledger-1")
    assert handle.actor_type == "CompatLedger" and handle.whose.run() == "ann"
    assert ray.get(handle.ready()) is True
    with pytest.raises(ActorNotFoundError, match="no imported actor type"):
        workflow.get_actor("nobody-has-this-id")
    with pytest.raises(ActorNotFoundError):
        CompatLedger.get("ledger-2")  # a class whose calls do not activate it: must exist


def test_unknown_ids_are_value_errors_as_with_ray() -> None:
    for call in (
        lambda: workflow.get_status("no-such-workflow"),
        lambda: workflow.get_metadata("no-such-workflow"),
        lambda: workflow.get_output("no-such-workflow"),
    ):
        with pytest.raises(ValueError):
            call()
        with pytest.raises(workflow.WorkflowNotFoundError):
            call()
    assert workflow.run(succeed.step(1), workflow_id="known") == 2
    with pytest.raises(ValueError):
        workflow.get_metadata("known", task_id="no-such-step")


@ray.remote
def kinds(xs: list[Any], d: dict[str, Any], top: int) -> tuple[list[str], dict[str, str], str, int]:
    total = ray.get(xs[0]) + ray.get(d["a"]) + top
    named = {k: type(v).__name__ for k, v in d.items()}
    return [type(x).__name__ for x in xs], named, type(top).__name__, total


def test_a_node_nested_in_a_list_or_dict_arrives_as_an_object_ref_as_with_ray() -> None:
    dag = kinds.bind([double.bind(1)], {"a": double.bind(2)}, double.bind(3))
    expected = (["ObjectRef"], {"a": "ObjectRef"}, "int", 2 + 4 + 6)
    assert ray.get(dag.execute()) == expected  # what plain Ray does
    assert workflow.run(dag, workflow_id="nested-refs") == expected


@ray.remote
def put_five() -> Any:
    return ray.put(5)


@ray.remote
def receive(ref: Any, counter: str) -> tuple[str, int]:
    with open(counter, "a") as f:
        f.write("run\n")
    if runs(counter) == 1:
        raise RuntimeError("first attempt fails")
    return type(ref).__name__, ray.get(ref)


def test_an_object_ref_a_task_returns_reaches_the_next_task_as_an_object_ref(tmp_path: pathlib.Path) -> None:
    counter = str(tmp_path / "count")
    dag = receive.bind(put_five.bind(), counter)
    with pytest.raises(workflow.WorkflowExecutionError):
        workflow.run(dag, workflow_id="returned-ref")
    # Resumed, the stored ObjectRef comes back from its checkpoint, still as an ObjectRef.
    assert workflow.resume("returned-ref") == ("ObjectRef", 5)
    assert runs(counter) == 2


@workflow.virtual_actor(name="CompatCounter")
class CompatCounter:
    def __init__(self) -> None:
        self.count = 0
        self.seen: list[int] = []

    def incr(self, n: int) -> Any:
        """Ray 1.x's recursion through a nested actor step: each level sees the state the level
        before it committed."""
        self.count += 1
        self.seen.append(self.count)
        if n > 1:
            return self.incr.step(n - 1)
        return self.count

    @workflow.virtual_actor.readonly
    def history(self) -> list[int]:
        return self.seen


def test_self_method_step_inside_an_actor_method_as_in_ray_1x() -> None:
    counter = CompatCounter.get_or_create("c-1")
    assert counter.incr.run(3) == 3
    assert counter.history.run() == [1, 2, 3]
    assert counter.incr.run(1) == 4
    with pytest.raises(ActorError, match=r"works inside an actor's method; elsewhere use Cls\.get"):
        CompatCounter.cls.incr.step(1)  # the method's .step outside any actor's turn


@ray.remote
def shapes(*xs: Any) -> list[Any]:
    return [[type(y).__name__ for y in x] if isinstance(x, list) else type(x).__name__ for x in xs]


def test_a_wide_join_gets_its_arguments_as_a_narrow_one_does() -> None:
    # Past 64 arguments they travel to the task in one object; what the task sees is the same.
    dag = shapes.bind(put_five.bind(), [double.bind(1)], *[double.bind(i) for i in range(100)])
    expected = ["ObjectRef", ["ObjectRef"], *["int"] * 100]
    assert ray.get(dag.execute()) == expected
    assert workflow.run(dag, workflow_id="wide-join") == expected
    assert workflow.run(
        plus_all.step(*[succeed.step(i) for i in range(100)]), workflow_id="wide-steps"
    ) == sum(range(1, 101))


@workflow.step
def plus_all(*xs: int) -> int:
    return sum(xs)
