"""Where an actor's data lives in storage: every key and index name of the actor layer.

===============================  ============================================================
key or index                     what
===============================  ============================================================
``act/{t}/{a}/v``                the version stamp (``{n}:{token}``, a tombstone once deleted)
``act/{t}/{a}/snap``             the state snapshot (header + JSON or pickle)
``acts/{t}/{a}``                 the listing entry (``GET /v1/actors/{t}``), empty value
``act/{t}/{a}/idem/{key}``       an idempotency record (the key percent-encoded)
index ``idem:{t}/{a}``           the actor's records by age (member: the key)
``act/{t}/{a}/out/{msg}``        an outbox entry: a message the actor sent, or an event to it
index ``outbox``                 every outbox entry, by when to (re)try it; ``{t}/{a}/{msg}``
``act/{t}/{a}/timer/{name}``     a durable timer
index ``timers``                 every timer, by when to look at it; ``{t}/{a}/{name}``
``act/{t}/{a}/timerfail/{name}`` a timer tick that failed after its retries
``act/{t}/{a}/failed/{name}``    an event or message whose handler raised
===============================  ============================================================

``t`` is a type name (no ``/`` or ``:``), ``a`` an actor id (no ``/``), so the members
``{t}/{a}/{rest}`` split unambiguously. Sub-workflows an actor launches have workflow ids
``{t}:{a}:{n}`` (:func:`workflow_id`), kept by the workflow engine.

The runtime also names the idempotency keys of the calls it makes itself, so that a retried
delivery is answered from its record: ``msg:{t}/{a}/{msg}`` for a ``send`` without a key,
``event:{name}:{event_id}`` for an event, ``timer:{name}:{setting}:{due}`` for a timer tick
(``timer:{name}:{due}`` for timers stored before settings existed), ``wf:{wid}:{step}`` for
a call from a workflow step.
"""

from __future__ import annotations

from urllib.parse import quote

OUTBOX_INDEX = "outbox"
TIMER_INDEX = "timers"
#: Folders of an actor's own keys besides its version, snapshot and listing: what deleting it
#: removes (for ``out/``, only entries addressed to the actor itself).
IDEM_DIR, TIMER_DIR, TIMERFAIL_DIR, FAILED_DIR, OUT_DIR = "idem/", "timer/", "timerfail/", "failed/", "out/"
#: Which failed messages the actor recorded already (a marker per message, naming its record).
FAILMARK_DIR = "failmark/"
OWN_DIRS = (IDEM_DIR, TIMER_DIR, TIMERFAIL_DIR, FAILED_DIR, FAILMARK_DIR, OUT_DIR)


def actor_name(t: str, a: str) -> str:
    """``{t}/{a}``: how the runtime names an actor in memory (cache, locks, idempotency
    window) and in a launched workflow's metadata."""
    return f"{t}/{a}"


def k_version(t: str, a: str) -> str:
    return f"act/{t}/{a}/v"


def k_snapshot(t: str, a: str) -> str:
    return f"act/{t}/{a}/snap"


def listing_prefix(t: str) -> str:
    return f"acts/{t}/"


def k_listing(t: str, a: str) -> str:
    return f"acts/{t}/{a}"


def own_prefix(t: str, a: str, folder: str) -> str:
    """The prefix of one of :data:`OWN_DIRS` of an actor."""
    return f"act/{t}/{a}/{folder}"


def k_idem(t: str, a: str, key: str) -> str:
    return f"act/{t}/{a}/idem/{quote(key, safe='')}"


def idem_index(t: str, a: str) -> str:
    return f"idem:{t}/{a}"


def k_outbox(t: str, a: str, msg: str) -> str:
    return f"act/{t}/{a}/out/{msg}"


def outbox_member(t: str, a: str, msg: str) -> str:
    return f"{t}/{a}/{msg}"


def split_member(member: str) -> tuple[str, str, str]:
    """``(type, id, rest)`` of an outbox or timer index member."""
    t, a, rest = member.split("/", 2)
    return t, a, rest


def k_failed(t: str, a: str, name: str) -> str:
    return f"act/{t}/{a}/failed/{name}"


def k_failmark(t: str, a: str, digest: str) -> str:
    return f"act/{t}/{a}/{FAILMARK_DIR}{digest}"


def k_timer(t: str, a: str, name: str) -> str:
    return f"act/{t}/{a}/timer/{name}"


def k_timer_failure(t: str, a: str, name: str) -> str:
    return f"act/{t}/{a}/timerfail/{name}"


def timer_member(t: str, a: str, name: str) -> str:
    return f"{t}/{a}/{name}"


def timer_key_of(member: str) -> str:
    """The timer key a ``timers`` index member stands for."""
    return k_timer(*split_member(member))


def workflow_id(t: str, a: str, version: int) -> str:
    """The id of the sub-workflow that the turn committing ``version`` launched."""
    return f"{t}:{a}:{version}"


def workflow_prefix(t: str, a: str) -> str:
    """What the ids of an actor's sub-workflows start with (ids of other actors may too:
    ``p``'s ``Flow:p:3`` and ``p:q``'s ``Flow:p:q:3``; :func:`version_of` tells them apart)."""
    return f"{t}:{a}:"


def version_of(t: str, a: str, wid: str) -> int | None:
    """The version whose turn launched sub-workflow ``wid`` of this very actor, or ``None``
    when ``wid`` is not one of its ids."""
    rest = wid[len(workflow_prefix(t, a)) :] if wid.startswith(workflow_prefix(t, a)) else ""
    return int(rest) if rest.isdigit() else None


def message_key(member: str) -> str:
    """The idempotency key of an outbox message sent without one (``member`` of ``outbox``)."""
    return f"msg:{member}"


def event_key(event: str, event_id: str) -> str:
    return f"event:{event}:{event_id}"


def tick_key(name: str, setting: str | None, due: float) -> str:
    """The idempotency key of one tick of a timer; ``setting`` changes each time it is set."""
    if setting is None:
        return f"timer:{name}:{due}"
    return f"timer:{name}:{setting}:{due}"


def step_call_key(wid: str, step_id: str) -> str:
    """The idempotency key of an actor call made by a workflow step (one per step)."""
    return f"wf:{wid}:{step_id}"
