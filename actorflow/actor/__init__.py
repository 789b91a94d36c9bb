"""Durable virtual actors: declared with ``@workflow.virtual_actor``, addressed by type and id.

See :mod:`actorflow.actor._turns` for what one turn commits and when, and
:mod:`actorflow.actor._runtime` for how the parts fit together.
"""

from actorflow.actor._class import VirtualActorClass, lookup, registered_types, virtual_actor
from actorflow.actor._config import ActorConfig
from actorflow.actor._handle import ActorCall, ActorHandle, ActorMethod
from actorflow.actor._idempotency import client_key
from actorflow.actor._inside import current_actor, send, timers
from actorflow.actor._methods import error_status, is_method_error, mark_method_error
from actorflow.actor._promise import promise_for
from actorflow.actor._runtime import ActorRuntime, actor_runtime, adopt
from actorflow.actor._state import Snapshot

__all__ = [
    "ActorCall",
    "ActorConfig",
    "ActorHandle",
    "ActorMethod",
    "ActorRuntime",
    "Snapshot",
    "VirtualActorClass",
    "actor_runtime",
    "adopt",
    "client_key",
    "current_actor",
    "error_status",
    "is_method_error",
    "lookup",
    "mark_method_error",
    "promise_for",
    "registered_types",
    "send",
    "timers",
    "virtual_actor",
]
