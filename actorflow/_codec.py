"""Encoding of everything actorflow stores.

Two kinds of payload:

* **Trusted data** (step arguments and outputs, workflow graphs, actor state that is not JSON)
  is cloudpickled. It only ever comes from the application's own code, never from the network.
  Ray ``ObjectRef``s inside such data are *checkpointed*: their contents are stored once under a
  content hash and the pickle keeps only the hash, so the data can be restored on any cluster.
* **Records** (statuses, metadata, timestamps) are JSON, so operators can read them.

A record with a payload is stored as ``<json header>\\n<pickle>``.

JSON that comes from the network is read with :func:`strict_json_loads`: RFC 8259 JSON only
(no ``NaN``, ``Infinity`` or numbers too large for a float, which Python's parser accepts), valid
UTF-8 without lone surrogates, nested at most :data:`MAX_JSON_DEPTH` deep. JSON sent out is
written with :func:`strict_json_dumps` under the same rules, so what actorflow accepts and what
it answers are the same language.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import pickle
import sys
from collections.abc import Mapping
from typing import Any

import cloudpickle

from actorflow.errors import BadRequestError, SerializationError

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


#: Modules that moved, by their old names: data stored before a move names a class or function
#: by the module it lived in then, and must still load.
MOVED_MODULES = {
    "actorflow.workflow._dag": "actorflow.engine._dag",
    "actorflow.workflow._store": "actorflow.engine._store",
    "actorflow.workflow._executor": "actorflow.engine._executor",
    "actorflow.workflow._events": "actorflow.engine._events",
    "actorflow.workflow._raysupport": "actorflow.engine._steps",
    "actorflow.workflow._compat": "actorflow.engine._raydag",
    "actorflow.workflow._runtime": "actorflow.engine._runtime",
}
# Classes that moved *and* were renamed: (old module, old name) -> (new module, new name).
MOVED_CLASSES = {
    ("actorflow.actor._runtime", "_Message"): ("actorflow.actor._context", "Message"),
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, objects: Mapping[str, bytes]) -> None:
        super().__init__(file)
        self._objects = objects

    def find_class(self, module: str, name: str) -> Any:
        module, name = MOVED_CLASSES.get((module, name), (module, name))
        return super().find_class(MOVED_MODULES.get(module, module), name)

    def persistent_load(self, pid: Any) -> Any:
        tag, key = pid
        if tag != _REF_TAG:
            raise pickle.UnpicklingError(f"unknown persistent id {tag!r}")
        import ray

        from actorflow._ray import ensure_ray

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


#: Deepest nesting of arrays and objects accepted in JSON from the network (``[[1]]`` is 2).
MAX_JSON_DEPTH = 64


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is too large")
    return value


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_tree(value: Any, what: str, check_strings: bool) -> None:
    """Depth and string checks over a parsed JSON value, without recursion."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if check_strings and _lone_surrogate(item):
                raise BadRequestError(f"{what}: a string holds a lone surrogate (not valid Unicode)")
        elif isinstance(item, (list, dict)):
            if depth >= MAX_JSON_DEPTH:
                raise BadRequestError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
            children = list(item.items()) if isinstance(item, dict) else item
            for child in children:
                if isinstance(child, tuple):  # a (key, value) pair of an object
                    stack.append((child[0], depth + 1))
                    stack.append((child[1], depth + 1))
                else:
                    stack.append((child, depth + 1))


_STRICT_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def strict_json_loads(data: bytes | str, *, what: str) -> Any:
    """Parse JSON from an untrusted source, strictly (see the module docstring).

    Raises :class:`BadRequestError` naming ``what`` (``"the request body"``...) for anything
    else: invalid UTF-8, invalid JSON, ``NaN``/``Infinity``/``1e999``, an integer with more
    than 4300 digits, a lone surrogate (raw or ``\\ud800``-escaped), nesting deeper than
    :data:`MAX_JSON_DEPTH`.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    except UnicodeDecodeError as exc:
        raise BadRequestError(f"{what} is not valid UTF-8: {exc}") from None
    try:
        if text.startswith("\ufeff"):  # (what json.loads refuses before it parses)
            raise ValueError("Unexpected UTF-8 BOM (decode using utf-8-sig)")
        value = _STRICT_DECODER.decode(text)
    except RecursionError:
        raise BadRequestError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise BadRequestError(f"{what} is not valid JSON: {exc}") from None
    # Cheap bounds first: fewer brackets than the limit cannot nest deeper, and without a
    # \\u escape no string can hold a surrogate (raw ones failed the UTF-8 decoding above).
    deep = text.count("[") + text.count("{") > MAX_JSON_DEPTH
    escapes = "\\u" in text
    if deep or escapes:
        _check_tree(value, what, escapes)
    return value


def strict_json_dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON under the rules of :func:`strict_json_loads`.

    Raises ``ValueError`` (NaN, infinities, lone surrogates, nesting past Python's recursion
    limit) or ``TypeError`` (a value JSON has no form for).
    """
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return text.encode("utf-8")  # UnicodeEncodeError (a ValueError) for a lone surrogate


def check_json(value: Any, *, what: str) -> None:
    """Raise :class:`SerializationError` unless ``value`` is strict JSON (no NaN, no infinities,
    no lone surrogates)."""
    try:
        strict_json_dumps(value)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"{what} must be JSON-serializable: {exc}") from exc
