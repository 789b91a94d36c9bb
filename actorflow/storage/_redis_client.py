"""The Redis backend's connection side: building the client a URL asks for, turning redis-py's
errors into actorflow's, and waiting for replicas (``wait_replicas``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import redis.asyncio
import redis.asyncio.cluster
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from actorflow.errors import ConfigError, StorageError, StorageUnavailableError
from actorflow.storage import REDIS_REPLY_TIMEOUT
from actorflow.storage._redis_names import Names

#: Seconds to wait for a TCP connection unless the URL sets ``socket_connect_timeout``.
DEFAULT_CONNECT_TIMEOUT = 10.0

#: Connections a plain client's pool may open unless the URL says ``max_connections``.
MAX_CONNECTIONS = 1000

Client = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster


def make_client(details: dict[str, str], shown: str) -> Client:
    """The redis-py client for a parsed Redis URL: a cluster client for ``redis+cluster://``,
    else a plain one whose pool opens up to ``MAX_CONNECTIONS`` connections (redis-py's
    default of 100 fails a burst of concurrent timer firings and calls; the URL's
    ``max_connections`` wins). redis-py's own retries are off (a re-sent commit could report
    ``False`` for a batch that applied)."""
    options: dict[str, Any] = {
        "decode_responses": False,
        "socket_connect_timeout": DEFAULT_CONNECT_TIMEOUT,
        "socket_timeout": REDIS_REPLY_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
    }
    try:
        if details["cluster"]:
            return redis.asyncio.cluster.RedisCluster.from_url(details["url"], **options)
        pool = redis.asyncio.ConnectionPool.from_url(
            details["url"], **{"max_connections": MAX_CONNECTIONS, **options}
        )
        client = redis.asyncio.Redis(connection_pool=pool)
        client.auto_close_connection_pool = True
        return client
    except (ValueError, TypeError, redis.exceptions.RedisClusterException) as exc:
        raise ConfigError(f"invalid Redis URL {shown!r}: {exc}") from None


#: redis-py errors after which an idempotent read may be sent again.
RETRYABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
)


def closed_under_us(exc: BaseException) -> bool:
    """Whether ``exc`` is redis-py using a connection that another task closed meanwhile. Its
    cluster client closes every connection when it meets a cluster that is down, including
    ones in flight, which then fail with ``'NoneType' object has no attribute ...`` (redis-py)
    or ``unable to perform operation on <TCPTransport closed=True ...>; the handler is
    closed`` (asyncio)."""
    if isinstance(exc, RuntimeError):
        return "handler is closed" in str(exc)
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "redis" in tb.tb_frame.f_code.co_filename and "NoneType" in str(exc)


@contextlib.contextmanager
def translated(url: str, prefix: str, what: str, *, unknown_outcome: bool = False) -> Iterator[None]:
    """Raise redis-py's errors inside as :class:`StorageUnavailableError` (the server cannot
    be reached or refuses writes for now: the caller may try again) or :class:`StorageError`
    (anything else), naming the operation and the redacted URL."""
    note = " (the commit may or may not have applied)" if unknown_outcome else ""
    try:
        yield
    except StorageError:
        raise
    except (*RETRYABLE, redis.exceptions.SlotNotCoveredError, OSError) as exc:
        raise StorageUnavailableError(
            f"cannot reach Redis during {what}{note}: {type(exc).__name__}: {exc}", url
        ) from exc
    except (AttributeError, RuntimeError) as exc:
        if not closed_under_us(exc):
            raise
        raise StorageUnavailableError(
            f"the Redis connection closed during {what}{note} (the cluster client reconnecting)", url
        ) from exc
    except redis.exceptions.NoPermissionError as exc:
        raise StorageError(
            f"the Redis user may not run the {what} on keys under the prefix {prefix!r} "
            f"(its ACL allows other commands or keys): {exc}",
            url,
        ) from exc
    except redis.exceptions.RedisClusterException as exc:  # not a RedisError
        # "Redis Cluster cannot be connected": no node it knows answers.
        if "connect" in str(exc).lower():
            raise StorageUnavailableError(f"cannot reach Redis during {what}{note}: {exc}", url) from exc
        raise StorageError(f"Redis Cluster error during {what}: {exc}", url) from exc
    except redis.exceptions.RedisError as exc:
        # A demoted primary (a failover under way), a full one, or one short of the replicas
        # min-replicas-to-write asks for: the server's state, not the request's fault, so the
        # caller may try again later.
        refused = (redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError)
        if isinstance(exc, refused) or str(exc).startswith(("NOREPLICAS", "CLUSTERDOWN")):
            raise StorageUnavailableError(
                f"Redis refuses writes during {what}{note}: {type(exc).__name__}: {exc}", url
            ) from exc
        raise StorageError(f"Redis error during {what}: {type(exc).__name__}: {exc}", url) from exc


class Replicas:
    """``wait_replicas``: confirm that N replicas hold everything written so far to the
    primaries of some buckets. On each such primary it writes the bucket's marker and ``WAIT`` s
    for it on the same connection (replication is ordered, so a replica holding the marker holds
    all before it). A cluster client cannot pin two commands to one connection, so on a
    cluster it uses a plain client of the marker's node."""

    def __init__(self, client: Client, names: Names, n: int, timeout: float, url: str) -> None:
        self.client, self.names, self.n, self.timeout, self.url = client, names, n, timeout, url
        self._node_clients: dict[str, redis.asyncio.Redis] = {}

    def _node_client(self, marker: bytes) -> redis.asyncio.Redis:
        assert isinstance(self.client, redis.asyncio.cluster.RedisCluster)
        node = self.client.get_node_from_key(marker.decode("utf-8"))
        if node is None:
            raise redis.exceptions.ConnectionError("the cluster has no primary for the sync marker's slot")
        client = self._node_clients.get(node.name)
        if client is None:
            kwargs = node.connection_kwargs
            pool = redis.asyncio.ConnectionPool(connection_class=node.connection_class, **kwargs)
            client = self._node_clients[node.name] = redis.asyncio.Redis(connection_pool=pool)
        return client

    async def _one(self, client: redis.asyncio.Redis, marker: bytes) -> int:
        pipe = client.pipeline(transaction=False)
        pipe.incr(marker)
        pipe.execute_command("WAIT", self.n, max(1, round(self.timeout * 1000)))
        try:
            _, acked = await pipe.execute()
        except redis.exceptions.ResponseError as exc:
            if isinstance(self.client, redis.asyncio.cluster.RedisCluster) and str(exc).startswith("MOVED"):
                # The slot has a new primary (a failover): learn the layout next time.
                self.client._initialize = True
                raise redis.exceptions.ConnectionError(f"the marker's slot moved: {exc}") from exc
            raise
        return int(acked)

    async def confirm(self, what: str, unconfirmed: str, buckets: Iterable[int]) -> None:
        """Return once N replicas of the primaries of ``buckets`` (any one bucket for a single
        server) hold everything written before; :class:`StorageUnavailableError` naming
        ``unconfirmed`` if they do not within the timeout. Nothing to do when N is 0."""
        if not self.n:
            return
        targets: dict[int, tuple[redis.asyncio.Redis, bytes]] = {}
        for bucket in sorted(set(buckets)) or [0]:
            marker = self.names.sync(bucket)
            if isinstance(self.client, redis.asyncio.cluster.RedisCluster):
                client = self._node_client(marker)
                targets.setdefault(id(client), (client, marker))
            else:
                targets[0] = (self.client, marker)
                break
        acks = await asyncio.gather(*(self._one(c, m) for c, m in targets.values()))
        if min(acks) < self.n:
            raise StorageUnavailableError(
                f"only {min(acks)} of the {self.n} replicas (wait_replicas) confirmed "
                f"the {what} within {self.timeout:g} s: {unconfirmed}",
                self.url,
            )

    async def close(self) -> None:
        for client in self._node_clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()
