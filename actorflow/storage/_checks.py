"""What every storage backend checks the same way: keys, values and batches, and the bounds of a
prefix range."""

from __future__ import annotations

import math
from dataclasses import dataclass

from actorflow.errors import StorageError
from actorflow.storage._base import Batch
from actorflow.storage._groups import batch_group


def check_key(key: object, what: str, url: str) -> str:
    """Return ``key`` if it is a ``str`` that UTF-8 can encode; raise :class:`StorageError`."""
    if not isinstance(key, str):
        raise StorageError(f"{what} must be a str, got {type(key).__name__}", url)
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise StorageError(f"{what} {key!r} is not valid Unicode text: {exc}", url) from None
    return key


def check_value(key: str, value: object, url: str) -> bytes:
    """Return ``value`` as ``bytes`` (bytes-like objects are copied); else StorageError."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise StorageError(f"value for key {key!r} must be bytes, got {type(value).__name__}", url)


@dataclass(frozen=True)
class CheckedBatch:
    """A validated copy of a :class:`Batch`, as plain lists."""

    expect: list[tuple[str, bytes | None]]
    puts: list[tuple[str, bytes]]
    deletes: list[str]
    index_put: list[tuple[str, str, float]]
    index_delete: list[tuple[str, str]]
    #: The one group (:mod:`actorflow.storage._groups`) every key and member belongs to.
    group: str

    @property
    def writes_nothing(self) -> bool:
        return not (self.puts or self.deletes or self.index_put or self.index_delete)


def check_batch(batch: Batch, url: str) -> CheckedBatch:
    """Validate ``batch`` and snapshot it; raise :class:`StorageError` if it is malformed.

    Malformed means: a key or name that is not UTF-8-encodable text, a value that is not
    bytes-like, a NaN score, a key (or index member) that is both written and deleted, or keys
    and members of more than one group (:mod:`actorflow.storage._groups`).
    """
    expect = []
    for key, want in batch.expect.items():
        check_key(key, "key", url)
        expect.append((key, None if want is None else check_value(key, want, url)))
    puts = [(check_key(k, "key", url), check_value(k, v, url)) for k, v in batch.puts.items()]
    deletes = [check_key(k, "key", url) for k in batch.deletes]
    both = batch.puts.keys() & set(batch.deletes)
    if both:
        raise StorageError(f"batch both puts and deletes key(s) {sorted(both)!r}", url)
    index_put: list[tuple[str, str, float]] = []
    for name, members in batch.index_put.items():
        check_key(name, "index name", url)
        for member, score in members.items():
            check_key(member, "index member", url)
            try:
                fscore = float(score)
            except (TypeError, ValueError):
                raise StorageError(f"score of {name}/{member} is not a number: {score!r}", url) from None
            if math.isnan(fscore):
                raise StorageError(f"score of {name}/{member} is NaN", url)
            index_put.append((name, member, fscore))
    index_delete: list[tuple[str, str]] = []
    for name, gone in batch.index_delete.items():
        check_key(name, "index name", url)
        clash = set(gone) & batch.index_put.get(name, {}).keys()
        if clash:
            raise StorageError(f"batch both adds and removes {sorted(clash)!r} in index {name!r}", url)
        index_delete.extend((name, check_key(m, "index member", url)) for m in gone)
    group = batch_group(
        [k for k, _ in expect] + [k for k, _ in puts] + deletes,
        [(i, m) for i, m, _ in index_put] + index_delete,
        url,
    )
    return CheckedBatch(expect, puts, deletes, index_put, index_delete, group)


def key_successor(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``.

    ``None`` when there is none (``prefix`` is empty or all U+10FFFF). Surrogate code points
    are skipped, since they cannot be stored; UTF-8 byte order equals code point order, so
    the result is also the byte-order successor of the prefix range.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:
                nxt = 0xE000
            chars.append(chr(nxt))
            return "".join(chars)
    return None
