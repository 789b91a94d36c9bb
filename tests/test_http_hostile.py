"""Hostile and broken input over HTTP, in-process (FastAPI's TestClient over a LocalBackend).

Every request here is refused with a 4xx (or a 5xx that says the service, not the method,
failed) and must change nothing: the actor's version is the same afterwards and its state
still reads. Each test runs on SQLite and on Redis.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from actorflow import workflow
from actorflow.actor import actor_runtime, lookup
from actorflow.engine import WorkflowRuntime
from actorflow.serve.api import ApiSettings, create_api
from actorflow.serve.backend import LocalBackend, load_modules


@workflow.virtual_actor(name="Hostile")
class Hostile:
    def __init__(self, start: Any = 0) -> None:
        self.n = start
        self.events: list[Any] = []

    def incr(self, by: Any = 1) -> Any:
        self.n += by
        return self.n

    def infinite(self) -> float:
        self.n += 1
        return float("inf")  # computed from valid input, yet not JSON

    @staticmethod
    def helper(x: int) -> int:
        return x

    @classmethod
    def make(cls) -> str:
        return "made"

    @workflow.virtual_actor.event("note")
    def on_note(self, payload: Any) -> int:
        self.events.append(payload)
        return len(self.events)

    @workflow.virtual_actor.event("boom")
    def on_boom(self, payload: Any) -> None:
        self.events.append("should vanish")
        raise ValueError(f"cannot take {payload!r}")

    @workflow.virtual_actor.readonly
    def value(self) -> Any:
        return self.n


@pytest.fixture
def rt(storage_url: str) -> Iterator[WorkflowRuntime]:
    runtime = WorkflowRuntime(storage_url)  # on each backend
    try:
        yield runtime
    finally:
        runtime.close()


@pytest.fixture
def client(rt: WorkflowRuntime) -> TestClient:
    load_modules(["examples.bank"])
    return TestClient(create_api(LocalBackend(rt), ApiSettings()))


JSON = {"content-type": "application/json"}
DEEP = "[" * 70 + "]" * 70
VERY_DEEP = "[" * 10_000 + "]" * 10_000  # past the parser's recursion limit
#: JSON texts Python's parser accepts and RFC 8259 does not, or that no client should send.
HOSTILE = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    '"\\ud800"',
    '{"\\udfff": 1}',
    DEEP,
    VERY_DEEP,
]


def version(client: TestClient, actor: str) -> int:
    r = client.get(f"/v1/actors/Hostile/{actor}")
    assert r.status_code == 200, r.text  # the state still reads
    return int(r.json()["version"])


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_json_anywhere_is_refused_and_changes_nothing(client: TestClient, value: str) -> None:
    assert client.post("/v1/actors/Hostile/h", json={"args": [1]}).status_code == 201
    before = version(client, "h")
    attempts = [
        ("/v1/actors/Hostile/h/incr", {"content": f'{{"args": [{value}]}}'}),
        ("/v1/actors/Hostile/h/incr", {"content": f'{{"kwargs": {{"by": {value}}}}}'}),
        ("/v1/actors/Hostile/h2", {"content": f'{{"args": [{value}]}}'}),
        ("/v1/actors/Hostile/h/events/note", {"content": value}),
        ("/v1/actors/Hostile/h/events/note?wait=true", {"content": f'{{"x": {value}}}'}),
    ]
    for path, how in attempts:
        r = client.post(path, headers=JSON, **how)
        assert r.status_code == 400 and r.json()["error"] == "bad_request", (path, how, r.text[:200])
    r = client.put(
        "/v1/actors/Hostile/h/timers/t", content=f'{{"after": 60, "method": "incr", "args": [{value}]}}'
    )
    assert r.status_code == 400, r.text
    assert version(client, "h") == before
    assert client.post("/v1/actors/Hostile/h/value").json() == {"result": 1}
    assert client.get("/v1/actors/Hostile/h2").status_code == 404
    assert client.get("/v1/actors/Hostile/h/timers").json()["timers"] == {}


def test_a_result_that_cannot_be_sent_commits_nothing(client: TestClient) -> None:
    client.post("/v1/actors/Hostile/inf")
    before = version(client, "inf")
    for headers in ({}, {"Idempotency-Key": "inf-1"}):
        r = client.post("/v1/actors/Hostile/inf/infinite", headers=headers)
        assert r.status_code == 500 and r.json()["error"] == "unencodable_result", r.text
    assert version(client, "inf") == before
    assert client.post("/v1/actors/Hostile/inf/value").json() == {"result": 0}
    # The refused keyed call was not recorded: the same key with a good call now applies.
    r = client.post("/v1/actors/Hostile/inf/incr", headers={"Idempotency-Key": "inf-1"})
    assert r.json() == {"result": 1}


def test_bank_refuses_an_infinite_balance_and_a_transfer_it_cannot_answer_moves_nothing(
    client: TestClient, rt: WorkflowRuntime
) -> None:
    r = client.post("/v1/actors/Account/inf", content='{"kwargs": {"balance": Infinity}}', headers=JSON)
    assert r.status_code == 400
    assert client.get("/v1/actors/Account/inf").status_code == 404
    # An account given an infinite balance in Python (embedded code is trusted): a transfer's
    # result is then not JSON, so over HTTP the transfer must not happen at all.
    account = lookup("Account")
    actors = actor_runtime(rt)
    actors.create(account, "rich", (), {"owner": "R", "balance": float("inf")})
    r = client.post("/v1/actors/Account/rich/transfer", json={"args": ["bob", 10**18]})
    assert r.status_code == 500 and r.json()["error"] == "unencodable_result"
    time.sleep(0.3)  # a message, had one been sent, would be delivered by now
    # (The example's get_or_create(to) makes the receiver at once, outside the turn.)
    assert client.post("/v1/actors/Account/bob/get_balance").json() == {"result": 0}
    assert actors.state(account, "rich").version == 1
    # Fixed and retried, it happens once.
    assert client.post("/v1/actors/Account/alice", json={"kwargs": {"balance": 100}}).status_code == 201
    r = client.post("/v1/actors/Account/alice/transfer", json={"args": ["bob", 30]})
    assert r.json() == {"result": 70}


def test_a_reused_idempotency_key_is_refused_and_changes_nothing(client: TestClient) -> None:
    client.post("/v1/actors/Hostile/k")
    first = client.post("/v1/actors/Hostile/k/incr", json={"args": [5]}, headers={"Idempotency-Key": "K"})
    assert first.json() == {"result": 5}
    before = version(client, "k")
    for path, body in (("/v1/actors/Hostile/k/incr", {"args": [6]}), ("/v1/actors/Hostile/k/value", {})):
        r = client.post(path, json=body, headers={"Idempotency-Key": "K"})
        if path.endswith("value"):  # read-only calls record nothing: there is nothing to reuse
            assert r.status_code == 200
            continue
        assert r.status_code == 422 and r.json()["error"] == "idempotency_key_reused", r.text
    r = client.post("/v1/actors/Hostile/k/infinite", headers={"Idempotency-Key": "K"})
    assert r.status_code == 422
    assert version(client, "k") == before
    again = client.post("/v1/actors/Hostile/k/incr", json={"args": [5]}, headers={"Idempotency-Key": "K"})
    assert again.json() == {"result": 5}  # the same call: replayed


def test_an_event_id_reused_with_another_payload_is_refused(client: TestClient) -> None:
    client.post("/v1/actors/Hostile/ev")
    key = {"Idempotency-Key": "ev-1"}
    assert client.post("/v1/actors/Hostile/ev/events/note?wait=true", json={"a": 1}, headers=key).json() == {
        "result": 1
    }
    r = client.post("/v1/actors/Hostile/ev/events/note", json={"a": 2}, headers=key)
    assert r.status_code == 422 and r.json()["error"] == "idempotency_key_reused"
    r = client.post("/v1/actors/Hostile/ev/events/note?wait=true", json={"a": 1}, headers=key)
    assert r.json() == {"result": 1}
    assert client.get("/v1/actors/Hostile/ev").json()["state"]["events"] == [{"a": 1}]


def test_bad_timer_specs_get_422_and_bad_ids_400(client: TestClient) -> None:
    client.post("/v1/actors/Hostile/t")
    for spec in (
        '{"after": 1' + "0" * 400 + ', "method": "incr"}',
        '{"at": 1' + "0" * 400 + ', "method": "incr"}',
        '{"every": 1' + "0" * 400 + ', "method": "incr"}',
        '{"after": 1e300, "method": "incr"}',
        '{"after": 10, "method": "incr", "kwargs": "by=1"}',
        '{"after": 10, "method": "incr", "kwargs": 5}',
        '{"after": 10, "method": "incr", "args": "1"}',
        '{"after": 10, "method": ["incr"]}',
        '{"after": 10, "method": {"name": "incr"}}',
        '{"after": true, "method": "incr"}',
    ):
        r = client.put("/v1/actors/Hostile/t/timers/x", content=spec, headers=JSON)
        assert r.status_code == 422, (spec[:60], r.status_code, r.text[:200])
        assert r.json()["error"] == "invalid_timer"
    for path in ("/v1/actors/Hostile/a*b/timers/x", "/v1/actors/Hostile/t/timers/b*d"):
        assert client.get(path).status_code == 400, path
        assert client.delete(path).status_code == 400, path
        r = client.put(path, json={"after": 10, "method": "incr"})
        assert r.status_code == 400, path
    assert client.get("/v1/actors/Hostile/a*b/timers").status_code == 400
    assert client.get("/v1/actors/Hostile/t/timers").json()["timers"] == {}
    assert version(client, "t") == 1


def test_only_instance_methods_are_callable(client: TestClient) -> None:
    client.post("/v1/actors/Hostile/s")
    for method, args in (("helper", [1]), ("make", [])):
        r = client.post(f"/v1/actors/Hostile/s/{method}", json={"args": args})
        assert r.status_code == 404 and r.json()["error"] == "unknown_method", method
    assert version(client, "s") == 1


def test_error_codes_say_whether_a_method_raised(client: TestClient, rt: WorkflowRuntime) -> None:
    r = client.post("/v1/actors/Account/neg", json={"kwargs": {"balance": -5}})
    assert r.status_code == 500 and r.json()["error"] == "method_raised"  # __init__ raised
    assert r.json()["builtin"] == "ValueError"
    backend = LocalBackend(rt)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the service broke before any method ran")

    backend.call = broken  # type: ignore[method-assign]
    r = TestClient(create_api(backend, ApiSettings())).post("/v1/actors/Hostile/x/incr")
    assert r.status_code == 500 and r.json()["error"] == "internal_error"


def test_a_failed_event_is_recorded_on_the_actor(client: TestClient) -> None:
    client.post("/v1/actors/Hostile/f")
    r = client.post("/v1/actors/Hostile/f/events/boom", json={"n": 1}, headers={"Idempotency-Key": "b1"})
    assert r.status_code == 202
    deadline = time.monotonic() + 10
    while not client.get("/v1/actors/Hostile/f").json()["failed_events"]:
        assert time.monotonic() < deadline, "the failure was never recorded"
        time.sleep(0.02)
    r = client.post("/v1/actors/Hostile/f/events/boom?wait=true", json={"n": 2})
    assert r.status_code == 500 and r.json()["error"] == "method_raised"
    described = client.get("/v1/actors/Hostile/f").json()
    failed = described["failed_events"]
    assert [f["event"] for f in failed] == ["boom", "boom"]
    assert failed[1]["event_id"] == "b1" and "cannot take {'n': 1}" in failed[1]["error"]
    assert described["state"]["events"] == [] and described["version"] == 1


def test_a_stalled_body_gets_408_and_frees_the_request(rt: WorkflowRuntime) -> None:
    """Content-Length says 100, 10 bytes arrive, then nothing: the edge answers 408 once the
    body timeout passes, instead of holding the request (and its slot) for good."""
    app = create_api(LocalBackend(rt), ApiSettings(body_timeout=0.3))
    sent: list[dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": b'{"args": [', "more_body": True}]

    async def receive() -> dict[str, Any]:
        if chunks:
            return chunks.pop()
        await asyncio.sleep(3600)  # the client never sends the rest
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/actors/Hostile/slow/incr",
        "raw_path": b"/v1/actors/Hostile/slow/incr",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    start = time.monotonic()
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=10))
    assert time.monotonic() - start < 5
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["error"] == "request_timeout"


@workflow.virtual_actor(name="HostileClock")
class Clock:
    def __init__(self) -> None:
        self.log: list[str] = []

    def arm(self) -> None:
        # Due well after the test has read it back, even on a loaded machine.
        workflow.timers.set("t", after=1.0, method="ring")

    def ring(self) -> str:
        self.log.append("ring")
        return "rang"

    def noop(self) -> str:
        return "noop"

    def refuse(self) -> None:
        from actorflow.errors import ActorError

        raise ActorError("HostileClock", None, "business rule: refused")

    @workflow.virtual_actor.event("ping")
    def on_ping(self, payload: Any) -> Any:
        self.log.append(payload)
        return payload


def test_a_client_key_cannot_stand_in_for_a_timer_tick(client: TestClient, rt: WorkflowRuntime) -> None:
    """Keys the runtime makes (``timer:{name}:{setting}:{due}``, ``event:...``) live apart from those
    clients choose, so a call keyed like a tick does not make the tick skip its method."""
    client.post("/v1/actors/HostileClock/c")
    client.post("/v1/actors/HostileClock/c/arm")
    due = client.get("/v1/actors/HostileClock/c/timers").json()["timers"]["t"]["due"]
    r = client.post("/v1/actors/HostileClock/c/noop", headers={"Idempotency-Key": f"timer:t:{due}"})
    assert r.json() == {"result": "noop"}
    deadline = time.monotonic() + 10
    while client.get("/v1/actors/HostileClock/c").json()["state"]["log"] != ["ring"]:
        assert time.monotonic() < deadline, "the tick never ran its method"
        time.sleep(0.05)


def test_an_actorflow_error_a_method_raises_is_the_methods_answer(client: TestClient) -> None:
    client.post("/v1/actors/HostileClock/r")
    for headers in ({}, {"Idempotency-Key": "r1"}):
        r = client.post("/v1/actors/HostileClock/r/refuse", headers=headers)
        assert r.status_code == 500 and r.json()["error"] == "method_raised", r.text
        assert r.json()["type"] == "ActorError"


def test_an_event_refused_before_it_is_stored_changes_nothing(
    client: TestClient, rt: WorkflowRuntime
) -> None:
    actors = actor_runtime(rt)
    client.post("/v1/actors/HostileClock/w")
    old = actors.config.idempotency_records
    actors.config.idempotency_records = 1
    try:
        assert client.post("/v1/actors/HostileClock/w/noop", headers={"Idempotency-Key": "k1"}).is_success
        rt.blocking(actors.turns.window.trim("HostileClock", "w"))  # as every 100th keyed commit does: full
        r = client.post("/v1/actors/HostileClock/w/events/ping?wait=true", json="refused?")
        assert r.status_code == 429 and r.headers["retry-after"], r.text
        r = client.post("/v1/actors/HostileClock/w/events/nosuch", json="x")
        assert r.status_code == 404
    finally:
        actors.config.idempotency_records = old
    actors.turns.window.forget_full()
    assert rt.blocking(actors.outbox.size()) == 0
    assert client.get("/v1/actors/HostileClock/w").json()["state"]["log"] == []
