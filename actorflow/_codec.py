"""Encoding of everything actorflow stores.

Two kinds of payload:

* **Trusted data** (step arguments and outputs, workflow graphs, actor state that is not JSON)
  is cloudpickled. It only ever comes from the application's own code, never from the network.
  Ray ``ObjectRef``s inside such data are *checkpointed*: their contents are stored once under a
  content hash and the pickle keeps only the hash, so the data can be restored on any cluster.
* **Records** (statuses, metadata, timestamps) are JSON, so operators can read them.

A record with a payload is stored as ``<json header>\\n<pickle>``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pickle
import sys
from collections.abc import Mapping
from typing import Any

import cloudpickle

from actorflow.errors import SerializationError

_REF_TAG = "actorflow.objref"


def _is_object_ref(obj: object) -> bool:
    # Never trust sys.modules["ray"]: another thread may be half-way through importing it.
    # If the class itself is not defined yet, no ObjectRef can exist.
    cls = getattr(sys.modules.get("ray._raylet"), "ObjectRef", None)
    return cls is not None and isinstance(obj, cls)


def object_key(blob: bytes) -> str:
    """Content address of a checkpointed object: url-safe base64 of its sha256."""
    return base64.urlsafe_b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


class _Pickler(cloudpickle.CloudPickler):
    def __init__(self, file: io.BytesIO, objects: dict[str, bytes]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._objects = objects

    def persistent_id(self, obj: Any) -> Any:
        if not _is_object_ref(obj):
            return None
        import ray

        # Contents may themselves hold refs; they are checkpointed the same way.
        blob = _dump(ray.get(obj), self._objects)
        key = object_key(blob)
        self._objects[key] = blob
        return (_REF_TAG, key)


def _dump(value: Any, objects: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, objects).dump(value)
    return buf.getvalue()


def dumps(value: Any, *, what: str) -> tuple[bytes, dict[str, bytes]]:
    """Pickle trusted data; return the bytes and the ObjectRef contents it referenced.

    ``what`` names the owner of the value (a step, an actor) for the error message.
    Raises :class:`SerializationError` when the value cannot be pickled.
    """
    objects: dict[str, bytes] = {}
    try:
        return _dump(value, objects), objects
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(f"cannot serialize {what}: {type(exc).__name__}: {exc}") from exc


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, objects: Mapping[str, bytes]) -> None:
        super().__init__(file)
        self._objects = objects

    def persistent_load(self, pid: Any) -> Any:
        tag, key = pid
        if tag != _REF_TAG:
            raise pickle.UnpicklingError(f"unknown persistent id {tag!r}")
        import ray

        from actorflow.workflow._raysupport import ensure_ray

        ensure_ray()
        return ray.put(loads(self._objects[key], self._objects))


def loads(data: bytes, objects: Mapping[str, bytes] | None = None) -> Any:
    """Inverse of :func:`dumps`; ``objects`` supplies checkpointed ObjectRef contents."""
    return _Unpickler(io.BytesIO(data), objects or {}).load()


def json_dumps(value: Any) -> bytes:
    """Compact, deterministic JSON bytes."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def json_loads(data: bytes) -> Any:
    return json.loads(data)


def pack(header: Mapping[str, Any], payload: bytes = b"") -> bytes:
    """A record: JSON header, newline, optional payload."""
    return json_dumps(header) + b"\n" + payload


def unpack(data: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, payload = data.partition(b"\n")
    return json.loads(head), payload


def check_json(value: Any, *, what: str) -> None:
    """Raise :class:`SerializationError` unless ``value`` is JSON-encodable."""
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"{what} must be JSON-serializable: {exc}") from exc
