"""How actor state is encoded: JSON through orjson when orjson writes it faithfully, through
the standard library when only that can (integers past 64 bits), a pickle otherwise; and
snapshots read back equal whichever wrote them, old ones (without the orjson mark) included."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
from typing import Any

import pytest

from actorflow import _codec
from actorflow.actor._state import Encoded, Snapshot, decode, encode

pytestmark = pytest.mark.timeout(30)


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int


def roundtrip(state: Any) -> tuple[Encoded, Any]:
    """The encoded state, and what a snapshot of it stored and read back holds."""
    encoded = encode(state, actor="T/a")
    snap = Snapshot.first("T", 1, encoded, 0.0).successor(encoded, 1, 1.0)
    return encoded, Snapshot.unpack(snap.pack()).state()


@pytest.mark.parametrize(
    "state",
    [
        {"owner": "Ann", "balance": 3, "history": [["deposit", 1]] * 100},
        {"n": 2**63 - 1, "m": -(2**63), "u": 2**64 - 1, "f": 1e-7, "big": 1.7976931348623157e308},
        {"text": "naïve ☃ \U0001f600", "nested": {"a": [None, True, False, 0.5, {}]}},
    ],
)
def test_json_that_orjson_writes_is_marked_and_reads_back_equal(state: Any) -> None:
    encoded, back = roundtrip(state)
    assert encoded.encoding == "json" and encoded.int64
    assert back == state and type(back["n" if "n" in state else next(iter(state))]) is type(
        state["n" if "n" in state else next(iter(state))]
    )
    header, data = _codec.unpack(Snapshot.first("T", 1, encoded, 0.0).pack())
    assert header["encoding"] == "json" and header["int64"] is True
    assert json.loads(data) == state  # still plain JSON, readable by anything


@pytest.mark.parametrize("big", [2**64, 2**70, -(2**63) - 1, 10**40])
def test_integers_past_64_bits_go_through_the_standard_library_and_stay_exact(big: int) -> None:
    state = {"big": big, "list": [big, 1]}
    encoded, back = roundtrip(state)
    assert encoded.encoding == "json" and not encoded.int64  # orjson would read a float back
    assert back == state and type(back["big"]) is int and back["big"] == big
    header, _ = _codec.unpack(Snapshot.first("T", 1, encoded, 0.0).pack())
    assert "int64" not in header


@pytest.mark.parametrize(
    "state",
    [
        {"p": (1, 2)},  # a tuple
        {"x": math.nan},
        {"x": math.inf},
        {1: "int key"},
        {"c": Color.RED},
        {"d": datetime.datetime(2026, 1, 1)},
        {"p": Point(1)},
        {"s": "\ud800"},  # a lone surrogate
    ],
)
def test_what_json_cannot_hold_faithfully_is_pickled_and_reads_back_equal(state: Any) -> None:
    encoded, back = roundtrip(state)
    assert encoded.encoding == "pickle"
    assert repr(back) == repr(state)  # (NaN is not equal to itself)


def test_snapshots_stored_before_the_mark_read_with_the_standard_library() -> None:
    """A snapshot an earlier version wrote has no ``int64`` in its header and may hold an
    integer past 64 bits, which orjson would read as a float."""
    state = {"big": 2**70, "n": 5}
    header = {
        "v": 3,
        "token": "00ff",
        "schema": 1,
        "type": "T",
        "encoding": "json",
        "created_at": 1.0,
        "updated_at": 2.0,
    }
    raw = _codec.pack(header, json.dumps(state, separators=(",", ":")).encode())
    snap = Snapshot.unpack(raw)
    assert not snap.int64
    assert snap.state() == state and type(snap.state()["big"]) is int
    assert snap.json_state() == state


def test_decode_follows_the_mark() -> None:
    data = b'{"big":1180591620717411303424}'
    assert decode("json", data) == {"big": 2**70}
    assert decode("json", data, int64=True) == {"big": float(2**70)}  # why only marked data may take it
