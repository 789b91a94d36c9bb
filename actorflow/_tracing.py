"""Traces of what the service does, through OpenTelemetry, when it is installed and set up.

OpenTelemetry is optional (the ``tracing`` extra: ``opentelemetry-api`` and ``-sdk``). Spans
are made only once the process has a real tracer provider
(``opentelemetry.trace.set_tracer_provider``, or an auto-instrumentation agent that sets one);
otherwise every function here does nothing and costs a check. Spans:

* ``HTTP {method}`` for each request of the HTTP API (a W3C ``traceparent`` header on the
  request makes it a child of the caller's span);
* ``turn {type}.{method}`` for each actor call, with an ``attempt`` event for each run of the
  method (a conflict or a stale failure runs it again), and ``commit`` for its commit;
* ``deliver {type}.{method}`` for each delivery of a message or event; a message carries the
  sending turn's context in the outbox, so the delivery (and the receiving turn) is its child
  even when another process delivers it, after a crash;
* ``timer {type}.{name}`` for each firing: a new trace, linked to the context that set the
  timer (a periodic timer would otherwise grow one trace forever);
* ``workflow step {name}`` for each run of a step, in the process that runs it (a Ray worker),
  a child of the context that started the workflow: the context goes with the step's task.

The context is carried as the W3C trace-context headers (``traceparent``, ``tracestate``) in a
plain dict (:func:`carrier`), the form that survives pickling into storage and Ray tasks.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator, Mapping
from typing import Any

TRACER_NAME = "actorflow"


@functools.cache
def _api() -> Any:
    """``(trace, propagate)`` from opentelemetry, or None when it is not installed."""
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        return None
    return trace, propagate


#: Seconds a "no provider yet" answer of :func:`enabled` is kept (a provider is set once per
#: process, usually at its start; asking OpenTelemetry on every span would cost ~3 us each).
RECHECK_EVERY = 1.0
_state = {"on": False, "checked": -RECHECK_EVERY}


def enabled() -> bool:
    """Whether spans are recorded: OpenTelemetry is installed and a real tracer provider set
    (a provider set after the process's first span is noticed within :data:`RECHECK_EVERY`)."""
    if _state["on"]:
        return True
    now = time.monotonic()
    if now - _state["checked"] < RECHECK_EVERY:
        return False
    _state["checked"] = now
    api = _api()
    if api is None:
        return False
    provider = api[0].get_tracer_provider()
    _state["on"] = type(provider).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider")
    return bool(_state["on"])


_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()


def span(
    name: str,
    *,
    attributes: Mapping[str, Any] | None = None,
    parent: Mapping[str, str] | None = None,
    link: Mapping[str, str] | None = None,
    kind: str = "internal",
) -> contextlib.AbstractContextManager[Any]:
    """A span around the block, current inside it (the block's spans are its children); an
    exception leaving the block is recorded on it and sets its status to error. ``parent``:
    a :func:`carrier` to be the child of (instead of the current span); ``link``: a carrier to
    link to. The block gets the span, or None when tracing is off (then this costs ~1 us)."""
    if not enabled():
        return _OFF
    return _recorded(name, attributes, parent, link, kind)


@contextlib.contextmanager
def _recorded(
    name: str,
    attributes: Mapping[str, Any] | None,
    parent: Mapping[str, str] | None,
    link: Mapping[str, str] | None,
    kind: str,
) -> Iterator[Any]:
    trace, propagate = _api()
    context = propagate.extract(dict(parent)) if parent else None
    links = None
    if link:
        linked = trace.get_current_span(propagate.extract(dict(link))).get_span_context()
        links = [trace.Link(linked)] if linked.is_valid else None
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=getattr(trace.SpanKind, kind.upper()),
        attributes=dict(attributes or {}),
        links=links,
    ) as current:
        yield current


def event(name: str, attributes: Mapping[str, Any] | None = None) -> None:
    """Add an event to the current span (nothing when tracing is off or no span is current)."""
    if enabled():
        _api()[0].get_current_span().add_event(name, dict(attributes or {}))


def carrier() -> dict[str, str] | None:
    """The current span's context as W3C trace-context headers, to keep with work that runs
    later or elsewhere (a message, a timer, a step's task); None when there is none."""
    if not enabled():
        return None
    out: dict[str, str] = {}
    _api()[1].inject(out)
    return out or None


def mark_error(current: Any, description: str) -> None:
    """Set ``current``'s status (a span from :func:`span`, or None) to error."""
    if current is not None:
        from opentelemetry.trace import Status, StatusCode

        current.set_status(Status(StatusCode.ERROR, description))


def set_status_code(current: Any, code: int) -> None:
    """Record an HTTP response status on ``current`` (a span from :func:`span`, or None); a 5xx
    marks the span as an error."""
    if current is None:
        return
    current.set_attribute("http.response.status_code", code)
    if code >= 500:
        mark_error(current, f"HTTP {code}")
