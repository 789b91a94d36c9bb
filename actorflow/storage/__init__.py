"""Durable storage for actorflow: the :class:`Storage` protocol and its backends.

Pick a backend with a storage URL and :func:`open_storage`. Accepted forms:

``sqlite://PATH``
    A SQLite database file. Everything after ``sqlite://`` (up to an optional ``?``) is the
    file path, taken literally (no percent-decoding): ``sqlite:///tmp/x.db`` is ``/tmp/x.db``;
    ``sqlite://x.db``, ``sqlite://./x.db`` and (special case, since nobody writes ``/./`` to
    mean ``/``) ``sqlite:///./x.db`` and ``sqlite:///../x.db`` are relative to the current
    directory of the process that parses the URL (they are made absolute right away; ship
    the absolute form to other processes); ``sqlite://~/x.db`` is under the home directory.
    The SQLAlchemy spelling ``sqlite:////tmp/x.db`` is accepted too (extra leading slashes
    collapse to one). Query: ``?sync=full`` (fsync every commit; survives power loss) or
    ``?sync=normal`` (the default; survives process crashes).

``file:///DIR`` or a bare filesystem path ``DIR`` (no scheme, ``~`` expanded)
    A *directory*; the database is the SQLite file ``DIR/actorflow.db`` (the directory is
    created on open). ``file:`` URLs are percent-decoded, must be absolute (``file:///DIR``
    or ``file://localhost/DIR``) and take ``?sync=`` like ``sqlite:``; a bare path is taken
    literally (no query). A directory location naming an existing non-directory is rejected
    (use ``sqlite://`` for a database file).

``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?OPTIONS]`` and ``rediss://...`` (TLS)
    A Redis server (default ``localhost:6379``, database 0). Options: ``prefix=`` (the key
    prefix, default ``af:``; several actorflow deployments can share one database with
    different prefixes); ``wait_replicas=N`` (default 0) with ``wait_timeout=SECONDS``
    (default 1): every commit and every read waits until N replicas hold what it wrote or
    read (Redis ``WAIT``), and fails with ``StorageUnavailableError`` if they do not within
    the timeout (see :mod:`actorflow.storage.redis`); and the redis-py connection options
    ``socket_timeout``,
    ``socket_connect_timeout``, ``health_check_interval``, ``max_connections``,
    ``client_name``, ``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
    ``ssl_check_hostname``.

``redis+cluster://[[USER]:PASSWORD@]HOST[:PORT][?OPTIONS]`` and ``rediss+cluster://...``
    A Redis Cluster (or a cluster-mode managed Redis), reached through any of its nodes: the
    client discovers the others and follows slot moves. Database 0 only (a cluster has no
    other); the same options as ``redis://``. Every commit is one script on one hash slot
    (see :mod:`actorflow.storage.redis` for the layout).

``memory://NAME`` or ``memory:``
    **Not durable; for tests only.** An in-memory store in the current process
    (:class:`MemoryStorage`), gone when the process exits and invisible to other processes.
    Every storage opened with the same ``NAME`` (taken literally, case-sensitive, no
    ``?`` options) in one process shares one store, and its data outlives closing them;
    ``memory://`` or ``memory:`` with no name opens a fresh private store each time.

A string is a URL when it starts with ``SCHEME://`` or with one of the scheme names above and a
colon (``sqlite:x.db`` is an error, not a directory); anything else is a bare path. Other
schemes raise :class:`~actorflow.errors.ConfigError` (``memory:x`` too: write ``memory://x``).

Error messages name the storage by its URL with any password replaced by ``***``
(:func:`redact_url`). The Redis backend (and redis-py) is imported only when a Redis URL is
opened.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from actorflow.errors import ConfigError
from actorflow.storage._base import Batch, Storage
from actorflow.storage.memory import MemoryStorage
from actorflow.storage.sqlite import SQLiteStorage

if TYPE_CHECKING:
    from actorflow.storage.redis import RedisStorage

__all__ = [
    "Batch",
    "MemoryStorage",
    "RedisStorage",
    "SQLiteStorage",
    "Storage",
    "default_storage_url",
    "open_storage",
    "parse_storage_url",
    "redact_url",
]

StorageKind = Literal["sqlite", "redis", "memory"]

#: The SQLite file a directory-style storage location (bare path, ``file:``) refers to.
DB_FILE_NAME = "actorflow.db"
#: Key prefix of the Redis backend unless the URL says ``?prefix=``.
DEFAULT_REDIS_PREFIX = "af:"
#: Seconds the Redis backend waits for any reply unless the URL sets ``socket_timeout``: a
#: server that stops answering (frozen, partitioned away) then fails a command with
#: StorageUnavailableError instead of hanging it for good. No command actorflow sends blocks
#: on the server's side beyond ``wait_timeout``.
REDIS_REPLY_TIMEOUT = 10.0
#: Seconds a ``wait_replicas`` Redis waits for its replicas unless the URL sets ``wait_timeout``.
DEFAULT_WAIT_TIMEOUT = 1.0

_ACCEPTED = (
    "accepted forms: sqlite://PATH/TO/FILE.db[?sync=full|normal], "
    "file:///DIRECTORY, a bare directory path, "
    "redis://[:PASSWORD@]HOST[:PORT][/DB][?prefix=...&wait_replicas=N&wait_timeout=S], rediss://..., "
    "redis+cluster://HOST[:PORT][?...], rediss+cluster://..., "
    "memory://NAME (in-process, not durable; for tests)"
)
_REDIS_SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")
_KNOWN_SCHEMES = ("sqlite", "file", *_REDIS_SCHEMES, "memory")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_REDIS_PASSTHROUGH = frozenset(
    {
        "socket_timeout",
        "socket_connect_timeout",
        "health_check_interval",
        "max_connections",
        "client_name",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_check_hostname",
    }
)
_SECRET_QUERY_RE = re.compile(r"([?&][^=&#]*(?:pass|secret|token|auth)[^=&#]*=)[^&#]*", re.IGNORECASE)


def redact_url(url: str | os.PathLike[str]) -> str:
    """``url`` with any password (and any ``password=``-like query value) replaced by ``***``.

    Never raises. Filesystem paths and ``sqlite:``/``file:``/``memory:`` URLs (which hold no
    secrets) are returned unchanged. For other URLs the userinfo is everything before the
    *last* ``@``, so a password containing an unescaped ``@`` or ``/`` is still hidden (at
    worst more than the password is masked).
    """
    text = os.fspath(url) if isinstance(url, os.PathLike) else str(url)
    m = _SCHEME_RE.match(text)
    if m is None or "://" not in text or m.group(1).lower() in ("sqlite", "file", "memory"):
        return text
    head, rest = text.split("://", 1)
    at = rest.rfind("@")
    if at >= 0:
        userinfo, tail = rest[:at], rest[at + 1 :]
        colon = userinfo.find(":")
        if colon >= 0:
            userinfo = userinfo[:colon] + ":***"
        rest = userinfo + "@" + tail
    rest = _SECRET_QUERY_RE.sub(r"\1***", rest)
    return f"{head}://{rest}"


def _config_error(url: str, problem: str) -> ConfigError:
    return ConfigError(f"invalid storage URL {redact_url(url)!r}: {problem}; {_ACCEPTED}")


def _sqlite_query(url: str, query: str) -> str:
    sync = "normal"
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name != "sync":
            raise _config_error(url, f"unknown option {name!r} (SQLite takes only sync=)")
        if value.lower() not in ("normal", "full"):
            raise _config_error(url, f"sync must be 'normal' or 'full', not {value!r}")
        sync = value.lower()
    return sync


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _parse_directory(url: str, directory: str, sync: str) -> tuple[StorageKind, dict[str, str]]:
    if not directory:
        raise _config_error(url, "empty path")
    directory = _absolute(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise _config_error(
            url,
            "a bare path or file: URL names a directory, but this is an existing file "
            "(use sqlite://PATH for a database file)",
        )
    return "sqlite", {"path": os.path.join(directory, DB_FILE_NAME), "sync": sync}


def _parse_redis(url: str) -> tuple[StorageKind, dict[str, str]]:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as exc:
        raise _config_error(url, str(exc)) from None
    if parts.fragment:
        raise _config_error(url, "a Redis URL takes no #fragment")
    scheme = parts.scheme.lower()
    cluster = scheme.endswith("+cluster")
    db_text = unquote(parts.path).strip("/")
    if db_text and not db_text.isdigit():
        raise _config_error(url, f"the database must be a number, not {db_text!r}")
    if cluster and db_text not in ("", "0"):
        raise _config_error(url, f"a Redis Cluster has only database 0, not {db_text!r}")
    own = {"prefix": DEFAULT_REDIS_PREFIX, "wait_replicas": "0", "wait_timeout": ""}
    passthrough: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in seen:
            raise _config_error(url, f"option {name!r} given twice")
        seen.add(name)
        if name in own:
            own[name] = value
        elif name in _REDIS_PASSTHROUGH:
            passthrough.append((name, value))
        else:
            allowed = ", ".join(sorted(_REDIS_PASSTHROUGH | set(own)))
            raise _config_error(url, f"unknown Redis option {name!r} (allowed: {allowed})")
    if not own["prefix"]:
        raise _config_error(url, "prefix must not be empty")
    given = "wait_timeout" in seen
    _check_wait(url, own["wait_replicas"], own["wait_timeout"] if given else None, dict(passthrough))
    own["wait_timeout"] = own["wait_timeout"] if given else f"{DEFAULT_WAIT_TIMEOUT:g}"
    client_url = urlunsplit(
        (
            scheme.removesuffix("+cluster"),
            parts.netloc,
            "" if cluster else f"/{db_text or 0}",
            urlencode(passthrough),
            "",
        )
    )
    return "redis", {"url": client_url, "db": db_text or "0", "cluster": "1" if cluster else "", **own}


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _check_wait(url: str, replicas: str, timeout: str | None, passthrough: dict[str, str]) -> None:
    """Validate ``wait_replicas`` (a whole number from 0 to 100) and, when it waits or is given,
    ``wait_timeout`` (seconds, above 0 and at least 1 s below the reply timeout, so that a
    waiting command is never cut off by the socket first)."""
    if not re.fullmatch(r"[0-9]{1,3}", replicas) or int(replicas) > 100:
        raise _config_error(url, f"wait_replicas must be a whole number from 0 to 100, not {replicas!r}")
    if timeout is None and int(replicas) == 0:
        return
    reply_text = passthrough.get("socket_timeout") or str(REDIS_REPLY_TIMEOUT)
    reply_timeout, seconds = _seconds(reply_text), _seconds(timeout or str(DEFAULT_WAIT_TIMEOUT))
    if math.isnan(reply_timeout) or reply_timeout <= 0:
        raise _config_error(url, f"socket_timeout must be seconds above 0, not {reply_text!r}")
    if not (0 < seconds and seconds + 1 <= reply_timeout):
        raise _config_error(
            url,
            f"wait_timeout must be seconds above 0 and at least 1 s below socket_timeout "
            f"({reply_timeout:g}), not {timeout or f'{DEFAULT_WAIT_TIMEOUT:g} (the default)'!r}",
        )


def _parse_memory(url: str, after: str) -> tuple[StorageKind, dict[str, str]]:
    if after and not after.startswith("//"):
        raise _config_error(url, "expected memory://NAME, or memory: for a private store")
    name = after[2:]
    if "?" in name or "#" in name:
        # Reserved, so that options can be added later without changing what a name means.
        raise _config_error(url, "a memory URL takes no ?options or #fragment")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise _config_error(url, "the name is not valid Unicode text") from None
    return "memory", {"name": name}


def parse_storage_url(url: str | os.PathLike[str]) -> tuple[StorageKind, dict[str, str]]:
    """Validate a storage URL without connecting or touching files; say what it opens.

    Returns ``("sqlite", {"path": <absolute file path>, "sync": "normal"|"full"})`` or
    ``("redis", {"url": <URL for redis-py>, "prefix": <key prefix>, "db": <number>,
    "wait_replicas": <number>, "wait_timeout": <seconds>, "cluster": "1" for a cluster URL
    else ""})`` or
    ``("memory", {"name": <store name, "" for a private store>})``.
    The Redis ``url`` still contains the password; never log it (use :func:`redact_url`).
    Raises :class:`ConfigError`, naming the (redacted) URL and the accepted forms, for an
    unknown scheme or a malformed URL. The only file-system access is the check that a
    directory-style location is not an existing regular file.
    """
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str):
        raise ConfigError(f"storage URL must be a str or path, got {type(url).__name__}")
    if not url:
        raise _config_error(url, "empty storage URL")
    m = _SCHEME_RE.match(url)
    after = url[m.end() :] if m else ""
    if m is None or not (after.startswith("//") or m.group(1).lower() in _KNOWN_SCHEMES):
        return _parse_directory(url, url, "normal")  # a bare path
    scheme = m.group(1).lower()
    if scheme == "memory":
        return _parse_memory(url, after)
    if not after.startswith("//"):
        raise _config_error(url, f"expected {scheme}://...")
    rest = after[2:]
    if scheme == "sqlite":
        path, _, query = rest.partition("?")
        sync = _sqlite_query(url, query)
        if not path:
            raise _config_error(url, "no database path after sqlite://")
        if path == ":memory:":
            raise _config_error(url, "in-memory SQLite is not durable and is not supported")
        if path.startswith(("/./", "/../")):
            path = path[1:]  # sqlite:///./x.db is the common spelling of a relative file
        elif path.startswith("/"):
            path = "/" + path.lstrip("/")
        return "sqlite", {"path": _absolute(path), "sync": sync}
    if scheme == "file":
        location, _, query = rest.partition("?")
        sync = _sqlite_query(url, query)
        if location.startswith("localhost/"):
            location = location[len("localhost") :]
        if not location.startswith("/"):
            raise _config_error(url, "a file: URL must be absolute, like file:///var/lib/actorflow")
        return _parse_directory(url, unquote(location), sync)
    if scheme in _REDIS_SCHEMES:
        return _parse_redis(url)
    raise _config_error(url, f"unsupported scheme {scheme!r}")


def default_storage_url() -> str:
    """The storage used when none is given.

    ``$ACTORFLOW_STORAGE`` if set and non-empty; else the SQLite file ``actorflow.db`` in the
    per-user data directory: ``$XDG_DATA_HOME/actorflow`` (when that is an absolute path) or
    ``~/.local/share/actorflow``. Nothing is created until the storage is opened.
    """
    env = os.environ.get("ACTORFLOW_STORAGE")
    if env:
        return env
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return f"sqlite://{base / 'actorflow' / DB_FILE_NAME}"


async def open_storage(url: str | os.PathLike[str]) -> Storage:
    """Open the storage a URL names (see the module docstring for the forms).

    The result is ready to use: a SQLite file exists with its schema, a Redis server has
    answered PING. Raises :class:`ConfigError` for a bad URL and
    :class:`~actorflow.errors.StorageUnavailableError`, naming the redacted URL, when the
    backend cannot be reached or created. Close the result with ``await storage.close()``.
    """
    kind, details = parse_storage_url(url)
    text = os.fspath(url) if isinstance(url, os.PathLike) else url
    if kind == "sqlite":
        sync: Literal["normal", "full"] = "full" if details["sync"] == "full" else "normal"
        return await SQLiteStorage.open(details["path"], sync=sync, url=redact_url(text))
    if kind == "memory":
        return MemoryStorage(details["name"], url=text)
    from actorflow.storage.redis import RedisStorage

    return await RedisStorage.open(text)


def __getattr__(name: str) -> object:
    # Import the Redis backend (and redis-py) only when someone asks for it.
    if name == "RedisStorage":
        from actorflow.storage.redis import RedisStorage

        return RedisStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
