"""Crash safety: a workflow process killed with SIGKILL mid-run is RESUMABLE, and ``resume``
finishes it without running any finished step twice (counted outside the process)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
from _procs import child, sigkill, wait_while_alive

from actorflow import workflow
from actorflow.workflow import WorkflowStatus

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]

DRIVER = r"""
import os, sys, time
from actorflow import workflow

storage, tally, blocker = sys.argv[1:4]
workflow.init(storage)

@workflow.step
def work(name: str, x: int) -> int:
    with open(tally, "a") as f:
        f.write(name + "\n")
    if name == "mid" and not os.path.exists(blocker):
        open(blocker, "w").close()
        time.sleep(600)  # killed here, the first time only
    return x + 1

@workflow.step
def gather(*xs: int) -> int:
    return sum(xs)

head = work.step("a", work.step("b", work.step("c", 0)))
fan = [work.step(f"f{i}", head) for i in range(6)]
tail = work.step("tail", work.step("mid", gather.step(*fan)))
print("result", tail.run(workflow_id="crash-1"), flush=True)
"""


def test_sigkill_mid_workflow_then_resume(tmp_path: pathlib.Path, wf_storage: str, ray_address: str) -> None:
    tally = tmp_path / "tally"
    blocker = tmp_path / "blocker"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "RAY_ADDRESS": ray_address, "RAY_USAGE_STATS_ENABLED": "0"}
    args = [sys.executable, str(script), wf_storage, str(tally), str(blocker)]
    with child(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        wait_while_alive(proc, blocker.exists, "the driver reached the blocking step")
        assert workflow.get_status("crash-1") is WorkflowStatus.RUNNING
        sigkill(proc)

    assert workflow.get_status("crash-1") is WorkflowStatus.RESUMABLE
    assert ("crash-1", WorkflowStatus.RESUMABLE) in workflow.list_all()
    before = _counts(tally)
    assert all(n == 1 for n in before.values()), before
    assert before["mid"] == 1 and "tail" not in before

    # a + b + c -> 3; each fan step adds 1 -> 4 * 6 = 24; mid, tail -> 26
    assert workflow.resume("crash-1") == 26
    assert workflow.get_status("crash-1") is WorkflowStatus.SUCCESSFUL
    after = _counts(tally)
    # Every step that had finished ran exactly once; only the one killed mid-run ran again.
    assert after == {**{k: 1 for k in before}, "mid": 2, "tail": 1}


def _counts(path: pathlib.Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in path.read_text().split():
        out[line] = out.get(line, 0) + 1
    return out


JOBS_MODEL = r"""
import os, time
from actorflow import workflow

TALLY = os.environ["JOBS_TALLY"]
BLOCKER = os.environ["JOBS_BLOCKER"]


@workflow.step
def long_job(n: int) -> str:
    with open(TALLY, "a") as f:
        f.write("job\n")
    if not os.path.exists(BLOCKER):
        open(BLOCKER, "w").close()
        time.sleep(600)  # killed here, the first time only
    return f"job {n} done"


@workflow.virtual_actor
class Jobs:
    def __init__(self):
        self.started = 0

    def start(self):
        self.started += 1
        return long_job.step(self.started)
"""

ACTOR_DRIVER = r"""
import sys
from actorflow import workflow
from jobs_model import Jobs

workflow.init(sys.argv[1])
Jobs.get_or_create("j1").start.options(idempotency_key="start-1").run()
"""


def test_sigkill_while_an_actor_sub_workflow_runs(
    tmp_path: pathlib.Path, wf_storage: str, ray_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tally = tmp_path / "tally"
    blocker = tmp_path / "blocker"
    (tmp_path / "jobs_model.py").write_text(JOBS_MODEL)
    script = tmp_path / "actor_driver.py"
    script.write_text(ACTOR_DRIVER)
    monkeypatch.setenv("JOBS_TALLY", str(tally))
    monkeypatch.setenv("JOBS_BLOCKER", str(blocker))
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_address,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    with child([sys.executable, str(script), wf_storage], env=env) as proc:
        wait_while_alive(proc, blocker.exists, "the sub-workflow reached the blocking step")
        sigkill(proc)

    wid = "Jobs:j1:2"
    assert workflow.get_status(wid) is WorkflowStatus.RESUMABLE
    monkeypatch.syspath_prepend(str(tmp_path))
    import jobs_model  # type: ignore[import-not-found]

    jobs = jobs_model.Jobs.get("j1")
    # Repeating the call under its key resumes the same workflow instead of starting another;
    # the state change made before the return committed with the launch.
    assert jobs.start.options(idempotency_key="start-1").run() == "job 1 done"
    assert workflow.get_status(wid) is WorkflowStatus.SUCCESSFUL
    assert _counts(tally) == {"job": 2}
    sys.modules.pop("jobs_model", None)
