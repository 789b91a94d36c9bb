"""The storage contract, checked against every backend alike.

The ``storage`` fixture yields a freshly opened backend: a new SQLite file under ``tmp_path``,
a fresh key prefix (``t<uuid>:``) on the session's real ``redis-server``, or a fresh named
in-memory store (``memory://t<uuid>``). Tests that need to reopen the same storage, or to
reach it from other OS processes, use ``backend.url`` (the memory backend, confined to one
process by design, skips the latter).
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from _redis import RedisCluster, RedisServer, free_port, start_redis

from actorflow.errors import ConfigError, StorageError, StorageUnavailableError
from actorflow.storage import (
    Batch,
    SQLiteStorage,
    Storage,
    default_storage_url,
    open_storage,
    parse_storage_url,
    redact_url,
)
from actorflow.storage.redis import RedisStorage, bucket_of

REPO = Path(__file__).resolve().parent.parent
ALL_BYTES = bytes(range(256))


@dataclass
class Backend:
    kind: str
    url: str
    #: Whether other OS processes can open the same storage by its URL.
    shared_across_processes: bool = True

    async def open(self) -> Storage:
        return await open_storage(self.url)


@pytest.fixture(params=["sqlite", "redis", "redis-replicated", "redis-cluster", "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", f"sqlite://{tmp_path}/nested/dir/store.db")
    if request.param == "memory":
        return Backend("memory", f"memory://t{uuid.uuid4().hex}", shared_across_processes=False)
    if request.param == "redis-replicated":  # every operation waits for the replica
        url: str = request.getfixturevalue("redis_replicated")
        return Backend("redis", f"{url}&prefix=t{uuid.uuid4().hex}:")
    if request.param == "redis-cluster":  # 3 primaries
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return Backend("redis", f"{cluster.url}?prefix=t{uuid.uuid4().hex}:")
    server: RedisServer = request.getfixturevalue("redis_server")
    return Backend("redis", f"{server.url}?prefix=t{uuid.uuid4().hex}:")


@pytest.fixture
async def storage(backend: Backend) -> AsyncIterator[Storage]:
    s = await backend.open()
    try:
        yield s
    finally:
        await s.close()


async def put_all(storage: Storage, keys: list[str]) -> None:
    """Put each key with itself as value, 500 per batch (a Redis command carries at most 3,999
    arguments, so a Redis commit at most about 990 puts)."""
    for start in range(0, len(keys), 500):
        batch = Batch()
        for k in keys[start : start + 500]:
            batch.put(k, k.encode())
        assert await storage.commit(batch)


# --------------------------------------------------------------------------------------------
# Plain keys
# --------------------------------------------------------------------------------------------


async def test_roundtrip_binary_values(storage: Storage) -> None:
    assert await storage.get("bin/all") is None
    await storage.put("bin/all", ALL_BYTES)
    assert await storage.get("bin/all") == ALL_BYTES
    await storage.put("bin/empty", b"")
    assert await storage.get("bin/empty") == b""  # empty, not absent
    await storage.put("bin/all", ALL_BYTES[::-1])  # overwrite
    assert await storage.get("bin/all") == ALL_BYTES[::-1]
    await storage.put("uni/é中😀 x", b"\x00\xff")
    assert await storage.get("uni/é中😀 x") == b"\x00\xff"
    await storage.delete("bin/all")
    assert await storage.get("bin/all") is None
    await storage.delete("bin/never-existed")  # deleting an absent key is fine
    assert await storage.get("bin/empty") == b""


async def test_get_many_keeps_order_and_reports_absent(storage: Storage) -> None:
    await storage.put("m/a", b"A")
    await storage.put("m/c", ALL_BYTES)
    got = await storage.get_many(["m/c", "m/b", "m/a", "m/c"])
    assert got == [ALL_BYTES, None, b"A", ALL_BYTES]
    assert await storage.get_many([]) == []
    assert await storage.get_many(("m/zzz",)) == [None]


# --------------------------------------------------------------------------------------------
# commit
# --------------------------------------------------------------------------------------------


async def test_commit_with_holding_expectations_applies_everything(storage: Storage) -> None:
    await storage.commit(Batch().put("c/x", b"1").put("c/z", b"z").index_add("ix", "old", 5))
    batch = (
        Batch()
        .require("c/x", b"1")
        .require("c/absent", None)
        .put("c/x", b"2")
        .put("c/y", b"y")
        .delete("c/z")
        .index_add("ix", "new", 1.5)
        .index_remove("ix", "old")
    )
    assert await storage.commit(batch) is True
    assert await storage.get_many(["c/x", "c/y", "c/z"]) == [b"2", b"y", None]
    assert await storage.list_keys("c/") == ["c/x", "c/y"]
    assert await storage.index_range("ix") == [("new", 1.5)]
    assert await storage.index_score("ix", "old") is None


@pytest.mark.parametrize(
    "failing",
    [
        ("f/keep", b"old\x00"),  # present, but not byte-for-byte equal
        ("f/keep", None),  # present, but required absent
        ("f/missing", b""),  # absent, but required present (even empty)
    ],
    ids=["bytes-differ", "present-not-absent", "absent-not-present"],
)
async def test_failed_commit_changes_nothing(storage: Storage, failing: tuple[str, bytes | None]) -> None:
    setup = Batch().put("f/keep", b"old").put("f/gone", b"here").index_add("ix", "m1", 1)
    assert await storage.commit(setup)
    batch = (
        Batch()
        .require("f/gone", b"here")  # this one holds
        .require(*failing)
        .put("f/keep", b"new")
        .put("f/new", b"x")
        .put("g/elsewhere", b"x")
        .delete("f/gone")
        .index_add("ix", "m2", 2)
        .index_add("iy", "m3", 3)
        .index_remove("ix", "m1")
    )
    assert await storage.commit(batch) is False
    assert await storage.get_many(["f/keep", "f/gone", "f/new", "g/elsewhere"]) == [
        b"old",
        b"here",
        None,
        None,
    ]
    assert await storage.list_keys("f/") == ["f/gone", "f/keep"]
    assert await storage.list_keys("g/") == []
    assert await storage.index_range("ix") == [("m1", 1.0)]
    assert await storage.index_range("iy") == []
    assert await storage.index_score("ix", "m2") is None


async def test_expect_none_means_absent(storage: Storage) -> None:
    first = Batch().require("once", None).put("once", b"first")
    assert await storage.commit(first) is True
    second = Batch().require("once", None).put("once", b"second")
    assert await storage.commit(second) is False
    assert await storage.get("once") == b"first"
    await storage.delete("once")
    assert await storage.commit(second) is True
    assert await storage.get("once") == b"second"


async def test_expect_only_batch_reports_whether_it_holds(storage: Storage) -> None:
    await storage.put("e", b"v")
    assert await storage.commit(Batch().require("e", b"v")) is True
    assert await storage.commit(Batch().require("e", b"w")) is False
    assert await storage.commit(Batch()) is True


async def test_malformed_batches_raise_storage_error(storage: Storage) -> None:
    both = Batch()
    both.puts["k"] = b"v"
    both.deletes.add("k")
    with pytest.raises(StorageError):
        await storage.commit(both)
    bad_value = Batch()
    bad_value.puts["k"] = "text"  # type: ignore[assignment]
    with pytest.raises(StorageError):
        await storage.commit(bad_value)
    with pytest.raises(StorageError):
        await storage.commit(Batch().index_add("ix", "m", math.nan))
    assert await storage.get("k") is None
    assert await storage.index_range("ix") == []


async def cas_increment(storage: Storage, key: str, read: Callable[[], Awaitable[None]] | None = None) -> int:
    """Increment a decimal counter with compare-and-set; return how many attempts it took.
    ``read``: awaited after the first read, before its commit."""
    attempts = 0
    while True:
        attempts += 1
        current = await storage.get(key)
        if read is not None:
            await read()
            read = None
        value = int(current) if current is not None else 0
        if await storage.commit(Batch().require(key, current).put(key, b"%d" % (value + 1))):
            return attempts


async def test_concurrent_cas_increments_from_tasks(storage: Storage) -> None:
    tasks, per_task = 20, 10
    # Every task's first increment commits only once all have read the counter: one of those
    # commits wins and the others must conflict and retry (how the rest interleave is up to
    # the storage's own scheduling).
    have_read = asyncio.Barrier(tasks)

    async def all_read() -> None:
        await asyncio.wait_for(have_read.wait(), 30)

    async def worker() -> int:
        attempts = await cas_increment(storage, "counter", all_read)
        for _ in range(per_task - 1):
            attempts += await cas_increment(storage, "counter")
        return attempts

    attempts = await asyncio.gather(*(worker() for _ in range(tasks)))
    assert await storage.get("counter") == b"%d" % (tasks * per_task)
    assert sum(attempts) >= tasks * per_task + tasks - 1, "the first round's losers must have retried"


WORKER = textwrap.dedent(
    """
    import asyncio, os, sys
    from actorflow.storage import Batch, open_storage

    async def main(url, key, n, ready, go):
        storage = await open_storage(url)
        try:
            open(ready, "w").close()
            while not os.path.exists(go):
                await asyncio.sleep(0.002)
            done = 0
            while done < n:
                current = await storage.get(key)
                value = int(current) if current is not None else 0
                batch = Batch().require(key, current).put(key, b"%d" % (value + 1))
                if await storage.commit(batch):
                    done += 1
        finally:
            await storage.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
    """
)


@pytest.mark.slow
async def test_concurrent_cas_increments_from_processes(
    backend: Backend, storage: Storage, tmp_path: Path
) -> None:
    if not backend.shared_across_processes:
        pytest.skip(f"{backend.kind} storage lives in one process")
    processes, per_process = 4, 50
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                backend.url,
                "shared/counter",
                str(per_process),
                str(tmp_path / f"ready{i}"),
                str(go),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(processes)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready{i}").exists() for i in range(processes)):
            assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs]
            assert time.monotonic() < deadline, "workers did not start"
            await asyncio.sleep(0.02)
        go.touch()
        outputs = await asyncio.gather(*(asyncio.to_thread(p.communicate, timeout=90) for p in procs))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * processes, [o[0].decode() for o in outputs]
    assert await storage.get("shared/counter") == b"%d" % (processes * per_process)


# --------------------------------------------------------------------------------------------
# list_keys
# --------------------------------------------------------------------------------------------


async def test_list_keys_lists_immediate_children_in_byte_order(storage: Storage) -> None:
    children = ["d/a", "d/b", "d/c", "d/Z", "d/z", "d/é", "d/中", "d/\uffff", "d/😀", "d/"]
    nested = ["d/a/x", "d/a/y", "d/b/z/w", "d/ /deep", "d//double"]
    outside = ["c", "d", "dd/x", "e/a", "top"]
    await put_all(storage, children + nested + outside)
    expected = sorted(children, key=lambda k: k.encode())
    assert await storage.list_keys("d/") == expected
    assert await storage.list_keys("d/a/") == ["d/a/x", "d/a/y"]
    assert await storage.list_keys("d/b/") == []  # only a grandchild there
    assert await storage.list_keys("d/b/z/") == ["d/b/z/w"]
    assert await storage.list_keys("") == ["c", "d", "top"]
    assert await storage.list_keys("nothing/") == []
    await storage.delete("d/b")
    assert "d/b" not in await storage.list_keys("d/")


async def test_list_keys_with_a_partial_name_prefix(storage: Storage) -> None:
    await put_all(storage, ["d/a", "d/ab", "d/a/x", "d/b", "d/ab/y", "d/A"])
    assert await storage.list_keys("d/a") == ["d/a", "d/ab"]
    assert await storage.list_keys("d/ab") == ["d/ab"]
    assert await storage.list_keys("d/ab/") == ["d/ab/y"]


async def test_list_keys_pages_with_start_after_and_limit(storage: Storage) -> None:
    names = [f"p/{i:02d}" for i in range(25)]
    await put_all(storage, names + [f"p/{i:02d}/child" for i in range(0, 25, 3)] + ["q/00"])
    pages: list[list[str]] = []
    after: str | None = None
    while True:
        page = await storage.list_keys("p/", start_after=after, limit=10)
        if not page:
            break
        pages.append(page)
        after = page[-1]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [k for p in pages for k in p] == names
    assert await storage.list_keys("p/", start_after="p/05", limit=2) == ["p/06", "p/07"]
    # start_after need not be a listed key: inside a subdirectory, before the prefix, after it
    assert await storage.list_keys("p/", start_after="p/03/child", limit=2) == ["p/04", "p/05"]
    assert await storage.list_keys("p/", start_after="a", limit=1) == ["p/00"]
    assert await storage.list_keys("p/", start_after="p/99") == []
    assert await storage.list_keys("p/", start_after="z") == []
    assert await storage.list_keys("p/", limit=0) == []
    assert len(await storage.list_keys("p/", limit=1000)) == 25


async def test_list_keys_skips_large_subtrees(storage: Storage) -> None:
    await put_all(storage, ["s/a"] + [f"s/a/{i:04d}" for i in range(600)] + ["s/b", "s/c"])
    assert await storage.list_keys("s/") == ["s/a", "s/b", "s/c"]
    assert await storage.list_keys("s/", start_after="s/a", limit=1) == ["s/b"]


# --------------------------------------------------------------------------------------------
# delete_prefix (a raw string prefix)
# --------------------------------------------------------------------------------------------


async def test_delete_prefix_removes_nested_keys_and_their_listing(storage: Storage) -> None:
    doomed = ["a/b", "a/b/c", "a/b/c/d", "a/bc", "a/bc/e"]
    kept = ["a/x", "a/a", "ab", "a", "b/a/b"]
    await put_all(storage, doomed + kept)
    assert await storage.commit(Batch().index_add("a/b", "a/b", 1))
    assert await storage.delete_prefix("a/b") == len(doomed)
    assert await storage.get_many(doomed) == [None] * len(doomed)
    assert await storage.get_many(kept) == [k.encode() for k in kept]
    assert await storage.list_keys("a/") == ["a/a", "a/x"]
    assert await storage.list_keys("a/b/") == []
    assert await storage.list_keys("a/bc/") == []
    assert await storage.list_keys("") == ["a", "ab"]
    assert await storage.index_range("a/b") == [("a/b", 1.0)]  # indexes are not keys
    assert await storage.delete_prefix("a/b") == 0
    await storage.put("a/b/c", b"again")  # the directory works again afterwards
    assert await storage.list_keys("a/b/") == ["a/b/c"]


async def test_delete_prefix_directory_form_and_everything(storage: Storage) -> None:
    await put_all(storage, ["w/1", "w/1/s/a", "w/1/s/b", "w/10", "w/2"])
    assert await storage.delete_prefix("w/1/") == 2
    assert await storage.list_keys("w/") == ["w/1", "w/10", "w/2"]
    assert await storage.list_keys("w/1/s/") == []
    assert await storage.delete_prefix("") == 3
    assert await storage.list_keys("w/") == []


async def test_delete_prefix_treats_glob_characters_literally(storage: Storage) -> None:
    keys = ["g*/1", "g*x", "gy", "g?", "g[a]", "ga", "g\\z", "g%s"]
    await put_all(storage, keys)
    assert await storage.delete_prefix("g*") == 2
    assert await storage.delete_prefix("g[") == 1
    assert await storage.delete_prefix("g\\") == 1
    assert await storage.delete_prefix("g?") == 1
    assert await storage.list_keys("") == ["g%s", "ga", "gy"]


async def test_delete_prefix_many_keys(storage: Storage) -> None:
    await put_all(storage, [f"big/{i:05d}" for i in range(1234)] + ["bigger"])
    assert await storage.delete_prefix("big/") == 1234
    assert await storage.list_keys("big/") == []
    assert await storage.list_keys("") == ["bigger"]


# --------------------------------------------------------------------------------------------
# Sorted indexes
# --------------------------------------------------------------------------------------------


async def test_index_range_order_max_score_limit_and_score(storage: Storage) -> None:
    batch = Batch()
    for member, score in [
        ("e", 5.0),
        ("a", 1.0),
        ("c", 3.0),
        ("b2", 2.0),
        ("b1", 2.0),
        ("neg", -1.5),
        ("inf", math.inf),
        ("tiny", 1e-300),
    ]:
        batch.index_add("timers", member, score)
    batch.index_add("other", "a", 0.0)
    assert await storage.commit(batch)
    everything = await storage.index_range("timers")
    assert everything == [
        ("neg", -1.5),
        ("tiny", 1e-300),
        ("a", 1.0),
        ("b1", 2.0),
        ("b2", 2.0),
        ("c", 3.0),
        ("e", 5.0),
        ("inf", math.inf),
    ]
    assert await storage.index_range("timers", max_score=2.0) == everything[:5]
    assert await storage.index_range("timers", max_score=1.9999) == everything[:3]
    assert await storage.index_range("timers", max_score=-2) == []
    assert await storage.index_range("timers", limit=2) == everything[:2]
    assert await storage.index_range("timers", max_score=3.0, limit=10) == everything[:6]
    assert await storage.index_range("timers", limit=0) == []
    # With a limit (one script per read on a single Redis server, a pipeline without): the
    # same order, ties by member across buckets, infinite scores exact.
    assert await storage.index_range("timers", limit=100) == everything
    assert await storage.index_range("timers", limit=8) == everything
    assert await storage.index_range("timers", max_score=2.0, limit=4) == everything[:4]
    assert await storage.index_range("timers", max_score=math.inf, limit=8) == everything
    assert await storage.index_range("nope", limit=5) == []
    assert await storage.index_range("nope") == []
    assert await storage.index_score("timers", "c") == 3.0
    assert await storage.index_score("timers", "inf") == math.inf
    assert await storage.index_score("timers", "zzz") is None
    assert await storage.index_count("timers") == 8
    assert await storage.index_count("other") == 1
    assert await storage.index_count("nope") == 0
    assert await storage.index_score("other", "c") is None
    score = 1722000000.123456789  # a full-precision float survives exactly
    assert await storage.commit(Batch().index_add("timers", "c", score).index_remove("timers", "a"))
    assert await storage.index_score("timers", "c") == score
    assert await storage.index_score("timers", "a") is None
    assert [m for m, _ in await storage.index_range("timers")][-2:] == ["c", "inf"]
    assert (await storage.index_range("timers", max_score=score, limit=7))[-1:] == [("c", score)]
    assert await storage.commit(Batch().index_add("timers", "ninf", -math.inf))
    assert await storage.index_range("timers", limit=1) == [("ninf", -math.inf)]
    assert await storage.index_range("other") == [("a", 0.0)]


# --------------------------------------------------------------------------------------------
# Lifecycle
# --------------------------------------------------------------------------------------------


async def test_data_persists_across_reopen(backend: Backend) -> None:
    first = await backend.open()
    assert await first.commit(Batch().put("p/k", ALL_BYTES).index_add("ix", "m", 7))
    await first.close()
    second = await backend.open()
    try:
        assert await second.get("p/k") == ALL_BYTES
        assert await second.list_keys("p/") == ["p/k"]
        assert await second.index_score("ix", "m") == 7.0
    finally:
        await second.close()


async def test_closed_storage_raises_storage_error(backend: Backend) -> None:
    s = await backend.open()
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(StorageError):
        await s.get("x")
    with pytest.raises(StorageError):
        await s.put("x", b"1")


async def test_url_attribute_is_redacted(backend: Backend, storage: Storage) -> None:
    assert storage.url == redact_url(backend.url)


# --------------------------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["postgres://user:hunter2@db/x", "s3://bucket/path", "sqlite:relative.db", "redis:x"]
)
async def test_unknown_or_malformed_scheme_is_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        await open_storage(url)
    message = str(info.value)
    assert redact_url(url) in message
    assert "hunter2" not in message
    assert "sqlite://" in message and "redis://" in message  # lists the accepted forms
    with pytest.raises(ConfigError):
        parse_storage_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:notaport/0",
        "redis://localhost:6379/zero",
        "redis://localhost:6379/0?nosuchoption=1",
        "redis://localhost:6379/0?prefix=",
        "sqlite:///tmp/x.db?sync=sometimes",
        "sqlite:///tmp/x.db?journal=off",
        "sqlite://",
        "file://remotehost/data",
        "",
    ],
)
def test_malformed_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_storage_url(url)
    assert repr(url) in str(info.value) or not url


def test_parse_storage_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_storage_url("sqlite:///tmp/x.db") == ("sqlite", {"path": "/tmp/x.db", "sync": "normal"})
    assert parse_storage_url("sqlite:////tmp/x.db")[1]["path"] == "/tmp/x.db"
    assert parse_storage_url("sqlite://./rel.db")[1]["path"] == str(tmp_path / "rel.db")
    assert parse_storage_url("sqlite://rel.db")[1]["path"] == str(tmp_path / "rel.db")
    assert parse_storage_url("sqlite:///./rel.db")[1]["path"] == str(tmp_path / "rel.db")
    assert parse_storage_url("sqlite:///../up.db")[1]["path"] == str(tmp_path.parent / "up.db")
    assert parse_storage_url("sqlite:///tmp/x.db?sync=full")[1]["sync"] == "full"
    assert parse_storage_url("sqlite://~/x.db")[1]["path"] == os.path.expanduser("~/x.db")
    assert parse_storage_url("file:///srv/data")[1]["path"] == "/srv/data/actorflow.db"
    assert parse_storage_url("file://localhost/srv/my%20data")[1]["path"] == "/srv/my data/actorflow.db"
    assert parse_storage_url("/srv/data") == ("sqlite", {"path": "/srv/data/actorflow.db", "sync": "normal"})
    assert parse_storage_url("data")[1]["path"] == str(tmp_path / "data" / "actorflow.db")
    assert parse_storage_url(tmp_path / "d")[1]["path"] == str(tmp_path / "d" / "actorflow.db")
    kind, details = parse_storage_url("redis://:pw@example.com:6380/3?prefix=x:&socket_timeout=5")
    assert kind == "redis"
    assert details["prefix"] == "x:" and details["db"] == "3"
    assert details["url"] == "redis://:pw@example.com:6380/3?socket_timeout=5"
    assert parse_storage_url("rediss://h")[1] == {
        "url": "rediss://h/0",
        "prefix": "af:",
        "db": "0",
        "wait_replicas": "0",
        "wait_timeout": "1",
        "cluster": "",
    }
    kind, details = parse_storage_url("rediss+cluster://u:pw@node1:7000?prefix=x:&ssl_cert_reqs=none")
    assert kind == "redis" and details["cluster"] == "1" and details["prefix"] == "x:"
    assert details["url"] == "rediss://u:pw@node1:7000?ssl_cert_reqs=none"
    with pytest.raises(ConfigError, match="only database 0"):
        parse_storage_url("redis+cluster://node1:7000/2")
    (tmp_path / "plainfile").write_text("x")
    with pytest.raises(ConfigError):
        parse_storage_url(str(tmp_path / "plainfile"))  # a bare path is a directory


def test_redact_url() -> None:
    assert redact_url("redis://:s3cret@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("redis://user:s3cret@h:1/0?prefix=a") == "redis://user:***@h:1/0?prefix=a"
    assert redact_url("rediss://u:p@ss/w@rd@h/0") == "rediss://u:***@h/0"
    assert redact_url("redis://h:1/0?password=s3cret&x=1") == "redis://h:1/0?password=***&x=1"
    assert redact_url("redis://user@h/0") == "redis://user@h/0"
    assert redact_url("redis://h/0") == "redis://h/0"
    assert redact_url("redis+cluster://u:pw@h:7000") == "redis+cluster://u:***@h:7000"
    assert redact_url("sqlite:///tmp/a:b@c.db") == "sqlite:///tmp/a:b@c.db"
    assert redact_url("/tmp/data") == "/tmp/data"


def test_default_storage_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ACTORFLOW_STORAGE", "redis://somewhere/0")
    assert default_storage_url() == "redis://somewhere/0"
    monkeypatch.delenv("ACTORFLOW_STORAGE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    url = default_storage_url()
    assert url == f"sqlite://{tmp_path}/xdg/actorflow/actorflow.db"
    assert parse_storage_url(url)[1]["path"] == f"{tmp_path}/xdg/actorflow/actorflow.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_storage_url() == f"sqlite://{tmp_path}/home/.local/share/actorflow/actorflow.db"


async def test_bare_directory_path_is_a_sqlite_file_inside(tmp_path: Path) -> None:
    directory = tmp_path / "data" / "deeper"
    s = await open_storage(str(directory))
    try:
        assert isinstance(s, SQLiteStorage)
        assert s.url == str(directory)
        await s.put("k", b"v")
    finally:
        await s.close()
    assert (directory / "actorflow.db").is_file()
    for url in (f"file://{directory}", f"sqlite://{directory}/actorflow.db", directory):
        again = await open_storage(url)
        try:
            assert await again.get("k") == b"v", url
        finally:
            await again.close()


# --------------------------------------------------------------------------------------------
# Backend failures
# --------------------------------------------------------------------------------------------


async def test_unreachable_redis_is_unavailable_and_named() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as info:
        await open_storage(url)
    assert url in str(info.value)
    assert info.value.url == url
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("userinfo", [":s3cret", "someone:s3cret"])
async def test_unreachable_redis_message_hides_password(userinfo: str) -> None:
    port = free_port()
    url = f"redis://{userinfo}@127.0.0.1:{port}/0?prefix=p:"
    with pytest.raises(StorageUnavailableError) as info:
        await open_storage(url)
    message = str(info.value)
    assert "s3cret" not in message
    assert f"redis://{userinfo.split(':')[0]}:***@127.0.0.1:{port}/0?prefix=p:" in message


async def test_redis_password_in_url(tmp_path: Path) -> None:
    with start_redis(tmp_path / "redis", password="right/pw@") as server:
        assert "right%2Fpw%40" in server.url
        s = await open_storage(server.url)
        try:
            await s.put("k", b"v")
            assert await s.get("k") == b"v"
            assert "right" not in s.url and ":***@" in s.url
        finally:
            await s.close()
        for wrong in (f"redis://:s3cret@127.0.0.1:{server.port}/0", f"redis://127.0.0.1:{server.port}/0"):
            with pytest.raises(StorageUnavailableError) as info:
                await open_storage(wrong)
            assert "s3cret" not in str(info.value)
            assert redact_url(wrong) in str(info.value)


async def test_redis_server_going_away_is_unavailable(tmp_path: Path) -> None:
    with start_redis(tmp_path / "redis") as server:
        s = await open_storage(server.url)
        try:
            await s.put("k", b"v")
            server.stop()
            for call in (s.get("k"), s.commit(Batch().put("k", b"w")), s.list_keys("")):
                with pytest.raises(StorageUnavailableError) as info:
                    await call
                assert server.url in str(info.value)
        finally:
            await s.close()


async def test_redis_errors_are_translated(redis_server: RedisServer) -> None:
    import redis.asyncio

    prefix = f"t{uuid.uuid4().hex}:"
    s = await open_storage(f"{redis_server.url}?prefix={prefix}")
    raw = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        assert isinstance(s, RedisStorage)
        await raw.set(s._dkey(bucket_of(""), b"x/"), b"not a sorted set")  # sabotage a directory set
        with pytest.raises(StorageError) as info:
            await s.list_keys("x/")
        assert not isinstance(info.value, StorageUnavailableError)
        assert "WRONGTYPE" in str(info.value)
        assert redis_server.url in str(info.value)
    finally:
        await raw.aclose()
        await s.close()


async def test_redis_prefixes_isolate_storages(redis_server: RedisServer) -> None:
    one = await open_storage(f"{redis_server.url}?prefix=t{uuid.uuid4().hex}:")
    two = await open_storage(f"{redis_server.url}?prefix=t{uuid.uuid4().hex}:")
    try:
        await one.put("k", b"1")
        await one.commit(Batch().index_add("ix", "m", 1))
        assert await two.get("k") is None
        assert await two.list_keys("") == []
        assert await two.index_range("ix") == []
        assert await two.delete_prefix("") == 0
        assert await one.get("k") == b"1"
    finally:
        await one.close()
        await two.close()


async def test_redis_storage_refuses_a_second_event_loop(redis_server: RedisServer) -> None:
    s = await open_storage(f"{redis_server.url}?prefix=t{uuid.uuid4().hex}:")
    try:
        with pytest.raises(StorageError, match="event loop"):
            await asyncio.to_thread(asyncio.run, s.get("k"))
        assert await s.get("k") is None  # still fine on its own loop
    finally:
        await s.close()


async def test_sqlite_unopenable_path_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("I am a file, not a directory")
    url = f"sqlite://{tmp_path}/afile/sub/x.db"
    with pytest.raises(StorageUnavailableError) as info:
        await open_storage(url)
    assert url in str(info.value)
    (tmp_path / "garbage.db").write_bytes(b"this is not a database" * 100)
    url = f"sqlite://{tmp_path}/garbage.db"
    with pytest.raises(StorageUnavailableError) as info:
        await open_storage(url)
    assert url in str(info.value)


@pytest.mark.parametrize(("query", "level"), [("", 1), ("?sync=full", 2)])
async def test_sqlite_pragmas(tmp_path: Path, query: str, level: int) -> None:
    s = await open_storage(f"sqlite://{tmp_path}/x.db{query}")
    assert isinstance(s, SQLiteStorage)
    try:
        got = await s._run(
            lambda conn: (
                conn.execute("PRAGMA journal_mode").fetchone()[0],
                conn.execute("PRAGMA synchronous").fetchone()[0],
                conn.execute("PRAGMA busy_timeout").fetchone()[0],
            )
        )
        assert got == ("wal", level, 30000)
    finally:
        await s.close()
    with sqlite3.connect(tmp_path / "x.db") as conn:  # the documented schema
        tables = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
        assert set(tables) == {"kv", "idx"} and "WITHOUT ROWID" in tables["kv"]
    conn.close()


def test_redis_backend_is_imported_only_when_used() -> None:
    code = (
        "import sys, actorflow.storage as st; "
        "assert 'redis' not in sys.modules and 'actorflow.storage.redis' not in sys.modules; "
        "st.RedisStorage; assert 'redis' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


async def test_sqlite_small_operations_never_block_the_loop_on_a_lock(tmp_path: Path) -> None:
    """A small commit first tries the caller's thread with no busy wait; while another
    connection holds the write lock it waits in the worker instead, and the loop stays free."""
    s = await open_storage(f"sqlite://{tmp_path}/lock.db")
    assert isinstance(s, SQLiteStorage)
    holder = sqlite3.connect(tmp_path / "lock.db", isolation_level=None)
    try:
        assert await s.commit(Batch().put("k", b"0"))  # inline: nothing holds the lock
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO kv (key, value) VALUES ('other', x'01')")
        pending = asyncio.ensure_future(s.commit(Batch().require("k", b"0").put("k", b"1")))
        ticks = 0
        for _ in range(20):  # the loop keeps running while the commit waits for the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert not pending.done() and ticks == 20
        assert await s.get("k") == b"0"  # reads are not blocked by a writer (WAL)
        holder.execute("COMMIT")
        assert await asyncio.wait_for(pending, 10)
        assert await s.get_many(["k", "other"]) == [b"1", b"\x01"]
    finally:
        holder.close()
        await s.close()
