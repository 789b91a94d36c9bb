"""A lean HTTP/1.1 load generator for the HTTP benchmarks.

Written on sockets rather than with an HTTP client library: at a few thousand requests a
second an HTTP client in Python spends more CPU than the server it measures, and on a 2-core
machine that CPU is taken from the server. Each connection is kept alive and sends its next
request when the answer to the last one has arrived. Requests are prepared as bytes up front
(one per actor), so a connection does nothing per request but write, and read the head and the
body the head announces.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Request:
    """One request, pre-rendered: ``method path``, headers, body."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def render(self, host: str) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"host: {host}"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        if self.body or self.method in ("POST", "PUT"):
            lines.append(f"content-length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


class _Connection:
    """One keep-alive connection that opens itself again when the server closed it (HAProxy
    closes idle connections when it reloads its configuration)."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname, parts.port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, data: bytes) -> tuple[int, dict[bytes, bytes]]:
        """Status and headers of the answer to one request (sent again on a new connection if
        the old one was closed before any answer came)."""
        for attempt in range(3):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None
            try:
                self.writer.write(data)
                head = await self.reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                self.close()
                if attempt == 2:
                    raise
                continue
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length", b"0"))
            if length:
                await self.reader.readexactly(length)
            return int(head[9:12]), headers
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _connection(
    base: str, requests: list[bytes], start: int, step: int, until: float
) -> tuple[int, int]:
    conn = _Connection(base)
    done = errors = 0
    i = start
    try:
        while time.perf_counter() < until:
            status, _ = await conn.send(requests[i % len(requests)])
            if status >= 400:
                errors += 1
            done += 1
            i += step
    finally:
        conn.close()
    return done, errors


def _prefix(base: str) -> str:
    return urlsplit(base).path.rstrip("/")


def rendered(base: str, requests: list[Request]) -> list[bytes]:
    parts = urlsplit(base)
    host = f"{parts.hostname}:{parts.port}"
    prefix = _prefix(base)
    return [Request(r.method, prefix + r.path, r.headers, r.body).render(host) for r in requests]


def latencies(base: str, requests: list[Request], n: int) -> list[float]:
    """Seconds per request for one client sending ``n`` requests one after another."""

    async def go() -> list[float]:
        times: list[float] = []
        data = rendered(base, requests)
        conn = _Connection(base)
        try:
            for i in range(n):
                began = time.perf_counter()
                status, _ = await conn.send(data[i % len(data)])
                times.append(time.perf_counter() - began)
                if status >= 400:
                    raise RuntimeError(f"HTTP {status} for {requests[i % len(requests)]}")
        finally:
            conn.close()
        return times

    return asyncio.run(go())


def _worker(
    base: str, data: list[bytes], first: int, count: int, step: int, seconds: float, out: object
) -> None:
    async def go() -> tuple[int, int]:
        until = time.perf_counter() + seconds
        results = await asyncio.gather(
            *(_connection(base, data, first + c, step, until) for c in range(count))
        )
        return sum(d for d, _ in results), sum(e for _, e in results)

    out.put(asyncio.run(go()))  # type: ignore[attr-defined]


def throughput(
    base: str, requests: list[Request], connections: int, seconds: float, processes: int = 2
) -> float:
    """Requests per second answered with 2xx by ``connections`` keep-alive connections, spread
    over ``processes`` client processes, each connection walking its own share of
    ``requests``. Raises if any request failed."""
    data = rendered(base, requests)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    per = [connections // processes + (1 if p < connections % processes else 0) for p in range(processes)]
    procs = []
    first = 0
    for count in per:
        procs.append(ctx.Process(target=_worker, args=(base, data, first, count, connections, seconds, out)))
        first += count
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    done, errors = sum(r[0] for r in results), sum(r[1] for r in results)
    if errors:
        raise RuntimeError(f"{errors} of {done} requests failed")
    return done / seconds  # every connection sends for exactly ``seconds``


def replicas_seen(base: str, requests: list[Request], n: int) -> set[bytes]:
    """The ``x-actorflow-replica`` names that answered ``n`` requests (walking ``requests``)."""

    async def go() -> set[bytes]:
        data = rendered(base, requests)
        conn = _Connection(base)
        seen = set()
        try:
            for i in range(n):
                _, headers = await conn.send(data[i % len(data)])
                seen.add(headers.get(b"x-actorflow-replica", b""))
        finally:
            conn.close()
        return seen

    return asyncio.run(go())
