"""The seed document's code blocks (shared/seed/ray-workflows.rst), run verbatim.

Each block below is copied from the seed with only its import line changed from
``from ray import workflow`` to ``from actorflow import workflow``. The seed's blocks leave out
``import ray`` and ``typing`` imports and build on each other, as a reader of the page would;
the namespace the blocks run in provides those. When the seed file is present beside the repo,
a test checks that these copies still match it.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.usefixtures("ray_session")

STEPS = """
from actorflow import workflow

@workflow.step
def one() -> int:
    return 1

@workflow.step
def add(a: int, b: int) -> int:
    return a + b

output: Workflow[int] = add.step(100, one.step())
"""

WORKFLOWS = """
workflow.init(storage="/tmp/data")
assert output.run(workflow_id="run_1") == 101
assert workflow.get_status("run_1") == workflow.WorkflowStatus.SUCCESSFUL
assert workflow.get_output("run_1") == 101
"""

OBJECTS = """
@ray.remote
def hello():
    return "hello"

@workflow.step
def words() -> List[ray.ObjectRef]:
    return [hello.remote(), ray.put("world")]

@workflow.step
def concat(words: List[ray.ObjectRef]) -> str:
    return " ".join([ray.get(w) for w in words])

workflow.init()
assert concat.step(words.step()).run() == "hello world"
"""

DYNAMIC = """
@workflow.step
def add(a: int, b: int) -> int:
    return a + b

@workflow.step
def fib(n: int) -> int:
    if n <= 1:
        return n
    return add.step(fib.step(n - 1), fib.step(n - 2))

assert fib.step(10).run() == 55
"""

VIRTUAL_ACTORS = """
@workflow.virtual_actor
class Counter:
    def __init__(self):
        self.count = 0

    def incr(self):
        self.count += 1
        return self.count

    def __getstate__(self):
        return self.count

    def __setstate__(self, state):
        self.count = state

workflow.init(storage="/tmp/data")
c1 = Counter.get_or_create("counter_1")
assert c1.incr.run() == 1
assert c1.incr.run() == 2
"""

SEED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "seed" / "ray-workflows.rst"


@pytest.fixture
def seed_data_dir() -> Iterator[None]:
    """The seed writes to /tmp/data; give it a fresh one and put back whatever was there."""
    data = pathlib.Path("/tmp/data")
    saved = None
    if data.exists():
        saved = data.with_name(f"data.saved-by-actorflow-tests-{id(data)}")
        shutil.move(str(data), str(saved))
    try:
        yield
    finally:
        from actorflow.engine import _runtime

        _runtime.close_all()
        shutil.rmtree(data, ignore_errors=True)
        if saved is not None:
            shutil.move(str(saved), str(data))


def _namespace() -> dict[str, Any]:

    import ray

    from actorflow.workflow import Workflow

    return {"ray": ray, "List": list, "Workflow": Workflow, "__name__": "seed"}


def test_steps_workflows_objects_dynamic(seed_data_dir: None) -> None:
    ns = _namespace()
    for block in (STEPS, WORKFLOWS, OBJECTS, DYNAMIC):
        exec(compile(block, "<seed>", "exec"), ns)
    from actorflow import workflow

    # The blocks ran on /tmp/data: the workflow and its output are stored there.
    assert workflow.get_status("run_1") == workflow.WorkflowStatus.SUCCESSFUL
    assert pathlib.Path("/tmp/data/actorflow.db").exists()


def test_virtual_actor_block(seed_data_dir: None) -> None:
    ns = _namespace()
    exec(compile(STEPS.split("@workflow.step")[0], "<seed>", "exec"), ns)  # the page's import line
    exec(compile(VIRTUAL_ACTORS, "<seed>", "exec"), ns)
    assert ns["c1"].incr.run() == 3  # and the state is durable: a new handle sees it
    assert ns["Counter"].get("counter_1").incr.run() == 4


def test_seed_blocks_match_the_seed_document() -> None:
    if not SEED.exists():
        pytest.skip(f"seed document not found at {SEED}")
    text = SEED.read_text()
    blocks = [
        textwrap.dedent(b).strip()
        for b in re.findall(r"\.\. code-block:: python\n(?:    :caption:.*\n)?\n((?:    .*\n|\n)+)", text)
    ]
    ours = [
        b.strip().replace("from actorflow import workflow", "from ray import workflow")
        for b in (STEPS, WORKFLOWS, OBJECTS, DYNAMIC, VIRTUAL_ACTORS)
    ]
    assert ours == blocks
