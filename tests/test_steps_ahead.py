"""Steps submitted ahead of the outputs they consume (``engine._ahead``, ``engine._pipelining``).

A step whose consumers take its output whole commits its own record, under the runner's lease,
and those consumers are submitted right behind it with its ``ObjectRef``. These tests break that
on purpose: the lease renewed many times during a chain, a cancel, a failure and a continuation
in the middle of one, and a runner killed half-way. Each step tallies its runs in a file, so
counts survive any process.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import ray

from actorflow import _metrics, workflow
from actorflow.engine import _pipelining

pytestmark = [pytest.mark.usefixtures("ray_session", "wf_storage"), pytest.mark.timeout(120)]


def wait_for(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        time.sleep(0.02)


def runs(path: pathlib.Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def make_body(tally: pathlib.Path, pause: float = 0.0, fail_at: int = -1, retry_at: int = -1) -> Any:
    """A function adding one, that writes its index to ``tally`` each time it runs."""

    def add(x: int, i: int) -> int:
        with open(tally, "a") as f:
            f.write(f"{i}\n")
        if i == fail_at:
            raise ValueError(f"step {i} fails")
        if i == retry_at and runs(tally).count(i) == 1:
            raise RuntimeError("once")
        time.sleep(pause)
        return x + 1

    return add


def make_steps(tally: pathlib.Path, pause: float = 0.0, fail_at: int = -1) -> Any:
    return workflow.step(make_body(tally, pause, fail_at))


def chain(add: Any, n: int) -> Any:
    x: Any = 0
    for i in range(n):
        x = add.step(x, i)
    return x


def count_skips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every step of this process's runs that went ahead and had to be submitted again."""
    skipped: list[str] = []
    original = _pipelining.Pipelining._skipped

    def counting(self: Any, sid: str, fut: Any) -> bool:
        again = original(self, sid, fut)
        if again:
            skipped.append(sid)
        return again

    monkeypatch.setattr(_pipelining.Pipelining, "_skipped", counting)
    return skipped


def test_a_chain_runs_each_step_once_through_many_lease_renewals(
    wf_storage: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 0.6 s lease is renewed every 0.2 s: about ten renewals while the chain runs, each one
    # under steps already submitted with the lease as it was.
    workflow.init(wf_storage, lease_ttl=0.6)
    skipped = count_skips(monkeypatch)
    tally = tmp_path / "tally"
    started = time.monotonic()
    assert chain(make_steps(tally, pause=0.01), 150).run(workflow_id="renewals") == 150
    assert time.monotonic() - started > 1.5
    assert runs(tally) == list(range(150))
    # A renewed lease has the runner's token still: the tasks commit under it as it is now,
    # and no step is sent back to the runner.
    assert skipped == []


def test_a_cancel_stops_a_chain_submitted_ahead(tmp_path: pathlib.Path) -> None:
    tally = tmp_path / "tally"
    chain(make_steps(tally, pause=0.05), 60).run_async(workflow_id="cancelled-chain")
    wait_for(lambda: len(runs(tally)) >= 5)
    workflow.cancel("cancelled-chain")
    at_cancel = len(runs(tally))
    wait_for(lambda: workflow.get_status("cancelled-chain") == workflow.CANCELED)
    time.sleep(1.0)  # 20 steps' worth: any step ahead that ran would show by now
    ran = runs(tally)
    # The step running when the lease went cannot commit, so the steps behind it run nothing.
    assert ran == list(range(len(ran)))
    assert len(ran) <= at_cancel + 2


def test_a_failure_in_a_chain_stops_the_steps_behind_it(tmp_path: pathlib.Path) -> None:
    tally = tmp_path / "tally"
    add = make_steps(tally, fail_at=7)
    with pytest.raises(workflow.WorkflowExecutionError) as caught:
        chain(add.options(max_retries=0), 30).run(workflow_id="failing-chain")
    assert isinstance(caught.value.__cause__, ValueError)
    assert runs(tally) == list(range(8))
    assert workflow.get_status("failing-chain") == workflow.FAILED


def test_a_continuation_in_a_chain_feeds_the_steps_behind_it(tmp_path: pathlib.Path) -> None:
    tally = tmp_path / "tally"
    add = make_steps(tally)

    @workflow.step
    def deeper(x: int) -> Any:  # returns more steps: its output is theirs
        return add.step(add.step(x, 100), 101)

    x: Any = chain(add, 5)
    x = deeper.step(x)
    for i in range(5, 10):
        x = add.step(x, i)
    assert x.run(workflow_id="continued-chain") == 12
    assert sorted(runs(tally)) == [*range(10), 100, 101]


def test_records_written_by_the_tasks_read_as_the_runners_do(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted: list[tuple[str, float]] = []
    monkeypatch.setattr(_metrics, "inc", lambda name, labels=(), amount=1.0: counted.append((name, amount)))
    tally = tmp_path / "tally"
    step = ray.remote(make_body(tally, retry_at=2))
    node: Any = 0
    for i in range(5):
        opts = workflow.options(task_id=f"s{i}", metadata={"index": i})
        node = step.options(**opts, max_retries=1, retry_exceptions=True).bind(node, i)
    assert workflow.run(node, workflow_id="records") == 5
    for i in range(5):
        assert workflow.get_output("records", task_id=f"s{i}") == i + 1
        meta = workflow.get_metadata("records", task_id=f"s{i}")
        assert meta["user_metadata"] == {"index": i}
        assert meta["stats"]["start_time"] <= meta["stats"]["end_time"]
    assert runs(tally) == [0, 1, 2, 2, 3, 4]  # the failed attempt retried in place
    # The runner never watched s2 (s3 went ahead of it) yet counts its retry, from s3's outcome.
    assert counted.count(("actorflow_workflow_step_retries", 1)) == 1
    assert counted.count(("actorflow_workflow_steps", 1.0)) == 5


_RUNNER = """
import sys, time
import ray
from actorflow import workflow
ray.init(address=sys.argv[1], logging_level="ERROR")
workflow.init(sys.argv[2], lease_ttl=2.0)
tally = sys.argv[3]

@workflow.step
def add(x, i):
    with open(tally, "a") as f:
        f.write(f"{i}\\n")
    time.sleep(0.1)
    return x + 1

x = 0
for i in range(40):
    x = add.step(x, i)
x.run(workflow_id="killed-chain")
"""


def test_a_chain_resumed_after_its_runner_is_killed_keeps_what_its_tasks_stored(
    wf_storage: str, ray_address: str, tmp_path: pathlib.Path
) -> None:
    tally = tmp_path / "tally"
    script = tmp_path / "runner.py"
    script.write_text(_RUNNER)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, str(script), ray_address, wf_storage, str(tally)], env=env)
    try:
        wait_for(lambda: len(runs(tally)) >= 10, timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    before = runs(tally)
    wait_for(lambda: workflow.get_status("killed-chain") == workflow.RESUMABLE, timeout=30)
    assert workflow.resume("killed-chain") == 40
    after = runs(tally)
    # Every step stored by its own task before the kill is loaded, not run again: only the
    # step running at the kill (and none behind it) can run twice.
    assert sorted(set(after)) == list(range(40))
    assert len(after) - 40 <= 1
    assert after[: len(before)] == before


def test_a_step_ahead_whose_record_is_held_is_not_run_again_on_its_input(tmp_path: pathlib.Path) -> None:
    # b goes ahead of a's output; when b has run, a is finished behind it, which counts b's
    # last input in. b's own record is then held back (it unblocks nothing: its consumer also
    # waits for a slow wide join), and b was once submitted again with a's output, released by
    # then, as its argument, its second output replacing its checkpoint.
    tally = tmp_path / "tally"

    @workflow.step
    def a() -> int:
        with open(tally, "a") as f:
            f.write("a\n")
        return 1

    @workflow.step(name="b")
    def b(x: int) -> str:
        with open(tally, "a") as f:
            f.write("b\n")
        return f"b saw {x!r}"

    @workflow.step(num_cpus=0)
    def leaf(i: int) -> int:
        time.sleep(0.5)
        return i

    @workflow.step
    def join(*xs: int) -> int:
        return sum(xs)

    @workflow.step
    def d(bv: str, total: int) -> tuple[str, int]:
        return bv, total

    wide = join.step(*[leaf.step(i) for i in range(_pipelining.AHEAD_MAX_INPUTS + 1)])
    assert d.step(b.step(a.step()), wide).run(workflow_id="held-ahead") == ("b saw 1", 36)
    assert sorted(tally.read_text().split()) == ["a", "b"]  # each once
    assert workflow.get_output("held-ahead", task_id="b") == "b saw 1"  # its checkpoint


class DiesOnReturn:
    """An output whose first worker dies when it is pickled the second time: the step's task
    pickles it for the record it commits itself, then Ray pickles it as the task's return."""

    def __init__(self, marks: str) -> None:
        self.marks = marks

    def __reduce__(self) -> Any:
        with open(self.marks, "a") as f:
            f.write(f"{os.getpid()}\n")
        pids = pathlib.Path(self.marks).read_text().split()
        if pids[0] == str(os.getpid()) and pids.count(pids[0]) == 2:
            os._exit(1)  # the record is committed; Ray never gets the task's result
        return (DiesOnReturn, (self.marks,))


@pytest.mark.parametrize("retries", [0, 2])
def test_a_step_whose_worker_dies_after_it_committed_its_record_never_runs_again(
    tmp_path: pathlib.Path, retries: int
) -> None:
    # Ray runs the task again (retries 2), or reports it dead (retries 0) and the runner, which
    # would record a failure, finds the checkpoint: either way the step ran once, and its
    # record is the output it checkpointed.
    tally, marks = tmp_path / "tally", str(tmp_path / "marks")

    @workflow.step(name="a", max_retries=retries)
    def a() -> DiesOnReturn:
        with open(tally, "a") as f:
            f.write("a\n")
        return DiesOnReturn(marks)

    @workflow.step
    def b(x: DiesOnReturn) -> str:
        with open(tally, "a") as f:
            f.write("b\n")
        return type(x).__name__

    assert b.step(a.step()).run(workflow_id=f"dies-{retries}") == "DiesOnReturn"
    assert sorted(tally.read_text().split()) == ["a", "b"]
    assert isinstance(workflow.get_output(f"dies-{retries}", task_id="a"), DiesOnReturn)
