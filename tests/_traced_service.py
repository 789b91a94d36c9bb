"""Run by tests/test_tracing.py in a process of its own (a tracer provider is set once per
process, for good): one HTTP call through a turn that sends a message and launches a two-step
sub-workflow, and a timer set by a turn and fired later, on actorflow.testing's in-process
service with OpenTelemetry's in-memory exporter. Prints the finished spans as JSON lines."""

from __future__ import annotations

import json
import sys
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from actorflow import testing, workflow

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@workflow.step
def price(item: str) -> int:
    return len(item) * 10


@workflow.step
def with_tax(amount: int) -> int:
    return amount + amount // 10


@workflow.virtual_actor(name="TracedShop")
class TracedShop:
    def __init__(self) -> None:
        self.notes: list[str] = []

    def order(self, item: str, ledger: str) -> Any:
        workflow.send(TracedShop.get_or_create(ledger).note, item)
        return with_tax.step(price.step(item))

    def note(self, item: str) -> int:
        self.notes.append(item)
        return len(self.notes)

    def remind(self) -> None:
        workflow.timers.set("nudge", after=3600, method="note", args=["nudge"])


def main() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    with testing.Environment() as env:
        client = env.http()
        traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        r = client.post(
            "/v1/actors/TracedShop/s1/order",
            json={"kwargs": {"item": "book", "ledger": "l1"}},
            headers={"traceparent": traceparent},
        )
        assert r.status_code == 200 and r.json()["result"] == 44, r.text
        env.settle()
        assert env.state("TracedShop", "l1")["notes"] == ["book"]
        assert client.post("/v1/actors/TracedShop/s2/remind").status_code == 200
        env.advance(hours=1)
        assert env.state("TracedShop", "s2")["notes"] == ["nudge"]
    provider.force_flush()
    for s in exporter.get_finished_spans():
        out = {
            "name": s.name,
            "trace": format(s.context.trace_id, "032x"),
            "span": format(s.context.span_id, "016x"),
            "parent": format(s.parent.span_id, "016x") if s.parent is not None else None,
            "links": [format(link.context.span_id, "016x") for link in s.links],
            "events": [e.name for e in s.events],
            "attributes": dict(s.attributes or {}),
            "error": s.status.status_code.name == "ERROR",
        }
        sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
