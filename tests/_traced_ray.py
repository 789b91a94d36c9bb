"""Run by tests/test_tracing.py in a process of its own that joins the session's Ray cluster
(argv[1]) with a tracer provider set: a workflow step, run as a Ray task in a worker process,
reports the trace context it was handed. Prints one JSON line."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

trace.set_tracer_provider(TracerProvider())

import ray  # noqa: E402

from actorflow import workflow  # noqa: E402
from actorflow.engine._steps import current_step  # noqa: E402


@workflow.step
def where() -> dict[str, Any]:
    ctx = current_step()
    assert ctx is not None
    return {"trace": ctx.trace, "pid": os.getpid()}


def main() -> None:
    ray.init(address=sys.argv[1], logging_level="ERROR")
    workflow.init(f"sqlite://{tempfile.mkdtemp()}/traced.db")
    with trace.get_tracer("test").start_as_current_span("driver") as span:
        out = where.step().run(workflow_id="traced-ray")
    ids = span.get_span_context()
    sys.stdout.write(
        json.dumps(
            {
                "step": out,
                "trace": format(ids.trace_id, "032x"),
                "span": format(ids.span_id, "016x"),
                "pid": os.getpid(),
            }
        )
        + "\n"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
