"""Where a workflow lives in storage, and its records.

Key layout (all under ``wf/{workflow_id}/`` except the listing index)::

    wfs/{wid}                 status, one flat "directory" so list_all is a listing
    wf/{wid}/meta             JSON: status, user metadata, start/end time, error summary
    wf/{wid}/lease            JSON: token, host, pid, expiry of the process running it
    wf/{wid}/dag              the root graph, flattened (StepSpec list), pickled
    wf/{wid}/counters         JSON: next duplicate number per step name
    wf/{wid}/s/{step_id}      a finished step: JSON header + pickled output or continuation
    wf/{wid}/o/{hash}         contents of checkpointed ObjectRefs
    wf/{wid}/out              the workflow's output (header + pickle)
    wf/{wid}/err              the exception that failed it (pickle)
    wf/{wid}/ev/{key}         an event posted to it under a key (JSON): the first one kept,
                              a repeat refused, until the workflow is deleted

Every write a runner makes requires the lease to still hold its token (fencing), so a runner
that lost its lease (cancelled, or taken over after it was presumed dead) cannot write.
"""

from __future__ import annotations

import enum
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from actorflow import _codec
from actorflow.errors import WorkflowNotFoundError
from actorflow.storage import Batch, Storage


class WorkflowStatus(enum.StrEnum):
    """Where a workflow stands.

    RUNNING: a live process is executing it. RESUMABLE: it was running but that process is
    gone (crash, kill, lost lease); ``resume`` continues it. FAILED: a step raised after its
    retries; ``resume`` re-runs the failed steps. SUCCESSFUL: finished, output stored.
    CANCELED: stopped by ``cancel``; it cannot be resumed. PENDING: stored and waiting in the
    queue of ``workflow.init(max_running_workflows=...)`` for a free slot.
    """

    RUNNING = "RUNNING"
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"
    RESUMABLE = "RESUMABLE"
    CANCELED = "CANCELED"
    PENDING = "PENDING"


INDEX_PREFIX = "wfs/"


def k_meta(wid: str) -> str:
    return f"wf/{wid}/meta"


def k_index(wid: str) -> str:
    return f"{INDEX_PREFIX}{wid}"


def k_lease(wid: str) -> str:
    return f"wf/{wid}/lease"


def k_dag(wid: str) -> str:
    return f"wf/{wid}/dag"


def k_counters(wid: str) -> str:
    return f"wf/{wid}/counters"


def step_prefix(wid: str) -> str:
    return f"wf/{wid}/s/"


def k_step(wid: str, sid: str) -> str:
    return f"{step_prefix(wid)}{sid}"


def event_prefix(wid: str) -> str:
    return f"wf/{wid}/ev/"


def object_prefix(wid: str) -> str:
    return f"wf/{wid}/o/"


def k_object(wid: str, key: str) -> str:
    return f"{object_prefix(wid)}{key}"


def k_out(wid: str) -> str:
    return f"wf/{wid}/out"


def k_err(wid: str) -> str:
    return f"wf/{wid}/err"


def k_event(wid: str, key: str) -> str:
    return f"wf/{wid}/ev/{key}"


def step_header(
    kind: str, name: str, start: float, end: float, attempts: int, metadata: Mapping[str, Any]
) -> dict[str, Any]:
    """The header of a step's record (its payload follows): written by the runner, or by the
    step's own task when it checkpoints its output itself (see :mod:`._ahead`)."""
    return {
        "kind": kind,
        "name": name,
        "start_time": start,
        "end_time": end,
        "attempts": attempts,
        "user_metadata": metadata,
    }


_HOST = socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Lease:
    """Ownership of a running workflow. Renewed by its runner; dead once expired.

    On the runner's own host a lease also dies with the runner's process, so a killed
    workflow is reported RESUMABLE at once rather than after the expiry. A *handed* lease
    (``pid`` 0) is made by one process for a runner in another (``run_async``,
    ``resume_async``): it names no process, so only its expiry counts until that runner takes
    the workflow over with a lease of its own, as it does when it starts; the process that made
    it may exit first.
    """

    token: str
    host: str
    pid: int
    expires: float

    @classmethod
    def new(cls, ttl: float, token: str | None = None, *, handed: bool = False) -> Lease:
        return cls(token or uuid.uuid4().hex, _HOST, 0 if handed else os.getpid(), time.time() + ttl)

    def renewed(self, ttl: float) -> Lease:
        return Lease(self.token, _HOST, os.getpid(), time.time() + ttl)

    def alive(self) -> bool:
        if self.expires < time.time():
            return False
        return not (self.pid and self.host == _HOST and not _pid_alive(self.pid))

    def encode(self) -> bytes:
        return _codec.json_dumps(asdict(self))

    @classmethod
    def decode(cls, data: bytes | None) -> Lease | None:
        return cls(**_codec.json_loads(data)) if data else None


def effective_status(meta: Mapping[str, Any], lease: Lease | None) -> WorkflowStatus:
    status = WorkflowStatus(meta["status"])
    if status is WorkflowStatus.RUNNING and (lease is None or not lease.alive()):
        return WorkflowStatus.RESUMABLE
    return status


class WorkflowStore:
    """Reads and record-building for workflows over a :class:`Storage`."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def read_head(self, wid: str) -> tuple[dict[str, Any], bytes, bytes | None]:
        """The workflow's meta (decoded and raw) and raw lease; raises if unknown."""
        meta_raw, lease_raw = await self.storage.get_many([k_meta(wid), k_lease(wid)])
        if meta_raw is None:
            raise WorkflowNotFoundError(wid)
        return _codec.json_loads(meta_raw), meta_raw, lease_raw

    async def status(self, wid: str) -> WorkflowStatus:
        meta, _, lease_raw = await self.read_head(wid)
        return effective_status(meta, Lease.decode(lease_raw))

    def put_meta(self, batch: Batch, wid: str, meta: Mapping[str, Any]) -> Batch:
        batch.put(k_meta(wid), _codec.json_dumps(dict(meta)))
        batch.put(k_index(wid), str(meta["status"]).encode())
        return batch

    @staticmethod
    def put_payload(batch: Batch, wid: str, key: str, header: dict[str, Any], value: Any, what: str) -> Batch:
        blob, objects = _codec.dumps(value, what=what)
        header = {**header, "objects": sorted(objects)}
        batch.put(key, _codec.pack(header, blob))
        for okey, oblob in objects.items():
            batch.put(k_object(wid, okey), oblob)
        return batch

    async def load_payload(self, wid: str, raw: bytes) -> tuple[dict[str, Any], Any]:
        header, blob = _codec.unpack(raw)
        return header, await self._decoded(wid, header, blob)

    async def ok_outcome(self, wid: str, sid: str) -> tuple[Any, ...] | None:
        """Step ``sid``'s outcome as a step's body gives it, ``("ok", output, start, end,
        attempts, "")``, from its stored ``"ok"`` record; None if it has none."""
        raw = await self.storage.get(k_step(wid, sid))
        if raw is None:
            return None
        header, blob = _codec.unpack(raw)
        if header.get("kind") != "ok":
            return None
        value = await self._decoded(wid, header, blob)
        return ("ok", value, header["start_time"], header["end_time"], header["attempts"], "")

    async def _decoded(self, wid: str, header: dict[str, Any], blob: bytes) -> Any:
        objects: dict[str, bytes] = {}
        keys = header.get("objects") or []
        if keys:
            blobs = await self.storage.get_many([k_object(wid, k) for k in keys])
            objects = {k: b for k, b in zip(keys, blobs, strict=True) if b is not None}
        return _codec.loads(blob, objects)

    async def load_output(self, wid: str) -> Any:
        raw = await self.storage.get(k_out(wid))
        if raw is None:
            raise WorkflowNotFoundError(wid)
        return (await self.load_payload(wid, raw))[1]

    async def load_error(self, wid: str) -> BaseException:
        raw = await self.storage.get(k_err(wid))
        if raw is None:
            from actorflow.engine._steps import StepFailure

            return StepFailure("Unknown", "the workflow failed but its error was not stored")
        exc = (await self.load_payload(wid, raw))[1]
        assert isinstance(exc, BaseException)
        return exc

    async def load_dag(self, wid: str) -> tuple[list[Any], dict[str, int]]:
        dag_raw, counters_raw = await self.storage.get_many([k_dag(wid), k_counters(wid)])
        if dag_raw is None:
            raise WorkflowNotFoundError(wid)
        _, specs = await self.load_payload(wid, dag_raw)
        counters = _codec.json_loads(counters_raw) if counters_raw else {}
        return specs, counters

    async def step_ids(self, wid: str) -> set[str]:
        prefix = step_prefix(wid)
        out: set[str] = set()
        after: str | None = None
        while True:
            page = await self.storage.list_keys(prefix, start_after=after, limit=5000)
            out.update(k[len(prefix) :] for k in page)
            if len(page) < 5000:
                return out
            after = page[-1]
