"""What the benchmarks share: a local Ray with Serve on a free port in either proxy mode, and a
throwaway redis-server; each torn down at the end, by pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_serve(proxy: str = "haproxy") -> Iterator[str]:
    """Start Ray and Serve in ``proxy`` mode (``actorflow.serve.ingress``; access log off, as on both
    sides of every comparison); yield the base URL; shut both down (and HAProxy) afterwards."""
    from actorflow.serve.ingress import configure, new_config_dir, stop_haproxy

    config_dir = new_config_dir()
    configure(proxy, config_dir=config_dir)  # type: ignore[arg-type]
    import ray
    from ray import serve

    # Replicas import the benchmark's actor modules (bench.*) from the repository.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    port = free_port()
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, logging_level="ERROR")
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False}
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        ray.shutdown()
        stop_haproxy(config_dir)
        shutil.rmtree(config_dir, ignore_errors=True)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server on a free port with its data in a temp dir (AOF on); yields its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found (apt-get install redis-server)")
    port = free_port()
    data = tempfile.mkdtemp(prefix="actorflow-bench-redis-")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", data, "--save", "", "--appendonly", "yes"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(data, ignore_errors=True)


def _cluster_port() -> int:
    """A free port whose cluster bus port (10000 above) is free and valid too."""
    while True:
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@contextlib.contextmanager
def redis_cluster(primaries: int = 3, replicas: int = 0) -> Iterator[str]:
    """A Redis Cluster of cluster-enabled redis-servers (AOF on, data in a temp dir) joined by
    ``redis-cli --cluster create``; yields its ``redis+cluster://`` URL; stops every node."""
    exe, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if exe is None or cli is None:
        raise SystemExit("redis-server / redis-cli not found (apt-get install redis-server)")
    data = tempfile.mkdtemp(prefix="actorflow-bench-cluster-")
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for i in range(primaries * (1 + replicas)):
            port = _cluster_port()
            node_dir = os.path.join(data, f"node{i}")
            os.makedirs(node_dir)
            procs.append(
                subprocess.Popen(
                    [
                        exe,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--dir",
                        node_dir,
                        "--save",
                        "",
                        "--appendonly",
                        "yes",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-node-timeout",
                        "2000",
                    ],
                    stdout=subprocess.DEVNULL,
                )
            )
            ports.append(port)
        for port in ports:
            deadline = time.monotonic() + 10
            while (
                subprocess.run([cli, "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG"
            ):
                if time.monotonic() > deadline:
                    raise SystemExit(f"redis-server on port {port} did not start")
                time.sleep(0.05)
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while not all(
            b"cluster_state:ok"
            in subprocess.run([cli, "-p", str(p), "cluster", "info"], capture_output=True).stdout
            for p in ports
        ):
            if time.monotonic() > deadline:
                raise SystemExit("the Redis Cluster did not become ok")
            time.sleep(0.1)
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
        shutil.rmtree(data, ignore_errors=True)
