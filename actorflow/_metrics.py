"""The service's metrics, recorded where things happen and exposed in the Prometheus format.

Every process that runs turns, deliveries, timers or workflows records into values of its own
(about a microsecond per event), which a ``prometheus_client`` registry reads. Inside a Ray
cluster (Serve replicas, the workflow host, a driver) a daemon thread copies that registry into
Ray's metrics API (``ray.util.metrics``) every second, a gauge per instrument and a series per
sample: Ray's agent on each node collects every process of the node and exports them on the
node's metrics port, which a Prometheus scraping a Ray cluster reads already (there the names get
Ray's ``ray_`` prefix and Ray's labels such as ``WorkerId``). Recording through Ray's API on
every event instead cost 25-40 us each, several per call.

:func:`exposition` writes what ``GET /metrics`` answers: outside Ray this process's registry;
inside Ray the ``actorflow_*`` metrics of every live node's agent, summed over the processes
that recorded them (Ray's per-process labels dropped), so one scrape of the service shows the
whole cluster. Ray's agents publish what a process recorded every few seconds
(``metrics_report_interval_ms``, 10 s by default), so a scrape lags by that much and a second.

Names and labels follow Prometheus conventions (base units, ``_total`` counters), and label
values come from bounded sets: actor types and method names as registered, outcomes from a
fixed list; never an actor id or a workflow id.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import logging
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("actorflow.metrics")

#: Seconds: a call, a commit, a timer's lateness. From 0.5 ms to 10 s.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Labels Ray's agents add to every metric (dropped when the processes are summed).
RAY_LABELS = frozenset(
    {
        "Component",
        "NodeAddress",
        "SessionName",
        "Version",
        "WorkerId",
        "JobId",
        "otel_scope_name",
        "otel_scope_schema_url",
        "otel_scope_version",
    }
)
#: Seconds to wait for one node's agent.
SCRAPE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Instrument:
    """One metric: ``kind`` counter, histogram or gauge; ``merge`` how a gauge's values from
    several processes combine (``sum``: each process holds a share; ``max``: each sees the
    same storage-wide quantity)."""

    name: str
    kind: str
    doc: str
    labels: tuple[str, ...] = ()
    merge: str = "sum"


INSTRUMENTS: dict[str, Instrument] = {
    i.name: i
    for i in (
        Instrument(
            "actorflow_calls",
            "counter",
            "Actor method calls, by type, method and status (ok or error).",
            ("type", "method", "status"),
        ),
        Instrument(
            "actorflow_call_duration_seconds",
            "histogram",
            "Time from a call's start to its result (turn, commit and sub-workflow included).",
            ("type", "method", "status"),
        ),
        Instrument(
            "actorflow_actors_created",
            "counter",
            "Actors created (explicitly or activated by their first call), by type.",
            ("type",),
        ),
        Instrument(
            "actorflow_unrouted_calls",
            "counter",
            "HTTP calls a replica ran without the routing header of their actor (perhaps not on its owner).",
        ),
        Instrument(
            "actorflow_commit_duration_seconds",
            "histogram",
            "Time one commit to storage takes, by component (actor or workflow).",
            ("component",),
        ),
        Instrument(
            "actorflow_commit_conflicts",
            "counter",
            "Actor turns whose compare-and-set commit lost to another writer, by type.",
            ("type",),
        ),
        Instrument(
            "actorflow_turn_reruns",
            "counter",
            "Actor turns run again on a newer state (after a conflict or a stale failure), by type.",
            ("type",),
        ),
        Instrument(
            "actorflow_idempotent_replays",
            "counter",
            "Keyed calls answered from their recorded result without running again, by type.",
            ("type",),
        ),
        Instrument(
            "actorflow_events",
            "counter",
            "External events posted to actors, by type.",
            ("type",),
        ),
        Instrument(
            "actorflow_messages_delivered",
            "counter",
            "Outbox entries (messages and events) delivered to their receiver, by receiver type.",
            ("type",),
        ),
        Instrument(
            "actorflow_message_retries",
            "counter",
            "Deliveries that did not get through and were left for a later try, by receiver type.",
            ("type",),
        ),
        Instrument(
            "actorflow_timer_lateness_seconds",
            "histogram",
            "How long after its due time a timer's tick started to run, by type.",
            ("type",),
        ),
        Instrument(
            "actorflow_workflow_steps",
            "counter",
            "Workflow steps finished, by outcome (ok, continuation or error).",
            ("outcome",),
        ),
        Instrument(
            "actorflow_workflow_step_retries",
            "counter",
            "Workflow step attempts beyond the first (the step's own retries).",
        ),
        Instrument(
            "actorflow_cached_actors",
            "gauge",
            "Actor snapshots held in the caches of the service's processes.",
        ),
        Instrument(
            "actorflow_outbox_backlog",
            "gauge",
            "Outbox entries (messages and events) stored and not yet delivered.",
            merge="max",
        ),
        Instrument(
            "actorflow_due_timers",
            "gauge",
            "Timers whose tick is due and has not run yet (counted up to 10,000).",
            merge="max",
        ),
    )
}


def inc(name: str, labels: tuple[str, ...] = (), amount: float = 1.0) -> None:
    """Add ``amount`` to the counter ``name`` (label values in the instrument's order)."""
    _sink().record(INSTRUMENTS[name], labels, amount)


def observe(name: str, value: float, labels: tuple[str, ...] = ()) -> None:
    """Record ``value`` (seconds) in the histogram ``name``."""
    _sink().record(INSTRUMENTS[name], labels, value)


def set_gauge(name: str, value: float, labels: tuple[str, ...] = ()) -> None:
    """Set this process's value of the gauge ``name``."""
    _sink().record(INSTRUMENTS[name], labels, value)


# ----------------------------------------------------------------------------- recording


class _LocalSink:
    """This process's recorded values, and a ``prometheus_client`` registry that reads them.

    Recording is a dict lookup and an addition under one lock (about a microsecond): a call
    records three values, and ``prometheus_client``'s own metric objects cost 5-7 us each
    (a label lookup, a lock per value, a Python loop over the buckets), a tenth of an
    embedded call. The registry's collector turns the values into metric families, in the
    shapes ``prometheus_client``'s counters, histograms and gauges have, when it is read.
    """

    def __init__(self) -> None:
        import prometheus_client

        #: ``(instrument, label values)`` -> a counter's total or a gauge's value ``[v]``, or a
        #: histogram's count per bucket (not cumulative; the last is past every bound) then sum.
        self._series: dict[tuple[str, tuple[str, ...]], list[float]] = {}
        self._lock = threading.Lock()
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        self.registry.register(_Recorded(self))

    def record(self, inst: Instrument, labels: tuple[str, ...], value: float) -> None:
        """Add to a counter, count ``value`` in a histogram or set a gauge. Raises ``ValueError``
        for label values that do not match the instrument's labels, or a negative count."""
        key = (inst.name, labels)
        if inst.kind == "counter" and value < 0:
            raise ValueError(f"{inst.name} is a counter: it cannot go down by {-value}")
        with self._lock:
            series = self._series.get(key)
            if series is None:
                if inst.name not in INSTRUMENTS:
                    raise ValueError(f"{inst.name} is not one of actorflow's instruments")
                if len(labels) != len(inst.labels) or not all(isinstance(v, str) for v in labels):
                    raise ValueError(f"{inst.name} takes label values for {inst.labels}, not {labels!r}")
                size = len(LATENCY_BUCKETS) + 2 if inst.kind == "histogram" else 1
                series = self._series[key] = [0.0] * size
            if inst.kind == "counter":
                series[0] += value
            elif inst.kind == "histogram":
                series[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1.0
                series[-1] += value
            else:
                series[0] = value

    def families(self) -> list[Any]:
        """The recorded values as ``prometheus_client`` metric families, one per instrument
        with values: ``_total`` for counters, cumulative ``_bucket`` (``le``), ``_count`` and
        ``_sum`` for histograms."""
        from prometheus_client.metrics_core import Metric

        with self._lock:
            recorded = [(name, labels, list(values)) for (name, labels), values in self._series.items()]
        out: dict[str, Any] = {}
        for name, labels, values in sorted(recorded):
            inst = INSTRUMENTS[name]
            family = out.get(name)
            if family is None:
                family = out[name] = Metric(name, inst.doc, inst.kind)
            given = dict(zip(inst.labels, labels, strict=True))
            if inst.kind == "counter":
                family.add_sample(name + "_total", given, values[0])
            elif inst.kind == "gauge":
                family.add_sample(name, given, values[0])
            else:
                total = 0.0
                for bound, count in zip((*LATENCY_BUCKETS, float("inf")), values, strict=False):
                    total += count
                    le = "+Inf" if bound == float("inf") else prometheus_float(bound)
                    family.add_sample(name + "_bucket", {**given, "le": le}, total)
                family.add_sample(name + "_count", given, total)
                family.add_sample(name + "_sum", given, values[-1])
        return list(out.values())


def prometheus_float(value: float) -> str:
    """A bucket bound as ``prometheus_client`` writes it (``0.5``, ``1.0``, ``10.0``)."""
    from prometheus_client.utils import floatToGoString

    return str(floatToGoString(value))


class _Recorded:
    """The collector of a :class:`_LocalSink`'s registry."""

    def __init__(self, sink: _LocalSink) -> None:
        self.sink = sink

    def collect(self) -> Iterator[Any]:
        yield from self.sink.families()


class _RayExport:
    """Copies this process's registry into Ray's metrics every :data:`FLUSH_EVERY` seconds,
    from a daemon thread: one Ray gauge per instrument, one series per sample (its name in
    the ``sample`` label, and ``le`` for a bucket), set to the sample's current value. Ray's
    agent then publishes it with the process's labels; :func:`merge` sums the processes.
    (Recording through Ray's API on every event cost 25-40 us each, a few per call.)"""

    def __init__(self, sink: _LocalSink) -> None:
        self.sink = sink
        self._gauges: dict[str, Any] = {}
        self._sent: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.thread = threading.Thread(target=self._run, name="actorflow-metrics", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY)
            if not _in_ray():
                continue  # Ray shut down (or not yet up again): the figures stay local
            try:
                self.flush()
            except Exception as exc:  # the next pass tries again
                log.debug("could not hand the metrics to Ray: %r", exc)

    def flush(self) -> None:
        """Set a Ray gauge for every sample that changed since the last flush."""
        from ray.util import metrics

        for family in self.sink.registry.collect():
            inst = INSTRUMENTS.get(family.name)
            if inst is None:
                continue
            gauge = self._gauges.get(inst.name)
            if gauge is None:
                keys = (*inst.labels, "le", "sample")
                gauge = self._gauges[inst.name] = metrics.Gauge(inst.name, inst.doc, tag_keys=keys)
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = tuple(sorted(sample.labels.items()))
                if self._sent.get((sample.name, labels)) == sample.value:
                    continue
                tags = {**dict.fromkeys(inst.labels, ""), "le": "", **sample.labels, "sample": sample.name}
                gauge.set(sample.value, tags=tags)
                self._sent[(sample.name, labels)] = sample.value


#: Seconds between two copies of a process's metrics into Ray's.
FLUSH_EVERY = 1.0

_local: _LocalSink | None = None
_export: _RayExport | None = None
_sinks_lock = threading.Lock()


def _in_ray() -> bool:
    ray = sys.modules.get("ray")  # never import Ray just to find out
    return ray is not None and bool(ray.is_initialized())


def _sink() -> _LocalSink:
    """This process's registry; inside Ray, with its copying into Ray's metrics started."""
    global _local, _export
    sink = _local
    if sink is None or (_export is None and _in_ray()):
        with _sinks_lock:
            if _local is None:
                _local = _LocalSink()
            sink = _local
            if _export is None and _in_ray():
                _export = _RayExport(sink)
    return sink


# ---------------------------------------------------------------------------- exposition


def content_type() -> str:
    """The ``Content-Type`` of :func:`exposition`'s text (Prometheus text format 0.0.4)."""
    import prometheus_client

    return str(prometheus_client.CONTENT_TYPE_LATEST)


def exposition(gauges: Mapping[str, float] | None = None, types: Iterable[str] = ()) -> bytes:
    """Every instrument in the Prometheus text format: this process's values outside Ray, the
    whole cluster's (every live node's agent, processes summed) inside it; ``gauges`` gives
    values the caller measured just now (storage-wide gauges such as the outbox backlog),
    which replace what was recorded for them; the counters by actor type read 0 for each of
    ``types`` (the registered ones) nothing counted yet, so that a series exists before its
    first event. A node whose agent does not answer is left out (and logged): the scrape
    still answers."""
    found = _cluster_families() if _in_ray() else _local_families()
    merged = merge(found)
    for name, value in (gauges or {}).items():
        merged[name] = {(name, ()): float(value)}
    for inst in INSTRUMENTS.values():
        if inst.kind == "counter" and inst.labels == ("type",):
            samples = merged.setdefault(inst.name, {})
            for t in types:
                samples.setdefault((inst.name + "_total", (("type", t),)), 0.0)
    return render(merged)


def render(merged: Mapping[str, Mapping[tuple[str, tuple[tuple[str, str], ...]], float]]) -> bytes:
    """:func:`merge`'s result in the Prometheus text format, every instrument listed (an
    unlabelled counter or gauge nothing recorded reads 0)."""
    import prometheus_client

    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(_Families(merged))
    return bytes(prometheus_client.generate_latest(registry))


def merge(families: Iterable[Any]) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """Parsed metric families of several processes, reduced to the actorflow instruments: by
    instrument, ``(sample name, labels) -> value``, Ray's prefix and per-process labels
    dropped and the processes combined (summed; gauges as their ``merge`` says)."""
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for family in families:
        name = family.name.removeprefix("ray_")
        inst = INSTRUMENTS.get(name)
        if inst is None:
            continue
        acc = out.setdefault(name, {})
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue  # prometheus_client's creation times: not summable, not kept
            given = sample.labels
            name = given.get("sample") or sample.name.removeprefix("ray_")  # see _RayExport
            dropped = RAY_LABELS | {"sample"} | ({"le"} if given.get("le") == "" else set())
            labels = tuple(sorted((k, v) for k, v in given.items() if k not in dropped and v != ""))
            key = (name, labels)
            if key in acc and inst.kind == "gauge" and inst.merge == "max":
                acc[key] = max(acc[key], sample.value)
            else:
                acc[key] = acc.get(key, 0.0) + sample.value
    return out


class _Families:
    """A ``prometheus_client`` collector of merged samples, one family per instrument."""

    def __init__(self, merged: Mapping[str, Mapping[tuple[str, tuple[tuple[str, str], ...]], float]]) -> None:
        self.merged = merged

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import Metric

        for inst in INSTRUMENTS.values():
            family = Metric(inst.name, inst.doc, inst.kind)
            samples = dict(self.merged.get(inst.name, {}))
            if not samples and not inst.labels and inst.kind != "histogram":
                suffix = "_total" if inst.kind == "counter" else ""
                samples[(inst.name + suffix, ())] = 0.0  # nothing recorded anywhere yet
            for (sample_name, labels), value in sorted(samples.items(), key=_sample_order):
                family.add_sample(sample_name, dict(labels), value)
            yield family


def _sample_order(item: tuple[tuple[str, tuple[tuple[str, str], ...]], float]) -> tuple[Any, ...]:
    """Histogram samples of one label set together, buckets by bound, then count and sum."""
    (sample_name, labels), _ = item
    rest = tuple(pair for pair in labels if pair[0] != "le")
    le = next((v for k, v in labels if k == "le"), None)
    bound = float("inf") if le in (None, "+Inf") else float(le)
    return (rest, not sample_name.endswith("_bucket"), sample_name, bound)


def _local_families() -> list[Any]:
    return list(_local.registry.collect()) if _local is not None else []


def _cluster_families() -> list[Any]:
    """The actorflow families every live node's agent exports (parsed, not yet merged)."""
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")]
    urls = [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics" for n in nodes]
    families: list[Any] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(8, len(urls)))) as pool:
        for url, text in zip(urls, pool.map(_fetch, urls), strict=True):
            if text is None:
                continue
            kept = "\n".join(line for line in text.splitlines() if "actorflow_" in line)
            try:
                families.extend(text_string_to_metric_families(kept + "\n"))
            except ValueError as exc:
                log.warning("could not parse the metrics of %s: %s", url, exc)
    return families


def _fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as response:
            return str(response.read().decode("utf-8", "replace"))
    except OSError as exc:
        log.warning("could not read the metrics of %s: %s", url, exc)
        return None
