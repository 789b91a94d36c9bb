"""Riding out storage blips and fencing commits by the runner's lease.

A runner (an executor, a take-over) retries storage that cannot be reached for as long as its
lease could still be valid, less a margin, and never longer: past that another runner may have
taken over. A commit whose outcome was unknown is recognised as applied by its own bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from actorflow.errors import StorageUnavailableError
from actorflow.storage import Batch, Storage

log = logging.getLogger("actorflow.workflow")
T = TypeVar("T")

#: Pause before the first retry of a storage call that could not reach storage; it doubles
#: with every further retry, up to ``RETRY_MAX_DELAY``.
RETRY_FIRST_DELAY = 0.05
RETRY_MAX_DELAY = 1.0


class LeaseLost(BaseException):
    """The runner no longer owns the workflow (cancelled or taken over). Internal signal.

    Raised ``from`` a :class:`StorageUnavailableError` when the runner gave up because storage
    stayed unreachable for as long as its lease could be valid: then nobody has taken over
    yet, and the lease will lapse on its own.
    """


def lease_margin(lease_ttl: float) -> float:
    """How long before its lease expires a runner stops retrying storage and gives up.

    Other processes judge the expiry by their own clocks, and the runner must still cancel its
    steps in flight before another runner may start them again; the margin covers both.
    """
    return min(2.0, lease_ttl / 10)


async def ride_out(op: Callable[[], Awaitable[T]], until: Callable[[], float], what: str) -> T:
    """``await op()``, retried after :class:`StorageUnavailableError` while storage is down.

    The first attempt is always made. After a failure ``op`` is called again after a pause
    (50 ms doubling to 1 s) if that pause ends before ``until()``, a ``time.time()`` value read
    anew each time (a renewed lease moves it); otherwise the last error is raised. Any other
    error is raised at once. ``op`` must be safe to repeat: a read, or see :func:`commit_fenced`.

    An attempt that hangs is not cut short here: a cancelled commit may still apply later
    (a frozen server runs it when it wakes), so bounding attempts is the backend's job, with a
    socket timeout that turns a hang into :class:`StorageUnavailableError`.
    """
    delay = RETRY_FIRST_DELAY
    while True:
        try:
            return await op()
        except StorageUnavailableError as exc:
            if time.time() + delay >= until():
                raise
            if delay == RETRY_FIRST_DELAY:
                log.warning("storage unavailable during %s; retrying: %s", what, exc)
        await asyncio.sleep(delay)
        delay = min(2 * delay, RETRY_MAX_DELAY)


async def commit_fenced(
    storage: Storage, batch: Batch, until: Callable[[], float], what: str = "a commit"
) -> bool:
    """Commit ``batch``, riding out storage blips as :func:`ride_out` does; return whether the
    batch applied (``False``: its expectations failed and nothing changed).

    A commit that fails on the wire may still have applied (the Redis backend cannot tell).
    Sending the same batch again is harmless (the same bytes, applied only if its
    expectations still hold), but a batch that did apply has often broken its own
    expectations: a lease renewal requires the old lease it replaced, a final commit requires
    the lease it deleted. So once an outcome was unknown, a ``False`` answer is checked: if
    every key the batch puts holds its bytes and every key it deletes is absent, the earlier
    attempt applied, and this returns ``True`` rather than reporting a lost race.

    That check is sound for batches that write at least one value no other writer could
    (a fresh lease, a timestamped record), as every executor batch does. Index changes are
    not checked; executor batches make none.
    """
    unknown = False

    async def attempt() -> bool:
        nonlocal unknown
        try:
            if await storage.commit(batch):
                return True
        except StorageUnavailableError:
            unknown = True
            raise
        if not unknown:
            return False
        keys = [*batch.puts, *batch.deletes]
        wanted: list[bytes | None] = [*batch.puts.values(), *(None for _ in batch.deletes)]
        return await storage.get_many(keys) == wanted

    return await ride_out(attempt, until, what)


__all__ = ["RETRY_FIRST_DELAY", "RETRY_MAX_DELAY", "LeaseLost", "commit_fenced", "lease_margin", "ride_out"]
