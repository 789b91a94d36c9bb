"""Actor state: how an instance becomes a stored snapshot and back.

A class that defines both ``__getstate__`` and ``__setstate__`` controls its state; otherwise
the state is the instance ``__dict__``. The state is stored as JSON when it survives a JSON
round trip unchanged (so tuples, int dict keys and NaN fall back), else cloudpickled.

JSON state is written and read with orjson, which does both several times faster than the
standard library (a turn encodes the state, reads it back to check the round trip, and the
next turn decodes it). orjson refuses integers outside 64 bits where the standard library
takes them, and reads them back as floats: a state orjson cannot write goes through the
standard library as before, and only a state orjson wrote (and read back equal) is marked so
(``"int64": true`` in its header) and read with orjson. Snapshots without the mark, such as
those stored before orjson was used, are read with the standard library.

A snapshot is ``<json header>\\n<state bytes>``; the header carries the version number, the
commit token, the class's schema version, the type name, the encoding (and the orjson mark)
and the creation and update times.

Versions. Each commit gives the actor the next version *number* and a fresh random *token*;
the pair, written ``{number}:{token}`` (a :class:`Stamp`), is what the actor's version key
holds and what every commit compares. Numbers never repeat in one storage's history, because a
deleted actor leaves its last stamp behind as a tombstone (``{number}:{token}:deleted``) and a
re-created one continues from it; but a storage that is rolled back (a Redis that lost its last
second of writes, a restore from backup) hands out the same numbers again. Tokens never repeat,
so a process that cached a snapshot from before a rollback, or from before a delete and
re-create, can never pass the compare-and-set with it: its commit fails, and it reads again.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from typing import Any, NamedTuple

import cloudpickle
import orjson

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


#: What orjson must not take as JSON: dataclasses and datetimes, which it would write as
#: objects and strings; the standard library refuses them too, so they are pickled.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


class Encoded(NamedTuple):
    """An encoded state: ``encoding`` is ``"json"`` or ``"pickle"``; ``int64`` marks JSON that
    orjson wrote and read back equal (so every integer in it fits in 64 bits)."""

    encoding: str
    data: bytes
    int64: bool = False


def encode(state: Any, *, actor: str) -> Encoded:
    """JSON when the state is faithfully JSON (UTF-8, no NaN or infinities, no lone
    surrogates, a round trip gives it back equal), else a pickle."""
    try:
        data = orjson.dumps(state, option=_ORJSON_OPTIONS)
        faithful = orjson.loads(data) == state
    except (TypeError, ValueError, RecursionError):  # a big integer, a key that is not a string...
        pass
    else:
        # Unfaithful (a tuple, NaN, an enum...): the standard library would not do better.
        return Encoded("json", data, True) if faithful else _pickled(state, actor)
    try:
        data = json.dumps(state, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()
        if json.loads(data) == state:
            return Encoded("json", data)
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        pass
    return _pickled(state, actor)


def _pickled(state: Any, actor: str) -> Encoded:
    try:
        return Encoded("pickle", cloudpickle.dumps(state))
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


def decode(encoding: str, data: bytes, int64: bool = False) -> Any:
    """The state ``encode`` gave ``data`` for (``int64``: its orjson mark)."""
    if encoding == "json":
        return orjson.loads(data) if int64 else json.loads(data)
    return _codec.loads(data)  # (which knows where moved classes went)


#: Commit tokens come from a generator of actorflow's own, seeded from the OS (and again in
#: a forked child): never from the global one, which user code may seed (a reproducible
#: simulation step would then give every turn the same token, and after a storage rollback
#: a stale snapshot's version would read as current).
_tokens = random.Random()
os.register_at_fork(after_in_child=_tokens.seed)


def new_token() -> str:
    """A fresh commit token: 64 random bits, hex. Tokens need to be unique, not secret, so a
    Mersenne Twister seeded from the OS serves; the OS's own generator would cost a system
    call per commit."""
    return f"{_tokens.getrandbits(64):016x}"


_DELETED = b"deleted"


@dataclass(frozen=True)
class Stamp:
    """What an actor's version key holds: its version number and commit token, and whether
    the actor was deleted at that version (a tombstone). See the module docstring."""

    version: int
    token: str
    deleted: bool = False

    @classmethod
    def parse(cls, raw: bytes) -> Stamp:
        parts = raw.split(b":")
        # A bare number is the form stores written before tokens existed.
        token = parts[1].decode() if len(parts) > 1 else ""
        return cls(int(parts[0]), token, len(parts) > 2 and parts[2] == _DELETED)

    def encode(self) -> bytes:
        head = f"{self.version}:{self.token}".encode() if self.token else str(self.version).encode()
        return head + b":" + _DELETED if self.deleted else head

    def tombstone(self) -> Stamp:
        return Stamp(self.version, self.token or new_token(), deleted=True)


def is_live(raw: bytes | None) -> bool:
    """Whether a version key's value names a live actor (not absent, not a tombstone)."""
    return raw is not None and not Stamp.parse(raw).deleted


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
    token: str = ""  # empty only in snapshots written before tokens existed
    int64: bool = False  # JSON that orjson wrote and reads back exactly (see the module doc)
    #: Not in storage: the state ``__init__()`` gives an actor that a call activates (version 0;
    #: the version key is absent until that call's commit writes version 1).
    initial: bool = False

    @property
    def stamp(self) -> bytes:
        """The version key's value while this snapshot is the actor's current one."""
        return Stamp(self.version, self.token).encode()

    @property
    def expect(self) -> bytes | None:
        """What a commit on this snapshot requires the version key to hold: its stamp, or
        absence for an ``initial`` one."""
        return None if self.initial else self.stamp

    @classmethod
    def first(cls, type_name: str, schema: int, state: Encoded, now: float) -> Snapshot:
        """The ``initial`` snapshot of an actor a call activates."""
        encoding, data, int64 = state
        return cls(0, schema, type_name, encoding, now, now, data, "", int64, initial=True)

    def pack(self) -> bytes:
        header = {
            "v": self.version,
            "token": self.token,
            "schema": self.schema,
            "type": self.type_name,
            "encoding": self.encoding,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if self.int64:
            header["int64"] = True
        try:  # the same bytes as _codec.pack, written by orjson (a turn writes one per commit)
            return orjson.dumps(header, option=orjson.OPT_SORT_KEYS) + b"\n" + self.data
        except TypeError:  # a schema number past 64 bits
            return _codec.pack(header, self.data)

    @classmethod
    def unpack(cls, raw: bytes) -> Snapshot:
        h, data = _codec.unpack(raw)
        return cls(
            h["v"],
            h["schema"],
            h["type"],
            h["encoding"],
            h["created_at"],
            h["updated_at"],
            data,
            h.get("token", ""),
            h.get("int64") is True,
        )

    def state(self) -> Any:
        return decode(self.encoding, self.data, self.int64)

    def successor(self, state: Encoded, schema: int, now: float) -> Snapshot:
        """The snapshot a commit of this one's next state writes: the next number, a new token."""
        encoding, data, int64 = state
        return Snapshot(
            self.version + 1, schema, self.type_name, encoding, self.created_at, now, data, new_token(), int64
        )

    def json_state(self) -> Any:
        """The state as JSON-compatible data, or ``None`` when it is pickled."""
        return self.state() if self.encoding == "json" else None
