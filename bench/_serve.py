"""What the HTTP benchmarks share: a local Ray with Serve on a free port, torn down at the end."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_serve() -> Iterator[str]:
    """Start Ray and Serve (access log off, as on both sides of every comparison); yield the
    base URL; shut both down afterwards."""
    import ray
    from ray import serve

    port = free_port()
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, logging_level="ERROR")
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False}
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
