"""Durable virtual actors: declared with ``@workflow.virtual_actor``, addressed by type and id.

See :mod:`actorflow.actor._runtime` for what one turn commits and when.
"""

from actorflow.actor._class import VirtualActorClass, lookup, registered_types, virtual_actor
from actorflow.actor._handle import ActorCall, ActorHandle, ActorMethod
from actorflow.actor._runtime import ActorRuntime, actor_runtime, send
from actorflow.actor._state import Snapshot

__all__ = [
    "ActorCall",
    "ActorHandle",
    "ActorMethod",
    "ActorRuntime",
    "Snapshot",
    "VirtualActorClass",
    "actor_runtime",
    "lookup",
    "registered_types",
    "send",
    "virtual_actor",
]
