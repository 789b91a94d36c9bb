"""SQLite storage: the embedded default backend.

One :class:`SQLiteStorage` owns one ``sqlite3`` connection that lives in one dedicated worker
thread; async methods hand their work to that thread with ``loop.run_in_executor``, so an event
loop never waits on a lock or a long scan, and the object may be used from any event loop or
thread. Small point operations (``get``, ``get_many`` of a few keys, ``commit`` of a small batch)
first try a second connection right on the caller's thread, with no busy wait: a local WAL read
or write takes tens of microseconds, less than the hop to the worker and back. If another
process holds the write lock (its commit takes about as long), the operation lets the event
loop turn and tries again there, a few times; if that connection is in use or the lock stays
held, the operation goes to the worker, whose connection waits for it. (Two replicas writing
one file met the lock on about a quarter of their commits; the retries left under 1% to the
worker.) In ``sync=full`` mode (an fsync per commit) everything goes to the worker.

Several OS processes on one machine may share one database file safely:

* the file is in WAL journal mode (readers never block the writer and vice versa);
* every write runs in a ``BEGIN IMMEDIATE`` transaction, so the expectation check and the
  writes of a :class:`~actorflow.storage.Batch` happen under the single database write lock;
* ``busy_timeout`` is 30 s, and a "database is locked" error that escapes it anyway (SQLite
  reports some WAL contention immediately) is retried with a bounded backoff.

Durability: ``synchronous=NORMAL`` (the default) keeps every committed batch across the crash
of any *process*; a power loss may lose the last few commits. ``?sync=full`` in the URL selects
``synchronous=FULL``, which also survives power loss at the cost of an fsync per commit.

Schema::

    kv(key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID
    idx(name TEXT, member TEXT, score REAL, PRIMARY KEY(name, member)), index on (name, score)

Keys compare by SQLite's BINARY collation, i.e. the bytes of their UTF-8 encoding, which is
the same order as Python's ``str`` comparison (code point order).

The helpers ``check_batch``, ``key_successor`` and ``check_key`` are shared with the Redis
backend; they are not part of the public API.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from actorflow.errors import StorageError, StorageUnavailableError
from actorflow.storage._base import Batch, Storage
from actorflow.storage._checks import check_batch, check_key, key_successor

__all__ = ["SQLiteStorage"]

T = TypeVar("T")

#: How long SQLite itself waits for a lock before reporting "database is locked" (ms).
BUSY_TIMEOUT_MS = 30_000
#: Extra attempts after a lock error that SQLite reported despite the busy timeout.
LOCK_RETRIES = 8
#: Never keep retrying lock errors for longer than this (seconds), whatever the attempt count.
LOCK_RETRY_DEADLINE = 60.0
#: Rows fetched per query while skip-scanning in :meth:`SQLiteStorage.list_keys`.
_SCAN_CHUNK = 256
#: Keys deleted per transaction by :meth:`SQLiteStorage.delete_prefix`.
_DELETE_CHUNK = 1000
#: Largest operation tried on the caller's thread: keys read, or rows written by a commit...
_INLINE_ROWS = 64
#: ...and bytes written by a commit.
_INLINE_BYTES = 256 * 1024
#: Commits made on the caller's thread between two WAL checkpoints (run by the worker).
_CHECKPOINT_EVERY = 500
# Inline operations back to back, with the loop never getting a turn, for at most this long;
# then the next one yields once, so other tasks interleave as they would with the worker hop.
_HOLD_LOOP_SECONDS = 0.005
#: Times a small operation that found the database locked by another process tries again on
#: the caller's thread, letting the loop turn in between, before it goes to the worker.
_LOCKED_RETRIES = 3

_Inline = Literal["ran", "locked", "skipped"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS idx ("
    " name TEXT NOT NULL, member TEXT NOT NULL, score REAL NOT NULL,"
    " PRIMARY KEY (name, member))",
    "CREATE INDEX IF NOT EXISTS idx_by_score ON idx (name, score)",
)

SyncMode = Literal["normal", "full"]


# --------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------


def _checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _ignore_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so a failed checkpoint is not reported as unhandled


def _is_lock_error(exc: sqlite3.Error) -> bool:
    msg = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg)


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    msg = str(exc).lower()
    return any(
        s in msg for s in ("unable to open", "disk i/o", "not a database", "malformed", "locked", "busy")
    )


class SQLiteStorage(Storage):
    """Storage in one SQLite file, safe to share between processes on one machine.

    The constructor only records its arguments; the file is opened (and its directory and
    schema created) in the worker thread on first use. Prefer :meth:`open`, which does that
    eagerly and reports an unusable path as :class:`StorageUnavailableError`.

    ``list_keys`` returns keys in UTF-8 byte order; ``index_range`` orders equal scores by
    member (byte order). ``delete_prefix`` deletes in transactions of up to 1000 keys.

    If a call is cancelled while its work is running in the worker thread, that work still
    completes: a cancelled :meth:`commit` may or may not have applied.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, sync: SyncMode = "normal", url: str | None = None
    ) -> None:
        if sync not in ("normal", "full"):
            raise StorageError(f"sync must be 'normal' or 'full', got {sync!r}", url)
        self.path = Path(path)
        self.sync: SyncMode = sync
        self.url = url if url is not None else f"sqlite://{self.path}"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="actorflow-sqlite")
        self._conn: sqlite3.Connection | None = None  # touched only in the worker thread
        self._closed = False
        self._close_lock = threading.Lock()
        # The connection for small operations on the caller's thread, used by one at a time.
        self._inline: sqlite3.Connection | None = None
        self._inline_lock = threading.Lock()
        self._inline_commits = 0
        self._holding_since: float | None = None  # inline operations since the loop last turned

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, sync: SyncMode = "normal", url: str | None = None
    ) -> SQLiteStorage:
        """Open (creating if needed) the database at ``path`` and make sure its schema exists.

        Raises :class:`StorageUnavailableError` naming the URL if the file or its directory
        cannot be created or opened, or the file is not a SQLite database.
        """
        storage = cls(path, sync=sync, url=url)
        try:
            await storage._run(lambda conn: None)
        except BaseException:
            await storage.close()
            raise
        return storage

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.url!r})"

    # -- worker-thread plumbing -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StorageUnavailableError(f"cannot open SQLite database: {exc}", self.url) from exc
        try:
            self._retry_locked(lambda: self._attempt(conn, self._setup))
        except BaseException as exc:
            conn.close()
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise StorageUnavailableError(f"cannot open SQLite database: {exc}", self.url) from exc
            raise
        return conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.sync.upper()}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA:
                conn.execute(stmt)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def _attempt(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)``; if it raises, roll back whatever transaction it left open."""
        try:
            return fn(conn)
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def _retry_locked(self, fn: Callable[[], T]) -> T:
        """Run ``fn``; retry it on "database is locked" with a bounded, jittered backoff.

        ``fn`` must leave no transaction open when it raises (see :meth:`_attempt`).
        """
        deadline = time.monotonic() + LOCK_RETRY_DEADLINE
        attempt = 0
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_lock_error(exc) or attempt >= LOCK_RETRIES or time.monotonic() > deadline:
                    raise
            delay = min(0.01 * 2**attempt, 1.0)
            time.sleep(delay * (0.5 + random.random()))
            attempt += 1

    def _in_worker(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StorageError("storage is closed", self.url)
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        try:
            return self._retry_locked(lambda: self._attempt(conn, fn))
        except StorageError:
            raise
        except (sqlite3.Error, OSError) as exc:
            cls = StorageUnavailableError if _is_unavailable(exc) else StorageError
            raise cls(f"SQLite error: {exc}", self.url) from exc

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StorageError("storage is closed", self.url)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._in_worker, fn)
        except RuntimeError as exc:
            # Its thread is gone: closed between the check and the submit, or the interpreter
            # is exiting (concurrent.futures stops every executor then). Closed either way.
            self._closed = True
            raise StorageError("storage is closed", self.url) from exc

    def _try_inline(self, fn: Callable[[sqlite3.Connection], T]) -> tuple[_Inline, T | None]:
        """Run ``fn`` on this thread if the inline connection is free and nothing holds a lock
        it needs: ``("ran", result)``; ``("locked", None)`` when a lock it needs is held (it
        rolled back), ``("skipped", None)`` when it was not tried."""
        if self.sync != "normal" or self._conn is None or self._closed:
            return "skipped", None  # full sync, or the worker has not set the file up yet
        if not self._inline_lock.acquire(blocking=False):
            return "skipped", None
        try:
            if self._closed:
                return "skipped", None
            if self._inline is None:
                conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA busy_timeout = 0")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA wal_autocheckpoint = 0")  # the worker checkpoints
                self._inline = conn
            return "ran", self._attempt(self._inline, fn)
        except sqlite3.OperationalError as exc:
            if _is_lock_error(exc):
                return "locked", None
            raise StorageError(f"SQLite error: {exc}", self.url) from exc
        except (sqlite3.Error, OSError) as exc:
            cls = StorageUnavailableError if _is_unavailable(exc) else StorageError
            raise cls(f"SQLite error: {exc}", self.url) from exc
        finally:
            self._inline_lock.release()

    async def _run_small(self, fn: Callable[[sqlite3.Connection], T], *, writes: bool = False) -> T:
        """Run a small operation inline when possible, else in the worker."""
        outcome, result = self._try_inline(fn)
        for _ in range(_LOCKED_RETRIES if outcome == "locked" else 0):
            # Another process holds the write lock, for a commit of tens of microseconds: let
            # the loop run its other work once and try here again, rather than hop to the
            # worker (a thread switch each way, and SQLite's busy wait sleeps 1 ms at least).
            await asyncio.sleep(0)
            outcome, result = self._try_inline(fn)
            if outcome != "locked":
                break
        if outcome != "ran":
            return await self._run(fn)
        if self._holding_loop():
            await asyncio.sleep(0)
        if writes:
            self._inline_commits += 1
            if self._inline_commits % _CHECKPOINT_EVERY == 0:
                # Fold the WAL back into the database now and then, off the caller's thread.
                checkpoint = asyncio.ensure_future(self._run(_checkpoint))
                checkpoint.add_done_callback(_ignore_result)
        return result  # type: ignore[return-value]

    def _holding_loop(self) -> bool:
        """Whether inline operations have kept the loop from turning for too long.

        The first inline operation after the loop turned notes the time and asks the loop to
        clear it on its next turn; a caller that finds it older than ``_HOLD_LOOP_SECONDS``
        yields once. So one short call (a cached actor's turn) never suspends, and a long run
        of small operations still lets other tasks run every few milliseconds.
        """
        now = time.monotonic()
        since = self._holding_since
        if since is None:
            self._holding_since = now
            asyncio.get_running_loop().call_soon(self._loop_turned)
            return False
        return now - since > _HOLD_LOOP_SECONDS

    def _loop_turned(self) -> None:
        self._holding_since = None

    @staticmethod
    def _read_txn(conn: sqlite3.Connection, fn: Callable[[], T]) -> T:
        """Run several reads in one (deferred) transaction, so they see one snapshot."""
        conn.execute("BEGIN")
        try:
            result = fn()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    # -- Storage API ------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or ``None``."""
        check_key(key, "key", self.url)

        def do(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run_small(do)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of ``keys`` in order (``None`` for absent ones), from one read transaction."""
        keys = list(keys)
        for k in keys:
            check_key(k, "key", self.url)
        if not keys:
            return []

        def do(conn: sqlite3.Connection) -> list[bytes | None]:
            def read() -> list[bytes | None]:
                found: dict[str, bytes] = {}
                unique = list(dict.fromkeys(keys))
                for i in range(0, len(unique), 500):
                    chunk = unique[i : i + 500]
                    marks = ",".join("?" * len(chunk))
                    for k, v in conn.execute(f"SELECT key, value FROM kv WHERE key IN ({marks})", chunk):
                        found[k] = bytes(v)
                return [found.get(k) for k in keys]

            return self._read_txn(conn, read)

        if len(keys) <= _INLINE_ROWS:
            return await self._run_small(do)
        return await self._run(do)

    async def commit(self, batch: Batch) -> bool:
        """Apply ``batch`` in one ``BEGIN IMMEDIATE`` transaction if every expectation holds.

        Returns ``False`` (having changed nothing) when an expectation fails. An empty batch
        returns ``True`` without touching the file.
        """
        cb = check_batch(batch, self.url)
        if not cb.expect and cb.writes_nothing:
            return True

        def do(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for key, want in cb.expect:
                    row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
                    have = None if row is None else bytes(row[0])
                    if have != want:
                        conn.execute("ROLLBACK")
                        return False
                if cb.puts:
                    conn.executemany(
                        "INSERT INTO kv (key, value) VALUES (?, ?)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        cb.puts,
                    )
                if cb.deletes:
                    conn.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in cb.deletes])
                if cb.index_put:
                    conn.executemany(
                        "INSERT INTO idx (name, member, score) VALUES (?, ?, ?)"
                        " ON CONFLICT (name, member) DO UPDATE SET score = excluded.score",
                        cb.index_put,
                    )
                if cb.index_delete:
                    conn.executemany("DELETE FROM idx WHERE name = ? AND member = ?", cb.index_delete)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return True

        rows = len(cb.expect) + len(cb.puts) + len(cb.deletes) + len(cb.index_put) + len(cb.index_delete)
        if rows <= _INLINE_ROWS and sum(len(v) for _, v in cb.puts) <= _INLINE_BYTES:
            return await self._run_small(do, writes=True)
        return await self._run(do)

    async def list_keys(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Keys ``prefix + name`` where ``name`` has no ``/``, in byte order.

        Only keys greater than ``start_after`` are returned (if given), at most ``limit`` of
        them (``limit <= 0`` returns ``[]``). Deeper keys are skipped a subtree at a time, so
        the cost grows with the number of children, not of descendants. One read snapshot.
        """
        check_key(prefix, "prefix", self.url)
        if start_after is not None:
            check_key(start_after, "start_after", self.url)
        if limit is not None and limit <= 0:
            return []
        upper = key_successor(prefix)

        def scan(conn: sqlite3.Connection) -> list[str]:
            out: list[str] = []
            if start_after is not None and start_after >= prefix:
                low, inclusive = start_after, False
            else:
                low, inclusive = prefix, True
            while True:
                sql = "SELECT key FROM kv WHERE key " + (">=" if inclusive else ">") + " ?"
                args: list[object] = [low]
                if upper is not None:
                    sql += " AND key < ?"
                    args.append(upper)
                sql += " ORDER BY key LIMIT ?"
                args.append(_SCAN_CHUNK)
                rows = conn.execute(sql, args).fetchall()
                jumped = False
                for (key,) in rows:
                    slash = key.find("/", len(prefix))
                    if slash < 0:
                        out.append(key)
                        if limit is not None and len(out) >= limit:
                            return out
                        low, inclusive = key, False
                        continue
                    # ``key`` lies in the subdirectory prefix+child+'/': jump past all of it.
                    nxt = key_successor(key[: slash + 1])
                    assert nxt is not None  # a string ending in '/' always has one
                    low, inclusive, jumped = nxt, True, True
                    break
                if not jumped and len(rows) < _SCAN_CHUNK:
                    return out

        return await self._run(lambda conn: self._read_txn(conn, lambda: scan(conn)))

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key that starts with ``prefix`` (a raw string prefix, at any depth).

        ``delete_prefix("a/b")`` also deletes ``"a/bc"``; pass ``"a/b/"`` for a directory.
        Returns the number of keys deleted. Indexes are not touched.
        """
        check_key(prefix, "prefix", self.url)
        upper = key_successor(prefix)
        where = "key >= ?" + (" AND key < ?" if upper is not None else "")
        args = (prefix,) if upper is None else (prefix, upper)
        sql = f"DELETE FROM kv WHERE key IN (SELECT key FROM kv WHERE {where} LIMIT {_DELETE_CHUNK})"

        def chunk(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                n = conn.execute(sql, args).rowcount
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return n

        total = 0
        while True:
            n = await self._run(chunk)
            total += n
            if n < _DELETE_CHUNK:
                return total

    async def index_range(
        self, index: str, *, max_score: float | None = None, limit: int | None = None
    ) -> list[tuple[str, float]]:
        """Members with score <= ``max_score``, lowest score first, ties by member."""
        check_key(index, "index name", self.url)
        if limit is not None and limit <= 0:
            return []
        sql = "SELECT member, score FROM idx WHERE name = ?"
        args: list[object] = [index]
        if max_score is not None:
            if math.isnan(max_score):
                return []
            sql += " AND score <= ?"
            args.append(float(max_score))
        sql += " ORDER BY score, member LIMIT ?"
        args.append(-1 if limit is None else limit)

        def do(conn: sqlite3.Connection) -> list[tuple[str, float]]:
            return [(m, float(s)) for m, s in conn.execute(sql, args)]

        if limit is not None and limit <= _INLINE_ROWS:  # (a timer scheduler's pass)
            return await self._run_small(do)
        return await self._run(do)

    async def index_score(self, index: str, member: str) -> float | None:
        """The score of ``member`` in ``index``, or ``None``."""
        check_key(index, "index name", self.url)
        check_key(member, "index member", self.url)

        def do(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT score FROM idx WHERE name = ? AND member = ?", (index, member)
            ).fetchone()
            return None if row is None else float(row[0])

        return await self._run(do)

    async def index_count(self, index: str) -> int:
        """How many members ``index`` has."""
        check_key(index, "index name", self.url)

        def do(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM idx WHERE name = ?", (index,)).fetchone()[0])

        return await self._run(do)  # a count can take milliseconds: never on the caller's thread

    async def close(self) -> None:
        """Close the connection and stop the worker thread. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True

        def shut() -> None:
            with self._inline_lock:
                if self._inline is not None:
                    inline, self._inline = self._inline, None
                    inline.close()
            if self._conn is not None:
                conn, self._conn = self._conn, None
                conn.close()

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite error while closing: {exc}", self.url) from exc
        finally:
            self._executor.shutdown(wait=False)
