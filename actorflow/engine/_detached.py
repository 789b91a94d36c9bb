"""Where ``run_async`` and ``resume_async`` run workflows: a detached Ray actor per storage, so
a workflow outlives the driver that started it (as Ray Workflows had it: fire and forget).

The actor (``WorkflowHost``, named after the storage URL in Ray namespace ``actorflow``, made on
first use and found again by any later driver of the cluster) holds a workflow runtime on that
storage. ``start`` begins a workflow in the actor's background and returns at once; ``output``
waits for a workflow's end and returns its output, so the ``ObjectRef`` a caller gets is only a
view: if the caller exits, the workflow goes on. Leases and fencing are the same as anywhere
else: the actor is just another runner, and one that dies leaves its workflows RESUMABLE.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from typing import Any

log = logging.getLogger("actorflow.workflow")

NAMESPACE = "actorflow"


def host_name(storage_url: str) -> str:
    return "actorflow-workflows-" + hashlib.sha1(storage_url.encode()).hexdigest()[:16]


class WorkflowHost:
    """The detached actor's body: one runtime, many workflows at once (an async actor)."""

    def __init__(self, storage_url: str, lease_ttl: float) -> None:
        from actorflow.engine._runtime import runtime_for

        self.runtime = runtime_for(storage_url, lease_ttl)

    async def start(self, workflow_id: str, lease: bytes | None) -> None:
        """Run (or resume, holding ``lease`` when one is handed over) the workflow here, in the
        background. Two starts of one workflow are fine: the engine's lease lets one run it
        and the other wait for it (and the order two callers' starts arrive in is not theirs)."""
        run = self.runtime.engine.resume(workflow_id, lease)
        fut = asyncio.run_coroutine_threadsafe(run, self.runtime.loop)

        def ended(done: Any) -> None:
            if not done.cancelled() and done.exception() is not None:
                log.info("workflow %s ended with %r", workflow_id, done.exception())

        fut.add_done_callback(ended)

    async def output(self, workflow_id: str) -> Any:
        """The workflow's output once it ends (its failure raised), wherever it runs."""
        wait = self.runtime.engine.wait(workflow_id, None)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(wait, self.runtime.loop))

    def ready(self) -> bool:
        return True


_handles: dict[str, Any] = {}
_handles_lock = threading.Lock()


def workflow_host(storage_url: str, lease_ttl: float) -> Any:
    """The detached actor for ``storage_url`` (created if the cluster has none)."""
    with _handles_lock:
        return _host(storage_url, lease_ttl)


def _host(storage_url: str, lease_ttl: float) -> Any:
    import ray

    handle = _handles.get(storage_url)
    if handle is None:
        decorate: Any = ray.remote
        remote: Any = decorate(num_cpus=0, max_concurrency=1000, max_restarts=-1)(WorkflowHost)
        handle = remote.options(
            name=host_name(storage_url), namespace=NAMESPACE, lifetime="detached", get_if_exists=True
        ).remote(storage_url, lease_ttl)
        _handles[storage_url] = handle
    return handle


def run_detached(storage_url: str, lease_ttl: float, workflow_id: str, lease: bytes | None) -> Any:
    """Start the workflow in the storage's detached actor; an ``ObjectRef`` of its output."""
    host = workflow_host(storage_url, lease_ttl)
    host.start.remote(workflow_id, lease)
    return host.output.remote(workflow_id)


def stop_host(storage_url: str) -> bool:
    """Kill the storage's detached actor if there is one (workflows it runs read RESUMABLE and
    can be resumed anywhere); whether there was one. For tests and for tearing a storage down."""
    import ray

    with _handles_lock:
        _handles.pop(storage_url, None)
    if not ray.is_initialized():
        return False
    try:
        handle = ray.get_actor(host_name(storage_url), namespace=NAMESPACE)
    except ValueError:
        return False
    ray.kill(handle, no_restart=True)
    return True
