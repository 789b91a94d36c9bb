"""Start a throwaway ``redis-server`` for tests.

``start_redis(tmpdir)`` runs ``redis-server`` in the foreground as a child process on a free
port of 127.0.0.1, with its data (AOF on, RDB snapshots off) and log in ``tmpdir``, and
returns once it answers PING. ``RedisServer.stop()`` kills exactly that process, by pid, and
waits for it. Usable as a context manager::

    with start_redis(tmp_path) as server:
        url = server.url

For outage tests, ``server.kill()`` SIGKILLs the server (no shutdown, as in a crash) and
``server.start()`` starts it again on the same port with the same data directory, so clients
reconnect to the same address and find every write it acknowledged (AOF).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_ping(port: int, password: str | None = None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            if password:
                secret = password.encode()
                sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret))
                if not sock.recv(64).startswith(b"+OK"):
                    return False
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A running ``redis-server`` child process."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        port: int,
        directory: Path,
        password: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.extra = extra
        self.proc = proc
        self.port = port
        self.pid = proc.pid
        self.directory = directory
        self.password = password
        auth = f":{quote(password, safe='')}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{port}/0"

    @property
    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL) by its pid and reap it. Idempotent."""
        if self.proc.poll() is not None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
                return
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=timeout)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the server by its pid (as in a crash: nothing is flushed) and reap it.
        Idempotent."""
        if self.proc.poll() is not None:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=timeout)

    def start(self, timeout: float = 15.0) -> None:
        """Start the stopped (or killed) server again on the same port and data directory and
        return once it answers PING. Raises ``RuntimeError`` with its log if it does not."""
        if self.running():
            raise RuntimeError(f"redis-server pid {self.pid} is still running")
        self.proc = _launch(self.port, self.directory, self.password, self.extra)
        self.pid = self.proc.pid
        if not _wait_for_ping(self, timeout):
            log = self.log
            self.stop()
            raise RuntimeError(f"redis-server did not start again on port {self.port}:\n{log}")

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _launch(
    port: int, directory: Path, password: str | None, extra: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """Spawn ``redis-server`` on ``port`` with its files in ``directory`` (log appended)."""
    log = open(directory / "redis.log", "ab")
    try:
        return subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(directory),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--daemonize",
                "no",
                *(["--requirepass", password] if password else []),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    finally:
        log.close()


def _wait_for_ping(server: RedisServer, timeout: float) -> bool:
    """Whether ``server`` answers PING within ``timeout`` seconds (False once it exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.running():
        if _answers_ping(server.port, server.password):
            return True
        time.sleep(0.05)
    return False


def start_redis(
    tmpdir: str | os.PathLike[str],
    *,
    timeout: float = 15.0,
    password: str | None = None,
    extra: tuple[str, ...] = (),
    pick_port: Callable[[], int] = free_port,
) -> RedisServer:
    """Start ``redis-server`` with its files in ``tmpdir``; return once it answers PING.

    With ``password``, the server requires it (``--requirepass``) and ``.url`` includes it.
    ``extra`` are more ``redis-server`` arguments (``("--replicaof", "127.0.0.1", "6380")``).

    Retries on another port if the chosen one was taken meanwhile. Raises ``RuntimeError``
    (with the server's log) if it does not come up within ``timeout`` seconds.
    """
    directory = Path(tmpdir)
    directory.mkdir(parents=True, exist_ok=True)
    last_log = ""
    for _attempt in range(3):
        port = pick_port()
        (directory / "redis.log").write_bytes(b"")  # the log of this attempt only
        server = RedisServer(_launch(port, directory, password, extra), port, directory, password, extra)
        if _wait_for_ping(server, timeout):
            return server
        last_log = server.log
        server.stop()
        if "Address already in use" not in last_log:
            break
    raise RuntimeError(f"redis-server did not start:\n{last_log}")


def confirms(primary: RedisServer, replicas: int = 1) -> bool:
    """Whether ``replicas`` replicas confirm a fresh write to ``primary`` within 0.1 s (WAIT)."""
    import redis

    with redis.Redis(port=primary.port, password=primary.password) as client:
        client.incr("ready")
        return int(client.execute_command("WAIT", replicas, 100)) >= replicas


def start_replicated(
    tmpdir: str | os.PathLike[str], *, timeout: float = 30.0
) -> tuple[RedisServer, RedisServer]:
    """Start a primary and one replica of it (files in ``tmpdir``/primary and /replica) and
    return ``(primary, replica)`` once the replica confirms writes. Raises ``RuntimeError``
    (with the replica's log), having stopped both, if it does not within ``timeout`` s."""
    directory = Path(tmpdir)
    # Without this the primary waits 5 s before it starts a replica's first sync.
    primary = start_redis(directory / "primary", extra=("--repl-diskless-sync-delay", "0"))
    try:
        replica = start_redis(directory / "replica", extra=("--replicaof", "127.0.0.1", str(primary.port)))
    except BaseException:
        primary.stop()
        raise
    deadline = time.monotonic() + timeout
    while not confirms(primary):
        if time.monotonic() > deadline:
            log = replica.log
            replica.stop()
            primary.stop()
            raise RuntimeError(f"the replica did not catch up with the primary:\n{log}")
        time.sleep(0.05)
    return primary, replica


REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


class RedisCluster:
    """A Redis Cluster of child ``redis-server`` processes: ``primaries`` primaries, each with
    ``replicas`` replicas. ``url`` is a ``redis+cluster://`` URL of the first node; ``stop()``
    stops every node by pid."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes
        self.url = f"redis+cluster://127.0.0.1:{nodes[0].port}"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def primaries(self) -> list[RedisServer]:
        """The nodes that are primaries now (as the cluster sees it)."""
        import redis

        out = []
        for node in self.nodes:
            if not node.running():
                continue
            with redis.Redis(port=node.port) as client:
                if client.info("replication")["role"] == "master":
                    out.append(node)
        return out

    def owner(self, slot: int) -> RedisServer:
        """The primary serving ``slot`` now (as a running node sees it)."""
        import redis

        with redis.Redis(port=next(n for n in self.nodes if n.running()).port) as client:
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return next(n for n in self.nodes if n.port == int(primary[1]))
        raise AssertionError(f"no primary serves slot {slot}")

    def __enter__(self) -> RedisCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: redis-server arguments of a cluster node (a failed primary is replaced after about 2 s).
CLUSTER_NODE = (
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "2000",
)


def cluster_port() -> int:
    """A free port of 127.0.0.1 for a cluster node: at most 55535 (its bus listens 10000
    above) with the bus port free too."""
    while True:
        port = free_port()
        if port > 55535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _cluster_ok(node: RedisServer) -> bool:
    import redis

    try:
        with redis.Redis(port=node.port, socket_timeout=1) as client:
            info = client.execute_command("CLUSTER", "INFO")
    except redis.RedisError:
        return False
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


def start_cluster(
    tmpdir: str | os.PathLike[str], *, primaries: int = 3, replicas: int = 0, timeout: float = 60.0
) -> RedisCluster:
    """Start ``primaries * (1 + replicas)`` cluster-enabled servers (files in ``tmpdir``/nodeN),
    join them with ``redis-cli --cluster create`` and return once every node reports the cluster
    ok. Raises ``RuntimeError`` (having stopped them all) if it does not within ``timeout`` s."""
    directory = Path(tmpdir)
    nodes: list[RedisServer] = []
    try:
        for i in range(primaries * (1 + replicas)):
            nodes.append(
                start_redis(
                    directory / f"node{i}",
                    extra=(*CLUSTER_NODE, "--repl-diskless-sync-delay", "0"),
                    pick_port=cluster_port,
                )
            )
        create = subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in nodes),
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if create.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{create.stdout.decode()}{create.stderr.decode()}"
            )
        deadline = time.monotonic() + timeout
        while not all(_cluster_ok(n) for n in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become ok:\n" + "\n".join(n.log for n in nodes))
            time.sleep(0.1)
        return RedisCluster(nodes)
    except BaseException:
        for node in nodes:
            node.stop()
        raise


def start_slot_checked(tmpdir: str | os.PathLike[str], *, timeout: float = 30.0) -> RedisServer:
    """A single Redis that refuses, as a cluster would, any command whose keys lie in two hash
    slots (``CROSSSLOT``): a one-node cluster that owns every slot. Clients use it as a plain
    server (``redis://``, database 0); what it rejects would fail on a real cluster."""
    import redis

    server = start_redis(tmpdir, extra=CLUSTER_NODE, pick_port=cluster_port)
    try:
        with redis.Redis(port=server.port) as client:
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + timeout
        while not _cluster_ok(server):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the one-node cluster did not become ok:\n{server.log}")
            time.sleep(0.05)
        return server
    except BaseException:
        server.stop()
        raise


def slot_of(prefix: str, key: str) -> int:
    """The hash slot where the Redis backend keeps plain key ``key`` under ``prefix``."""
    from redis.crc import key_slot

    from actorflow.storage._groups import key_group
    from actorflow.storage._redis_names import Names, bucket_of

    return key_slot(Names(prefix.encode()).value(bucket_of(key_group(key)), key.encode()))
