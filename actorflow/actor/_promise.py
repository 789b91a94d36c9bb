"""Turning a local future into a Ray ``ObjectRef`` (for ``ActorCall.as_object_ref``).

Ray has no public way to create an unfulfilled ``ObjectRef``; a tiny async Ray actor per process
plays the promise: ``wait(id)`` returns once ``settle(id, ...)`` is called.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
from typing import Any

_actor: Any = None
_lock = threading.Lock()
_ids = itertools.count()


class _Promises:
    def __init__(self) -> None:
        self._futures: dict[int, asyncio.Future[Any]] = {}

    def _future(self, call_id: int) -> asyncio.Future[Any]:
        fut = self._futures.get(call_id)
        if fut is None:
            fut = self._futures[call_id] = asyncio.get_running_loop().create_future()
        return fut

    async def wait(self, call_id: int) -> Any:
        try:
            return await self._future(call_id)
        finally:
            self._futures.pop(call_id, None)

    async def settle(self, call_id: int, ok: bool, value: Any) -> None:
        fut = self._future(call_id)
        if not fut.done():
            fut.set_result(value) if ok else fut.set_exception(value)


def promise_for(fut: concurrent.futures.Future[Any]) -> Any:
    """An ``ObjectRef`` that resolves to ``fut``'s result (or raises its exception)."""
    import ray

    from actorflow._ray import ensure_ray

    global _actor
    ensure_ray()
    with _lock:
        if _actor is None:
            remote: Any = ray.remote
            _actor = remote(num_cpus=0, max_concurrency=10_000)(_Promises).remote()
        actor = _actor
    call_id = next(_ids)
    ref = actor.wait.remote(call_id)

    def settle(f: concurrent.futures.Future[Any]) -> None:
        exc = f.exception()
        actor.settle.remote(call_id, exc is None, f.result() if exc is None else exc)

    fut.add_done_callback(settle)
    return ref
