"""The metrics' merge of several processes (what ``GET /metrics`` does with Ray's agents),
without a cluster; the service's metrics after a real load are in tests/test_serve.py."""

from __future__ import annotations

import threading
from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from actorflow import _metrics

RAY = 'Component="core_worker",NodeAddress="10.0.0.{node}",SessionName="s",Version="2.60.0",WorkerId="{w}"'


def _process(node: int, worker: str, calls: float, cached: float, backlog: float, under_1ms: float) -> str:
    """One process's actorflow metrics as Ray's agent exports what ``_RayExport`` set: a gauge
    per instrument, a series per sample (plus one of Ray's own metrics)."""
    ray = RAY.format(node=node, w=worker)
    call = 'method="add",status="ok",type="Counter"'
    h = "ray_actorflow_call_duration_seconds"
    return f"""# HELP ray_actorflow_calls calls
# TYPE ray_actorflow_calls gauge
ray_actorflow_calls{{{ray},{call},le="",sample="actorflow_calls_total"}} {calls}
# HELP {h} durations
# TYPE {h} gauge
{h}{{{ray},{call},le="0.001",sample="actorflow_call_duration_seconds_bucket"}} {under_1ms}
{h}{{{ray},{call},le="+Inf",sample="actorflow_call_duration_seconds_bucket"}} {calls}
{h}{{{ray},{call},le="",sample="actorflow_call_duration_seconds_count"}} {calls}
{h}{{{ray},{call},le="",sample="actorflow_call_duration_seconds_sum"}} {calls * 0.002}
# HELP ray_actorflow_cached_actors cached
# TYPE ray_actorflow_cached_actors gauge
ray_actorflow_cached_actors{{{ray},le="",sample="actorflow_cached_actors"}} {cached}
# HELP ray_actorflow_outbox_backlog backlog
# TYPE ray_actorflow_outbox_backlog gauge
ray_actorflow_outbox_backlog{{{ray},le="",sample="actorflow_outbox_backlog"}} {backlog}
# HELP ray_tasks tasks
# TYPE ray_tasks gauge
ray_tasks{{{ray},State="RUNNING"}} 3
"""


def _parsed(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_processes_are_summed_and_rays_labels_dropped() -> None:
    texts = [_process(1, "w1", 10, 3, 7, 4), _process(1, "w2", 5, 2, 7, 1), _process(2, "w3", 1, 1, 6, 0)]
    families: list[Any] = [f for text in texts for f in text_string_to_metric_families(text)]
    out = _parsed(_metrics.render(_metrics.merge(families)).decode())

    call = (("method", "add"), ("status", "ok"), ("type", "Counter"))
    assert out[("actorflow_calls_total", call)] == 16
    assert out[("actorflow_call_duration_seconds_count", call)] == 16
    assert out[("actorflow_call_duration_seconds_bucket", (("le", "0.001"), *call))] == 5
    assert out[("actorflow_call_duration_seconds_bucket", (("le", "+Inf"), *call))] == 16
    assert abs(out[("actorflow_call_duration_seconds_sum", call)] - 0.032) < 1e-9
    assert out[("actorflow_cached_actors", ())] == 6  # each process holds its own share
    assert out[("actorflow_outbox_backlog", ())] == 7  # each one saw the same storage
    assert not any(name.startswith("ray_") for name, _ in out)  # Ray's own metrics left out
    assert not any(k in dict(labels) for _, labels in out for k in _metrics.RAY_LABELS)


def test_every_instrument_is_listed_and_the_text_parses() -> None:
    families = {f.name: f for f in text_string_to_metric_families(_metrics.render({}).decode())}
    assert set(families) == set(_metrics.INSTRUMENTS)
    for name, inst in _metrics.INSTRUMENTS.items():
        assert families[name].type == inst.kind
        assert families[name].documentation == inst.doc
    # Unlabelled counters and gauges read 0 when nothing recorded them yet.
    assert [s.value for s in families["actorflow_workflow_step_retries"].samples] == [0.0]
    assert [s.value for s in families["actorflow_due_timers"].samples] == [0.0]


def test_names_and_labels_follow_prometheus_conventions() -> None:
    for name, inst in _metrics.INSTRUMENTS.items():
        assert name.startswith("actorflow_") and not name.endswith("_total")  # the format adds it
        if inst.kind == "histogram":
            assert name.endswith("_seconds")
        assert not {"id", "actor_id", "workflow_id"} & set(inst.labels)  # unbounded values
        assert inst.merge in ("sum", "max")


def test_a_process_records_exact_counts_from_many_threads_in_prometheus_shapes() -> None:
    sink = _metrics._LocalSink()
    calls = _metrics.INSTRUMENTS["actorflow_calls"]
    durations = _metrics.INSTRUMENTS["actorflow_call_duration_seconds"]
    cached = _metrics.INSTRUMENTS["actorflow_cached_actors"]
    labels = ("Counter", "add", "ok")

    def load() -> None:
        for i in range(2000):
            sink.record(calls, labels, 1.0)
            sink.record(durations, labels, (0.001, 0.0007, 30.0)[i % 3])  # a bound, inside, past all

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    sink.record(cached, (), 7.0)
    sink.record(cached, (), 5.0)  # a gauge keeps the last value
    registry_text = prometheus_client.generate_latest(sink.registry).decode()
    got = _parsed(registry_text)
    base = (("method", "add"), ("status", "ok"), ("type", "Counter"))
    assert got[("actorflow_calls_total", base)] == 16000
    bucket = "actorflow_call_duration_seconds_bucket"
    bounds = ("0.0005", "0.001", "10.0", "+Inf")
    counts = {le: got[(bucket, tuple(sorted((*base, ("le", le)))))] for le in bounds}
    # Per thread 667 values of 1 ms, 667 of 0.7 ms and 666 of 30 s: a value on a bound is in
    # its bucket, and buckets are cumulative.
    assert counts == {"0.0005": 0, "0.001": 8 * 1334, "10.0": 8 * 1334, "+Inf": 16000}
    assert got[("actorflow_call_duration_seconds_count", base)] == 16000
    total = 8 * (667 * 0.001 + 667 * 0.0007 + 666 * 30.0)
    assert abs(got[("actorflow_call_duration_seconds_sum", base)] - total) < 1e-6
    assert got[("actorflow_cached_actors", ())] == 5.0


def test_recording_with_wrong_labels_or_a_negative_count_raises_and_records_nothing() -> None:
    sink = _metrics._LocalSink()
    calls = _metrics.INSTRUMENTS["actorflow_calls"]
    with pytest.raises(ValueError, match="label values"):
        sink.record(calls, ("Counter", "add"), 1.0)
    with pytest.raises(ValueError, match="cannot go down"):
        sink.record(calls, ("Counter", "add", "ok"), -1.0)
    assert _parsed(prometheus_client.generate_latest(sink.registry).decode()) == {}


def test_the_recorded_families_read_as_prometheus_clients_own_metrics_would() -> None:
    sink = _metrics._LocalSink()
    theirs = prometheus_client.CollectorRegistry()
    made: dict[str, Any] = {}
    for inst in _metrics.INSTRUMENTS.values():
        kw: dict[str, Any] = {"labelnames": inst.labels, "registry": theirs}
        if inst.kind == "histogram":
            made[inst.name] = prometheus_client.Histogram(
                inst.name, inst.doc, buckets=_metrics.LATENCY_BUCKETS, **kw
            )
        elif inst.kind == "counter":
            made[inst.name] = prometheus_client.Counter(inst.name, inst.doc, **kw)
        else:
            made[inst.name] = prometheus_client.Gauge(inst.name, inst.doc, **kw)
    events = [
        ("actorflow_calls", ("Counter", "add", "ok"), 1.0),
        ("actorflow_calls", ("Counter", "add", "error"), 1.0),
        ("actorflow_calls", ("Counter", "add", "ok"), 2.0),
        ("actorflow_commit_duration_seconds", ("actor",), 0.0025),
        ("actorflow_commit_duration_seconds", ("actor",), 0.0001),
        ("actorflow_commit_duration_seconds", ("workflow",), 99.0),
        ("actorflow_workflow_step_retries", (), 3.0),
        ("actorflow_cached_actors", (), 4.0),
    ]
    for name, labels, value in events:
        inst = _metrics.INSTRUMENTS[name]
        sink.record(inst, labels, value)
        metric = made[name].labels(*labels) if labels else made[name]
        if inst.kind == "counter":
            metric.inc(value)
        elif inst.kind == "histogram":
            metric.observe(value)
        else:
            metric.set(value)
    ours = _parsed(prometheus_client.generate_latest(sink.registry).decode())
    recorded = {name for name, _, _ in events}
    suffixes = ("_total", "_bucket", "_count", "_sum", "")
    reference = {
        key: value
        for key, value in _parsed(prometheus_client.generate_latest(theirs).decode()).items()
        if any(key[0] == name + suffix for name in recorded for suffix in suffixes)
    }
    assert ours == reference
