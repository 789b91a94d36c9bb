"""Shared test fixtures."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pathlib
import shutil
import uuid
from collections.abc import Iterator

import pytest
from _redis import (
    REDIS_SERVER,
    RedisCluster,
    RedisServer,
    start_cluster,
    start_replicated,
    start_slot_checked,
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real ``redis-server`` for the whole session (stopped, by pid, at the end).

    Tests share it: give each test its own key prefix (``?prefix=t<uuid>:``). Clients use it as
    a single server (``redis://``), but it runs as a one-node cluster that owns every hash slot,
    so it refuses (``CROSSSLOT``) any commit or other command whose keys span two slots: what
    would fail on a Redis Cluster fails in every test that uses it, from any process.
    """
    if not os.access(REDIS_SERVER, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"redis-server not found at {REDIS_SERVER}; .ci/run should have installed it")
        pytest.skip(f"redis-server not found at {REDIS_SERVER}")
    server = start_slot_checked(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A Redis Cluster of 3 primaries for the whole session (``.url`` is ``redis+cluster://``);
    every node is stopped, by pid, at the end."""
    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.skip(f"redis-server not found at {REDIS_SERVER}")
    cluster = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A primary with one replica for the whole session; yields the primary's URL with
    ``wait_replicas=1`` (add ``&prefix=...``). Both are stopped, by pid, at the end."""
    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.skip(f"redis-server not found at {REDIS_SERVER}")
    primary, replica = start_replicated(tmp_path_factory.mktemp("redis-replicated"))
    try:
        yield f"{primary.url}?wait_replicas=1&wait_timeout=5"
    finally:
        replica.stop()
        primary.stop()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray cluster for the whole session (2 CPUs, no dashboard), with Serve in
    HAProxy mode as ``actorflow serve`` runs it (one HAProxy thread, a 3 s request timeout,
    its files in a temp dir); every HAProxy of it is stopped at the end."""
    import ray

    from actorflow.serve.ingress import configure, new_config_dir, stop_haproxy

    config_dir = new_config_dir()  # short: HAProxy's socket paths are limited
    if not ray.is_initialized():
        # Workers import test modules by name (functions defined in them are pickled by
        # reference), and the repository's examples, so they need both directories on their path.
        here = pathlib.Path(__file__).parent
        paths = (str(here), str(here.parent), os.environ.get("PYTHONPATH"))
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        configure("haproxy", config_dir=config_dir, threads=1, request_timeout=3, drain_seconds=1.0)
        # Ray's agents publish the processes' metrics every 2 s (10 s by default), so that a
        # test scraping /metrics does not wait long for the last ones.
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level="ERROR",
            _system_config={"metrics_report_interval_ms": 2000},
        )
    try:
        yield
    finally:
        from actorflow.engine import close_all

        close_all()
        ray.shutdown()
        stop_haproxy(config_dir)
        shutil.rmtree(config_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_address(ray_session: None) -> str:
    """Address for other processes to join the session's Ray cluster (``RAY_ADDRESS``)."""
    import ray

    return str(ray.get_runtime_context().gcs_address)


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def storage_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """A fresh, empty storage URL on each backend: a SQLite file, a prefix on the session's
    single Redis, a prefix on its 3-primary Redis Cluster."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/actorflow.db"
    if request.param == "redis-cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return f"{cluster.url}?prefix=t{uuid.uuid4().hex[:12]}:"
    server: RedisServer = request.getfixturevalue("redis_server")
    return f"{server.url}?prefix=t{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def wf_storage(storage_url: str) -> Iterator[str]:
    """Make ``storage_url`` the default of ``actorflow.workflow`` for one test."""
    from actorflow import workflow
    from actorflow.engine import _runtime

    workflow.init(storage_url, lease_ttl=10.0)
    try:
        yield storage_url
    finally:
        _runtime.close_all()
        from actorflow.engine._detached import stop_host

        stop_host(_runtime.canonical_url(storage_url))  # the detached actor run_async started
