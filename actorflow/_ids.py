"""Validation of the ids users choose: workflow ids, actor ids, step names.

Ids become parts of storage keys and URL paths, so they are restricted to a safe alphabet:
``[A-Za-z0-9._:@-]``, 1 to 256 characters. Actor ids additionally cannot be ``.`` or ``..``.
"""

from __future__ import annotations

import re
import time
import uuid

from actorflow.errors import InvalidIdError

MAX_ID_LENGTH = 256
_ID_RE = re.compile(r"[A-Za-z0-9._:@-]+")


def check_id(kind: str, value: object) -> str:
    """Return ``value`` if it is a valid id, else raise :class:`InvalidIdError` naming it."""
    if not isinstance(value, str):
        raise InvalidIdError(kind, value, f"must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidIdError(kind, value, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidIdError(kind, value[:40] + "...", f"longer than {MAX_ID_LENGTH} characters")
    if not _ID_RE.fullmatch(value):
        bad = sorted({c for c in value if not _ID_RE.fullmatch(c)})
        raise InvalidIdError(kind, value, f"characters {''.join(bad)!r} are outside [A-Za-z0-9._:@-]")
    return value


def check_workflow_id(value: object) -> str:
    return check_id("workflow id", value)


def check_actor_id(value: object) -> str:
    check_id("actor id", value)
    if value in (".", ".."):
        raise InvalidIdError("actor id", value, "'.' and '..' are reserved")
    return value  # type: ignore[return-value]


def new_workflow_id() -> str:
    """A fresh, unique, time-ordered workflow id."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}.{uuid.uuid4().hex[:16]}"


_NAME_CLEAN = re.compile(r"[^A-Za-z0-9._@-]")


def step_name_for(func_name: str) -> str:
    """A step name derived from a function name (``<locals>`` and other symbols dropped)."""
    name = _NAME_CLEAN.sub("_", func_name.replace(".<locals>.", ".")).strip("_") or "step"
    return name[:200]
