"""Run by tests/test_tracing.py in a process of its own that joins the session's Ray cluster
(argv[1]): a two-step workflow run inside a span of this driver, its steps as Ray tasks in
worker processes. Every process of the job (this one, and each worker through Ray's
``worker_process_setup_hook``) sets a tracer provider that writes its finished spans as JSON
lines to one file (argv[2]), so the test sees the whole trace across processes. Prints one
JSON line: the driver's span and what the steps were handed."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor


def _line(s: ReadableSpan) -> str:
    assert s.context is not None
    return (
        json.dumps(
            {
                "name": s.name,
                "trace": format(s.context.trace_id, "032x"),
                "span": format(s.context.span_id, "016x"),
                "parent": format(s.parent.span_id, "016x") if s.parent is not None else None,
                "events": [e.name for e in s.events],
                "attributes": dict(s.attributes or {}),
                "pid": os.getpid(),
            }
        )
        + "\n"
    )


def exporting_to(path: str) -> Any:
    """A setup for a process: a tracer provider writing each finished span to ``path``."""

    def setup() -> None:
        out = open(path, "a", buffering=1)  # open for the life of the process
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=out, formatter=_line)))
        trace.set_tracer_provider(provider)

    return setup


def main() -> None:
    address, spans_file = sys.argv[1], sys.argv[2]
    exporting_to(spans_file)()

    import ray

    from actorflow import workflow
    from actorflow.engine._steps import current_step

    @workflow.step
    def price(item: str) -> dict[str, Any]:
        ctx = current_step()
        assert ctx is not None
        return {"amount": len(item) * 10, "trace": ctx.trace, "pid": os.getpid()}

    @workflow.step
    def with_tax(priced: dict[str, Any]) -> dict[str, Any]:
        return {**priced, "amount": priced["amount"] + priced["amount"] // 10}

    ray.init(
        address=address,
        logging_level="ERROR",
        runtime_env={"worker_process_setup_hook": exporting_to(spans_file)},
    )
    workflow.init(f"sqlite://{tempfile.mkdtemp()}/traced.db")
    with trace.get_tracer("test").start_as_current_span("driver") as span:
        out = with_tax.step(price.step("book")).run(workflow_id="traced-ray")
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
