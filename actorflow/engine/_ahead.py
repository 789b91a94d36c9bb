"""Checkpoints written by a step's own task, so that the steps after it can be submitted ahead.

A chain of steps is only as fast as the round trip between two of them. When the runner
commits each output itself, every step costs a return to the runner, a commit and a new
submission on top of Ray's own scheduling. Instead, for a step whose consumers could start
right after it, the runner hands the task its lease (the exact bytes it holds in storage).
The task commits its own record, in one batch that requires that lease, and only then
returns. The consumers were already submitted with the task's ``ObjectRef`` as their
argument, so Ray starts them as soon as it returns, as a plain Ray chain would.

What keeps this as safe as the runner's own commits:

* the commit requires the runner's lease as the runner holds it: once a cancel or another
  runner has replaced it, the commit does not apply. (A lease the runner has renewed since,
  same token and a later expiry, is still its own: the commit is tried once more requiring
  the lease as it now is, so a renewal does not send a whole chain back to the runner.)
* a consumer submitted ahead runs its function only if every output it consumes says it was
  committed; otherwise it returns at once without running anything (``"skip"``), and the
  runner commits the output itself and submits the consumer again, as it would have anyway;
* any failure here (storage unreachable, an output that cannot be encoded) means "not
  committed": the runner then does what it always did.

Each thread that runs steps keeps an event loop and a few open storages for these commits.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from typing import Any

from actorflow.engine._store import Lease, WorkflowStore, k_lease, k_step, step_header
from actorflow.storage import Batch, Storage, open_storage

log = logging.getLogger("actorflow.workflow")

#: How long a task waits for its own commit before it leaves the checkpoint to the runner.
COMMIT_TIMEOUT = 30.0
#: Reads of a renewed lease a task's commit goes through before it leaves the record to the runner.
RENEWED_TRIES = 5
#: Storages a worker process keeps open for these commits (the least recently used closes).
KEEP_OPEN = 4


class _PerThread(threading.local):
    """Each thread that runs steps commits on an event loop of its own, with its own open
    storages (a SQLite connection, a Redis client): nothing is shared between threads. Both
    are made on the thread's first commit."""

    loop: asyncio.AbstractEventLoop | None = None
    opened: collections.OrderedDict[str, Storage]


_here = _PerThread()


async def _opened(opened: collections.OrderedDict[str, Storage], url: str) -> Storage:
    storage = opened.get(url)
    if storage is None or storage.closed:
        storage = opened[url] = await open_storage(url)
        while len(opened) > KEEP_OPEN:
            _, old = opened.popitem(last=False)
            await old.close()
    opened.move_to_end(url)
    return storage


async def _commit(opened: collections.OrderedDict[str, Storage], url: str, wid: str, batch: Batch) -> bool:
    storage = await _opened(opened, url)
    if await storage.commit(batch):
        return True
    # The runner may have renewed its lease since it submitted the step (only the expiry
    # changes). A lease with the runner's token is still the runner's: require it as it is now,
    # again if a renewal lands between the read and the commit (one every third of the ttl).
    given = Lease.decode(batch.expect[k_lease(wid)])
    for _ in range(RENEWED_TRIES):
        now = await storage.get(k_lease(wid))
        held = Lease.decode(now)
        if given is None or held is None or held.token != given.token:
            return False
        if await storage.commit(batch.require(k_lease(wid), now)):
            return True
    return False


def commit_output(
    url: str, wid: str, sid: str, lease: bytes, name: str, metadata: dict[str, Any], outcome: tuple[Any, ...]
) -> bool:
    """Commit the record of a step that ended ``"ok"`` with ``outcome`` (the step body's tuple),
    requiring ``lease``; whether it applied. Never raises: anything but a clean commit is
    ``False``, and the runner then commits the record itself, as it does for any step."""
    kind, out, start, end, attempts = outcome[:5]
    try:
        batch = Batch().require(k_lease(wid), lease)
        header = step_header(kind, name, start, end, attempts, metadata)
        what = f"the output of step {sid!r} of workflow {wid!r}"
        WorkflowStore.put_payload(batch, wid, k_step(wid, sid), header, out, what)
        if _here.loop is None:
            _here.loop, _here.opened = asyncio.new_event_loop(), collections.OrderedDict()
        return _here.loop.run_until_complete(_commit(_here.opened, url, wid, batch))
    except Exception as exc:  # the runner commits it instead
        log.debug("step %s of workflow %s left its checkpoint to the runner: %r", sid, wid, exc)
        return False


def is_rerun() -> bool:
    """Whether this Ray task runs again after an attempt of it ended with its worker (a crash,
    a node lost, or an object lost that Ray rebuilds by running its task again). ``True``
    when Ray cannot say (its private attempt counter moved): then every task looks for its
    step's record first, which is slower, never wrong."""
    try:
        import ray

        if not ray.is_initialized():
            return False  # no Ray here (the threads of actorflow.testing): no second attempts
        core = ray._private.worker.global_worker.core_worker  # type: ignore[attr-defined]
        return int(core.get_current_task_attempt_number()) > 0
    except Exception:
        return True


def stored_outcome(url: str, wid: str, sid: str) -> tuple[Any, ...] | None:
    """The step body's outcome tuple as its ``"ok"`` record in storage has it, if one is stored
    (a task of the step committed it and its worker died before Ray had its result); None if
    none is, or storage cannot say (the step then runs again, as it would have)."""
    try:
        if _here.loop is None:
            _here.loop, _here.opened = asyncio.new_event_loop(), collections.OrderedDict()
        return _here.loop.run_until_complete(_stored_outcome(_here.opened, url, wid, sid))
    except Exception as exc:
        log.warning("step %s of workflow %s could not read its stored record: %r", sid, wid, exc)
        return None


async def _stored_outcome(
    opened: collections.OrderedDict[str, Storage], url: str, wid: str, sid: str
) -> tuple[Any, ...] | None:
    return await WorkflowStore(await _opened(opened, url)).ok_outcome(wid, sid)


__all__ = ["COMMIT_TIMEOUT", "commit_output", "is_rerun", "stored_outcome"]
