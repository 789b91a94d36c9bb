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
