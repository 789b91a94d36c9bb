"""Child processes for the crash tests: start one, wait for it to reach a point, SIGKILL it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def child(args: list[str], **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    """Run ``args`` as a child process; when the block ends, however it ends, the child is
    gone (killed if still running, reaped, its output pipe closed)."""
    proc = subprocess.Popen(args, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()


def wait_while_alive(
    proc: subprocess.Popen[Any], ready: Callable[[], bool], what: str, timeout: float = 120.0
) -> None:
    """Wait until ``ready()``; fail if the child exits first (with its output, if piped) or if
    ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the child exited before {what}: {output!r}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def sigkill(proc: subprocess.Popen[Any]) -> None:
    """Kill the child with SIGKILL (no cleanup runs in it) and reap it."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
