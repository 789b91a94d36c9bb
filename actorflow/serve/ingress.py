"""How HTTP reaches ``ActorHost``: Serve's HAProxy ingress (the default) or its classic proxy.

**HAProxy mode** (``RAY_SERVE_ENABLE_HA_PROXY=1``). Every ``ActorHost`` replica serves HTTP on
a port of its own (Serve's direct ingress) and an HAProxy process on each node sends requests
straight to it: no Python proxy process and no Ray actor call on the way, and a body is read
by the replica itself. HAProxy picks the replica by hashing the request path up to the actor
id (``balance uri depth 4``: ``/v1/actors/{type}/{id}``), on a consistent-hash ring
(``hash-type consistent``), so every request for one actor, from any client and with no header,
reaches one replica, and adding a replica moves only the actors that now hash to it. (HAProxy
2.8 places servers on the ring by their position in its list: when a replica that is not the
last one goes away, most actors move. Only affinity suffers; every commit is a
compare-and-set.) HAProxy also refuses a request whose headers and body do not arrive within
``request_timeout`` seconds (408) and buffers a body before it picks the replica, so a stalled
client never holds a replica's slot.

Serve exposes no setting for these: its ``RAY_SERVE_HAPROXY_BALANCE_ALGORITHM`` is pasted after
``balance`` as the last line of the ``defaults`` section of the configuration it generates, so
the extra directives ride on it, one per line. ``tests/test_serve.py`` reads the generated
configuration to check that they arrive.

**Classic mode**: Serve's Python proxy, with Serve's ``ConsistentHashRouter`` on the
``x-session-id`` header (which the Python client sends); requests without it run on whichever
replica gets them. Slower (every request crosses the proxy process, and reading a body costs the
replica a round trip back to it), and kept for setups that need it.

In HAProxy mode a replica also runs its user code (the FastAPI app, the actor runtime) on the
event loop that serves its HTTP port (``RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0``, as
Serve's own ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` does): by default Serve gives user code a loop in
a thread of its own, and every request then crosses between the two threads for its body and
for each message of its answer. Measured with ``bench.http`` here (SQLite), the same loop took
one client's call from 1.17 to 0.93 ms (0.73 ms for an ``async def`` method, from 1.13) and the
no-op floor from 0.55-0.88 to 0.44 ms (docs/design.md has the figures). The price is that code
blocking the loop also delays Serve's own work in that replica (health checks, metrics);
actorflow never blocks it for long: plain methods run in worker threads, and storage calls
made on the loop yield every 5 ms.

The mode is a property of the Ray cluster: :func:`configure` must run before ``ray.init`` (or
the same variables be in the environment of every ``ray start``), because Serve reads them when
its processes start.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

ProxyMode = Literal["haproxy", "classic"]
PROXY_MODES: tuple[ProxyMode, ...] = ("haproxy", "classic")
ENABLE = "RAY_SERVE_ENABLE_HA_PROXY"
#: Off ("0"): a replica runs user code on the loop that serves its HTTP port (see the module doc).
USER_CODE_THREAD = "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"
#: Seconds HAProxy gives a client to send a request's headers and body.
DEFAULT_REQUEST_TIMEOUT = 10
#: Seconds a replica that is going away keeps serving while HAProxy stops sending to it
#: (Serve's default is 30, sized for cloud load balancers).
DEFAULT_DRAIN_SECONDS = 2.0


def balance_rule(request_timeout: int = DEFAULT_REQUEST_TIMEOUT) -> str:
    """What follows ``balance`` in the generated HAProxy configuration (see the module doc)."""
    return "\n    ".join(
        (
            "uri depth 4",
            "hash-type consistent",
            f"timeout http-request {int(request_timeout)}s",
            "option http-buffer-request",
        )
    )


def _free_port() -> int:
    """A port free now on every interface, below the kernel's ephemeral range.

    The port is only reserved once HAProxy binds it, after Ray has started; a port from the
    ephemeral range (what binding port 0 gives) may meanwhile become the local end of one of
    Ray's own connections, and HAProxy then fails with "Address already in use". Ray's worker
    ports end at 19999, so the ports between that and the ephemeral range are left to us."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randint(20000, low - 1) if low > 20100 else 0
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port for HAProxy's listeners")


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def new_config_dir() -> str:
    """A fresh, short folder for HAProxy's files (see :func:`haproxy_env`)."""
    return tempfile.mkdtemp(prefix="afh-", dir="/tmp")


def haproxy_env(
    *,
    config_dir: str | os.PathLike[str],
    threads: int | None = None,
    request_timeout: int = DEFAULT_REQUEST_TIMEOUT,
    drain_seconds: float = DEFAULT_DRAIN_SECONDS,
    free_ports: bool = True,
) -> dict[str, str]:
    """The environment that runs Serve in HAProxy mode, with user code on the replica's HTTP loop.

    ``config_dir`` holds HAProxy's configuration and sockets (one subfolder per node), so that
    :func:`stop_haproxy` can find exactly these processes. ``threads`` defaults to the CPUs of
    this machine, at most 4. With ``free_ports``, HAProxy's statistics and metrics listeners
    and Serve's fallback proxy take free ports instead of their fixed defaults (8404, 9101,
    8500), so that two instances on one machine do not collide.
    """
    d = Path(config_dir)
    # HAProxy takes Unix socket paths of at most 97 bytes, and Serve puts its sockets in a
    # folder named after the node's 56-character id inside this one.
    if len(str(d)) + len("/" + "n" * 56 + "/metrics.sock") > 97:
        from actorflow.errors import ConfigError

        raise ConfigError(f"HAProxy's folder {d} is too long for its socket paths (at most 27 characters)")
    env = {
        ENABLE: "1",
        "RAY_SERVE_HAPROXY_BALANCE_ALGORITHM": balance_rule(request_timeout),
        "RAY_SERVE_HAPROXY_NBTHREAD": str(threads or min(4, os.cpu_count() or 1)),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(d / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(d / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(d),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(d / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(d / "metrics.sock"),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(drain_seconds),
        USER_CODE_THREAD: "0",
    }
    if free_ports:
        env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(_free_port())
        env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(_free_port())
        env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] = str(_free_port())
    return env


def configure(mode: ProxyMode, environ: dict[str, str] | None = None, **options: object) -> dict[str, str]:
    """Set the process environment for ``mode`` before Ray starts; return what was set.

    For ``"haproxy"`` this is :func:`haproxy_env` (``options`` are its keywords; without a
    ``config_dir`` a new temporary folder is made); variables already set by the user win.
    For ``"classic"`` it makes sure HAProxy mode is off.
    """
    target = os.environ if environ is None else environ
    if mode not in PROXY_MODES:
        from actorflow.errors import ConfigError

        raise ConfigError(f"unknown proxy mode {mode!r}; one of {', '.join(PROXY_MODES)}")
    if mode == "classic":
        target[ENABLE] = "0"
        return {ENABLE: "0"}
    options.setdefault("config_dir", new_config_dir())
    env = haproxy_env(**options)  # type: ignore[arg-type]
    chosen = {k: v for k, v in env.items() if k not in target or k == ENABLE}
    target.update(chosen)
    return chosen


def haproxy_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the Ray started from this environment runs Serve in HAProxy mode."""
    return (os.environ if environ is None else environ).get(ENABLE, "0") == "1"


def _processes_using(config_dir: str) -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            if cmdline and cmdline[0].endswith(b"haproxy") and config_dir.encode() in b" ".join(cmdline):
                yield int(entry.name)


def stop_haproxy(config_dir: str | os.PathLike[str], timeout: float = 5.0) -> int:
    """Stop the HAProxy processes that run from ``config_dir`` (SIGTERM, then SIGKILL), by pid;
    return how many there were.

    Serve stops its HAProxy when Ray shuts down cleanly, but one whose Ray processes were
    killed (``ray stop --force``, a crash) lives on, holding the HTTP port. Only processes
    whose command line names ``config_dir`` are touched, never another instance's.
    """
    path = str(config_dir)
    pids = list(_processes_using(path))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p in _processes_using(path) for p in pids):
        time.sleep(0.05)
    for pid in _processes_using(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def main(argv: list[str] | None = None) -> int:
    """``python -m actorflow.serve.ingress [--classic]``: print the ``export`` lines that run Serve
    the way ``actorflow serve`` does, for ``eval "$(...)"`` before ``ray start`` or
    ``serve run deployments/serve_config.yaml``."""
    import argparse
    import shlex

    parser = argparse.ArgumentParser(prog="python -m actorflow.serve.ingress", description=main.__doc__)
    parser.add_argument("--classic", action="store_true", help="Serve's classic proxy instead of HAProxy")
    parser.add_argument("--request-timeout", type=int, default=DEFAULT_REQUEST_TIMEOUT)
    args = parser.parse_args(argv)
    if args.classic:
        env = {ENABLE: "0"}
    else:
        env = haproxy_env(config_dir=new_config_dir(), request_timeout=args.request_timeout, free_ports=False)
    for name, value in env.items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
