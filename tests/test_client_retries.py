"""The Python client against a real (tiny) HTTP server that fails the way a dying replica does.

Serve's proxy answers ``500 text/plain "Internal Server Error"`` when the replica running a
request dies, and 502/503 while it has none; the client must tell those service failures from
the service's own answers, retry them for a keyed call, and never hand its caller a JSON
decoding error.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from _scripted import Script, scripted_server

from actorflow import workflow
from actorflow.client import HttpInvoker
from actorflow.errors import ActorNotFoundError, RemoteError


@workflow.virtual_actor(name="RetryTarget")
class Target:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    with scripted_server() as running:
        yield running


DEAD_REPLICA = (500, "text/plain; charset=utf-8", b"Internal Server Error")


def call(invoker: HttpInvoker, key: str | None) -> Any:
    ac = Target  # the decorated class is the VirtualActorClass
    return invoker.submit(ac, "t1", "incr", (), {}, key).result(timeout=30)  # type: ignore[arg-type]


def test_a_keyed_call_rides_through_a_dead_replica_and_gets_its_answer(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers += [DEAD_REPLICA, (502, "text/plain", b"Bad Gateway"), (503, "text/html", b"<h1>down")]
    script.answers.append((500, "application/json", b'{"error":"storage_unavailable","message":"x"}'))
    invoker = HttpInvoker(url, retry_timeout=20)
    try:
        assert call(invoker, "k-1") == 1
    finally:
        invoker.close()
    assert len(script.requests) == 5
    assert {headers.get("idempotency-key") for _, headers in script.requests} == {"k-1"}


def test_an_unkeyed_call_is_not_retried_and_fails_as_an_actorflow_error(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers.append(DEAD_REPLICA)
    invoker = HttpInvoker(url, retry_timeout=20)
    try:
        with pytest.raises(RemoteError, match="the service failed") as info:
            call(invoker, None)
    finally:
        invoker.close()
    assert info.value.status == 500 and len(script.requests) == 1


def test_answers_are_not_retried(server: tuple[str, Script]) -> None:
    url, script = server
    body = {"error": "actor_not_found", "message": "no actor RetryTarget/t1", "actor_type": "RetryTarget"}
    script.answers.append((404, "application/json", json.dumps(body).encode()))
    script.answers.append((500, "application/json", b'{"error":"method_raised","message":"no","type":"E"}'))
    invoker = HttpInvoker(url, retry_timeout=20)
    try:
        with pytest.raises(ActorNotFoundError):
            call(invoker, "k-2")
        with pytest.raises(Exception, match="no"):
            call(invoker, "k-3")
    finally:
        invoker.close()
    assert len(script.requests) == 2


def test_a_keyed_call_gives_up_when_the_retry_time_is_spent() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    invoker = HttpInvoker(f"http://127.0.0.1:{port}", retry_timeout=1.0)
    try:
        with pytest.raises(RemoteError, match="cannot reach"):
            call(invoker, "k-4")
    finally:
        invoker.close()
