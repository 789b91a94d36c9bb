"""Tracing with OpenTelemetry: one trace from an HTTP call (with the caller's W3C
``traceparent``) through the turn it runs, the message that turn sends and its delivery to
another actor, and the two-step sub-workflow it launches, every span in it, each under the
right parent; a timer's firing is a trace of its own, linked to the turn that set it.

The service runs in a process of its own (tests/_traced_service.py), because a tracer provider
is set once per process; it is actorflow.testing's, so the steps run in threads with the same
code a Ray worker runs (the context goes with the step, not through the thread). The last test
runs steps as Ray tasks and collects the spans of every process of its job, workers included
(tests/_traced_ray.py)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)

HERE = pathlib.Path(__file__).parent


@pytest.fixture(scope="module")
def spans() -> list[dict[str, Any]]:
    pytest.importorskip("opentelemetry.sdk.trace")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    done = subprocess.run(
        [sys.executable, str(HERE / "_traced_service.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _one(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name]
    assert len(found) == 1, (name, [s["name"] for s in spans])
    return found[0]


def test_one_trace_from_the_http_call_through_the_message_and_the_sub_workflow(
    spans: list[dict[str, Any]],
) -> None:
    from _traced_service import CALLER_SPAN, CALLER_TRACE

    ours = [s for s in spans if s["trace"] == CALLER_TRACE]
    http = next(s for s in ours if s["name"] == "HTTP POST" and s["parent"] == CALLER_SPAN)
    assert http["attributes"]["url.path"] == "/v1/actors/TracedShop/s1/order"
    assert http["attributes"]["http.response.status_code"] == 200
    turn = _one(ours, "turn TracedShop.order")
    assert turn["parent"] == http["span"] and "attempt" in turn["events"]
    commits = [s for s in ours if s["name"] == "commit" and s["parent"] == turn["span"]]
    kinds = [c["attributes"]["actorflow.component"] for c in commits]
    assert kinds.count("actor") == 1 and "workflow" in kinds  # the turn's, then the checkpoints
    assert all(c["attributes"].get("actorflow.conflict", False) is False for c in commits)
    # The message: delivered after the commit, under the turn that sent it; its turn below.
    deliver = _one(ours, "deliver TracedShop.note")
    assert deliver["parent"] == turn["span"]
    received = _one(ours, "turn TracedShop.note")
    assert received["parent"] == deliver["span"]
    assert any(s["name"] == "commit" and s["parent"] == received["span"] for s in ours)
    # The sub-workflow's two steps, children of the turn that launched them.
    steps = [s for s in ours if s["name"].startswith("workflow step ")]
    assert sorted(s["name"] for s in steps) == ["workflow step price", "workflow step with_tax"]
    assert all(s["parent"] == turn["span"] and s["events"] == ["attempt"] for s in steps)
    assert all(s["attributes"]["actorflow.workflow_id"] == "TracedShop:s1:1" for s in steps)
    assert not any(s["error"] for s in ours)


def test_a_timer_firing_is_a_trace_of_its_own_linked_to_the_turn_that_set_it(
    spans: list[dict[str, Any]],
) -> None:
    setter = _one(spans, "turn TracedShop.remind")
    fired = _one(spans, "timer TracedShop.nudge")
    assert fired["trace"] != setter["trace"] and fired["parent"] is None
    assert fired["links"] == [setter["span"]]
    ring = [s for s in spans if s["name"] == "turn TracedShop.note" and s["trace"] == fired["trace"]]
    assert len(ring) == 1 and ring[0]["parent"] == fired["span"]


def test_without_a_tracer_provider_nothing_is_recorded() -> None:
    from actorflow import _tracing

    # This process never set one (the traced service ran in its own).
    assert not _tracing.enabled()
    assert _tracing.carrier() is None
    with _tracing.span("anything") as current:
        assert current is None


def test_steps_run_as_ray_tasks_are_spans_of_the_trace_that_ran_the_workflow(
    ray_address: str, tmp_path: pathlib.Path
) -> None:
    """Across processes: each step of a workflow run in a driver's span runs as a Ray task in
    a worker process, is handed that span's W3C context, and its span there (exported by the
    worker's own provider, set through Ray's worker_process_setup_hook) is that span's child
    in the same trace."""
    pytest.importorskip("opentelemetry.sdk.trace")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    spans_file = tmp_path / "spans.jsonl"
    done = subprocess.run(
        [sys.executable, str(HERE / "_traced_ray.py"), ray_address, str(spans_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["step"]["amount"] == 44
    assert got["step"]["pid"] != got["pid"]  # the step ran in another process
    version, trace_id, parent_id, _flags = got["step"]["trace"]["traceparent"].split("-")
    assert (version, trace_id, parent_id) == ("00", got["trace"], got["span"])
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    driver = _one(spans, "driver")
    assert (driver["trace"], driver["span"], driver["pid"]) == (got["trace"], got["span"], got["pid"])
    steps = sorted((s for s in spans if s["name"].startswith("workflow step ")), key=lambda s: s["name"])
    assert [s["name"] for s in steps] == ["workflow step price", "workflow step with_tax"]
    for step in steps:
        assert step["pid"] != got["pid"], step  # recorded in a worker, not in the driver
        assert (step["trace"], step["parent"]) == (got["trace"], got["span"])
        assert step["events"] == ["attempt"]
        assert step["attributes"]["actorflow.workflow_id"] == "traced-ray"
