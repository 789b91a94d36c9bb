"""Actor state: how an instance becomes a stored snapshot and back.

A class that defines both ``__getstate__`` and ``__setstate__`` controls its state; otherwise
the state is the instance ``__dict__``. The state is stored as JSON when it survives a JSON
round trip unchanged (so tuples, int dict keys and NaN fall back), else cloudpickled.

A snapshot is ``<json header>\\n<state bytes>``; the header carries the version (monotonic,
the compare-and-set token), the class's schema version, the type name, the encoding and the
creation and update times.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import cloudpickle

from actorflow import _codec
from actorflow.errors import ActorStateError


def defines_custom_state(cls: type) -> tuple[bool, bool]:
    """Whether ``cls`` itself (not ``object``) defines ``__getstate__`` and ``__setstate__``."""
    get = getattr(cls, "__getstate__", None) is not getattr(object, "__getstate__", None)
    put = hasattr(cls, "__setstate__")
    return get, put


def capture(instance: Any, custom: bool) -> Any:
    return instance.__getstate__() if custom else dict(instance.__dict__)


def restore(cls: type[Any], state: Any, custom: bool) -> Any:
    new: Any = cls.__new__
    obj = new(cls)
    if custom:
        obj.__setstate__(state)
    else:
        obj.__dict__.update(state)
    return obj


def encode(state: Any, *, actor: str) -> tuple[str, bytes]:
    """``("json", bytes)`` when the state is faithfully JSON, else ``("pickle", bytes)``."""
    try:
        text = json.dumps(state, separators=(",", ":"), allow_nan=False)
        if json.loads(text) == state:
            return "json", text.encode()
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        return "pickle", cloudpickle.dumps(state)
    except Exception as exc:
        where = ""
        if isinstance(state, dict):
            for name, value in state.items():
                try:
                    cloudpickle.dumps(value)
                except Exception:
                    where = f" (attribute {name!r})"
                    break
        raise ActorStateError(
            actor.split("/")[0],
            actor.split("/", 1)[-1],
            f"the state of actor {actor}{where} cannot be stored: {type(exc).__name__}: {exc}",
        ) from exc


def decode(encoding: str, data: bytes) -> Any:
    if encoding == "json":
        return json.loads(data)
    return cloudpickle.loads(data)


@dataclass(frozen=True)
class Snapshot:
    """A committed actor state as stored."""

    version: int
    schema: int
    type_name: str
    encoding: str
    created_at: float
    updated_at: float
    data: bytes

    def pack(self) -> bytes:
        header = {
            "v": self.version,
            "schema": self.schema,
            "type": self.type_name,
            "encoding": self.encoding,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        return _codec.pack(header, self.data)

    @classmethod
    def unpack(cls, raw: bytes) -> Snapshot:
        h, data = _codec.unpack(raw)
        return cls(h["v"], h["schema"], h["type"], h["encoding"], h["created_at"], h["updated_at"], data)

    def state(self) -> Any:
        return decode(self.encoding, self.data)

    def successor(self, encoding: str, data: bytes, schema: int) -> Snapshot:
        return Snapshot(
            self.version + 1, schema, self.type_name, encoding, self.created_at, time.time(), data
        )

    def json_state(self) -> Any:
        """The state as JSON-compatible data, or ``None`` when it is pickled."""
        return json.loads(self.data) if self.encoding == "json" else None
