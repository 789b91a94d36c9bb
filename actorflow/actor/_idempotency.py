"""Idempotency records: what a keyed call left, so that a repeat of its key changes nothing.

A keyed turn's record (its result, its method's name and a hash of its arguments' canonical
JSON) commits with the turn, on the condition that no record exists yet. A repeat returns the
recorded result; a repeat with another method, or with other JSON arguments, raises
:class:`~actorflow.errors.IdempotencyKeyReusedError` and changes nothing.

Records are kept ``idempotency_ttl`` seconds (24 h) and never dropped earlier: every
``TRIM_EVERY`` keyed commits of an actor, a process drops the expired ones and counts the
rest, and while an actor holds ``idempotency_records`` of them new keys are refused
(:class:`~actorflow.errors.IdempotencyWindowFullError`) until some expire. The count is taken
every ``TRIM_EVERY`` commits per process, so the bound can be passed by that many per process.

Keys callers choose are recorded as ``u:{key}`` (:func:`client_key`), apart from the
runtime's own (``timer:{name}:{setting}:{due}``, ``event:...``, ``msg:...``): a call keyed like a tick
would otherwise stand in for it.
"""

from __future__ import annotations

import collections
import hashlib
import json
from typing import Any

from actorflow import _codec
from actorflow.actor._config import ActorConfig
from actorflow.actor._keys import actor_name, idem_index, k_idem
from actorflow.errors import IdempotencyKeyReusedError, IdempotencyWindowFullError
from actorflow.storage import Batch, Storage

CLIENT_KEY_PREFIX = "u:"
#: Keyed commits of one actor in this process between two trims of its records.
TRIM_EVERY = 100
#: Records deleted per commit by a trim.
TRIM_CHUNK = 500
MAX_TRIM_ATTEMPTS = 200


def client_key(key: str | None) -> str | None:
    """The key under which a caller's idempotency key is recorded."""
    return None if key is None else CLIENT_KEY_PREFIX + key


def fingerprint(method: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> str | None:
    """What a record remembers of its call's arguments: a hash of their canonical JSON, or
    ``None`` when they are not JSON (then only the method name is compared)."""
    try:
        text = json.dumps([list(args), kwargs], sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None
    return hashlib.sha256(f"{method}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


def record(at: float, method: str, fp: str | None, result: Any, workflow: str | None, what: str) -> bytes:
    """The stored form of a keyed call's outcome (``workflow``: the sub-workflow it launched,
    whose output is then the call's result)."""
    header: dict[str, Any] = {"at": at, "m": method, "fp": fp}
    if workflow is not None:
        header["workflow"] = workflow
    blob, _ = _codec.dumps(result, what=what)
    return _codec.pack(header, blob)


def replay(
    t: str, actor_id: str, key: str, method: str, fp: str | None, check_reuse: bool, raw: bytes
) -> tuple[Any, str | None]:
    """``(result, sub-workflow id or None)`` of a recorded call, for a repeat of its key; a
    reused key (another method, other arguments) raises when ``check_reuse``."""
    header, blob = _codec.unpack(raw)
    if check_reuse:
        recorded_method, recorded_fp = header.get("m"), header.get("fp")
        other_method = recorded_method is not None and recorded_method != method
        if other_method or (fp and recorded_fp and recorded_fp != fp):
            what = f"method {recorded_method!r}" if other_method else "other arguments"
            shown = key.removeprefix(CLIENT_KEY_PREFIX)
            raise IdempotencyKeyReusedError(
                t,
                actor_id,
                shown,
                f"idempotency key {shown!r} was already used on {t}/{actor_id} with {what}; "
                "the first call's result stands and this call changed nothing",
            )
    if "workflow" in header:
        return None, str(header["workflow"])
    return _codec.loads(blob), None


class Window:
    """Keeps each actor's records within their window (see the module docstring)."""

    def __init__(self, storage: Storage, config: ActorConfig) -> None:
        self.storage = storage
        self.config = config
        # Keyed commits since each actor's last trim, for the most recent ``cache_size`` actors
        # (an actor that drops out starts counting again: it is trimmed a little later).
        self._commits_since_trim: collections.OrderedDict[str, int] = collections.OrderedDict()
        # Actors whose window was found full, with when that was last checked (monotonic).
        self._full: dict[str, float] = {}

    def forget_full(self) -> None:
        """Forget which actors were found full (each is checked again on its next keyed call)."""
        self._full.clear()

    def is_full(self, name: str) -> bool:
        """Whether this process last found actor ``{type}/{id}``'s window full."""
        return name in self._full

    async def committed(self, t: str, actor_id: str) -> None:
        """After a keyed commit: every ``TRIM_EVERY`` of them, trim the actor's records."""
        name = actor_name(t, actor_id)
        n = self._commits_since_trim.pop(name, 0) + 1
        self._commits_since_trim[name] = n
        while len(self._commits_since_trim) > self.config.cache_size:
            self._commits_since_trim.popitem(last=False)
        if n >= TRIM_EVERY:
            self._commits_since_trim[name] = 0
            await self.trim(t, actor_id)

    async def trim(self, t: str, actor_id: str) -> None:
        """Drop the actor's records older than ``idempotency_ttl`` (never a younger one), then
        note whether it still holds ``idempotency_records`` of them."""
        name = actor_name(t, actor_id)
        index = idem_index(t, actor_id)
        horizon = self.config.clock.time() - self.config.idempotency_ttl
        for _ in range(MAX_TRIM_ATTEMPTS):
            due = await self.storage.index_range(index, max_score=horizon, limit=TRIM_CHUNK)
            expired = [member for member, _ in due]
            keys = [k_idem(t, actor_id, m) for m in expired]
            # Each record exactly as read: a key deleted and written again meanwhile (by
            # another trim and a new call, or a delete and re-create) holds a fresh record
            # whose window has just begun.
            batch = Batch()
            for k, m, raw in zip(keys, expired, await self.storage.get_many(keys), strict=True):
                batch.require(k, raw).delete(k).index_remove(index, m)
            if expired and not await self.storage.commit(batch):
                continue
            if len(expired) < TRIM_CHUNK:
                break
        if await self.storage.index_count(index) >= self.config.idempotency_records:
            self._full[name] = self.config.clock.monotonic()
        else:
            self._full.pop(name, None)

    async def check(self, t: str, actor_id: str) -> None:
        """Refuse a new keyed call on an actor whose window is full (checked again at most once
        a second), rather than forget a record a retry may still need."""
        name = actor_name(t, actor_id)
        if self.config.clock.monotonic() - self._full.get(name, 0.0) >= 1.0:
            await self.trim(t, actor_id)
        if name not in self._full:
            return
        oldest = await self.storage.index_range(idem_index(t, actor_id), limit=1)
        ttl = self.config.idempotency_ttl
        retry_after = max(1.0, oldest[0][1] + ttl - self.config.clock.time()) if oldest else 1.0
        raise IdempotencyWindowFullError(
            t,
            actor_id,
            f"actor {name} holds {self.config.idempotency_records} idempotency records from the last "
            f"{ttl:.0f} s, as many as it keeps; retry the call later",
            retry_after,
        )
