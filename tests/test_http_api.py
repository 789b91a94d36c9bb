"""The HTTP layer in-process: FastAPI's TestClient over a LocalBackend. No Ray, no sockets."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from actorflow import workflow
from actorflow.engine import WorkflowRuntime
from actorflow.serve.api import ApiSettings, create_api, encode_result
from actorflow.serve.backend import LocalBackend, load_modules
from actorflow.storage import Batch

TOKEN = "s3cret-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@workflow.virtual_actor(name="MetricsProbe")
class MetricsProbe:
    """Called by test_metrics_count_calls only, so its counts are that test's alone."""

    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n

    def explode(self) -> None:
        raise KeyError("boom")


@workflow.virtual_actor(name="HttpCounter")
class HttpCounter:
    limit = 10  # a class attribute, not a method: never callable

    def __init__(self, start: int = 0) -> None:
        self.count = start

    def incr(self, by: int = 1) -> int:
        self.count += by
        return self.count

    def explode(self) -> None:
        self.count = -1
        raise KeyError("secret internals")

    def _private(self) -> str:
        return "hidden"

    def opaque(self) -> object:
        return object()

    @workflow.virtual_actor.readonly
    def value(self) -> int:
        return self.count


@workflow.virtual_actor(name="HttpStrict", activate=False)
class HttpStrict:
    def ping(self) -> str:
        return "pong"


@workflow.virtual_actor(name="HttpNeedy")
class HttpNeedy:
    def __init__(self, owner: str) -> None:
        self.owner = owner

    def whose(self) -> str:
        return self.owner


@pytest.fixture
def rt(tmp_path: pathlib.Path) -> Iterator[WorkflowRuntime]:
    runtime = WorkflowRuntime(f"sqlite://{tmp_path}/http.db")
    try:
        yield runtime
    finally:
        runtime.close()


@pytest.fixture
def client(rt: WorkflowRuntime) -> TestClient:
    load_modules(["examples.bank"])
    app = create_api(LocalBackend(rt), ApiSettings(token=TOKEN, max_body=4096))
    return TestClient(app, headers=AUTH)


def test_healthz_needs_no_token_and_everything_else_does(client: TestClient) -> None:
    assert client.get("/healthz", headers={"authorization": ""}).json() == {"status": "ok"}
    # The static docs page is public too (tests/test_openapi.py); the document it loads is not.
    assert client.get("/docs", headers={"authorization": ""}).status_code == 200
    for method, path in [
        ("get", "/v1/actors/HttpCounter"),
        ("post", "/v1/actors/HttpCounter/a/incr"),
        ("get", "/openapi.json"),
        ("get", "/docs/oauth2-redirect"),
        ("get", "/metrics"),
        ("get", "/v1/workflows"),
        ("get", "/nowhere"),
    ]:
        for headers in ({"authorization": ""}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            r = client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers)
            assert r.json()["error"] == "unauthorized"
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200
    assert "/v1/actors/{type_name}/{actor_id}/{method}" in client.get("/openapi.json").json()["paths"]


def test_create_call_describe_list_delete(client: TestClient) -> None:
    r = client.post("/v1/actors/HttpCounter/c1", json={"args": [5]})
    assert (r.status_code, r.json()["created"]) == (201, True)
    r = client.post("/v1/actors/HttpCounter/c1", json={"args": [99]})
    assert (r.status_code, r.json()["created"]) == (200, False)
    assert client.post("/v1/actors/HttpCounter/c1/incr", json={"kwargs": {"by": 2}}).json() == {"result": 7}
    assert client.post("/v1/actors/HttpCounter/c1/incr").json() == {"result": 8}  # empty body: no args
    assert client.post("/v1/actors/HttpCounter/c1/value", json={}).json() == {"result": 8}
    desc = client.get("/v1/actors/HttpCounter/c1").json()
    assert desc["state"] == {"count": 8} and desc["version"] == 3 and desc["encoding"] == "json"
    for i in range(3):
        client.post(f"/v1/actors/HttpCounter/p{i}")
    page = client.get("/v1/actors/HttpCounter", params={"limit": 2}).json()
    assert page == {"ids": ["c1", "p0"], "next": "p0"}
    page = client.get("/v1/actors/HttpCounter", params={"limit": 2, "start_after": "p0"}).json()
    assert page == {"ids": ["p1", "p2"], "next": "p2"}
    assert client.get("/v1/actors/HttpCounter", params={"start_after": "p2"}).json() == {
        "ids": [],
        "next": None,
    }
    assert client.get("/v1/actors/HttpCounter", params={"limit": 5000}).status_code == 400
    assert client.delete("/v1/actors/HttpCounter/c1").status_code == 204
    assert client.delete("/v1/actors/HttpCounter/c1").status_code == 204
    r = client.get("/v1/actors/HttpCounter/c1")
    assert r.status_code == 404 and r.json()["error"] == "actor_not_found"


def test_calls_skip_fastapi_routing_and_answer_the_same(rt: WorkflowRuntime, tmp_path: pathlib.Path) -> None:
    """Calls are answered before FastAPI's routing; every answer, error or not, must be the one
    the route gives, with the same effect."""
    other = WorkflowRuntime(f"sqlite://{tmp_path}/routed.db")
    try:
        _compare_direct_and_routed(LocalBackend(rt), LocalBackend(other))
    finally:
        other.close()


def _compare_direct_and_routed(backend: LocalBackend, other: LocalBackend) -> None:
    settings = ApiSettings(token=TOKEN, max_body=4096)
    routes_seen: list[bool] = []

    def recording(b: LocalBackend) -> Any:
        async def call(
            t: str, i: str, m: str, args: list[Any], kwargs: dict[str, Any], key: Any, request: Any
        ) -> Any:
            routes_seen.append("endpoint" in request.scope)  # set by FastAPI's routing only
            if m == "teapot":  # a call override may answer with FastAPI's own exceptions
                raise HTTPException(418, "short and stout", headers={"x-why": "tea"})
            return await b.call(t, i, m, args, kwargs, key, encode=encode_result)

        return call

    direct = TestClient(create_api(backend, settings, call=recording(backend)), headers=AUTH)
    routed = TestClient(create_api(other, settings, call=recording(other), direct_calls=False), headers=AUTH)
    for c in (direct, routed):
        c.post("/v1/actors/HttpCounter/d1", json={"args": [1]})
    calls = [
        ("/v1/actors/HttpCounter/d1/incr", b'{"args": [4]}', {}),
        ("/v1/actors/HttpCounter/d1/incr", b'{"kwargs": {"by": 2}}', {}),
        ("/v1/actors/HttpCounter/d1/incr", b'{"args": [1]}', {"Idempotency-Key": "k1"}),
        ("/v1/actors/HttpCounter/d1/incr", b'{"args": [1]}', {"Idempotency-Key": "k1"}),  # replayed
        ("/v1/actors/HttpCounter/d1/incr", b'{"args": [2]}', {"Idempotency-Key": "k1"}),  # reused
        ("/v1/actors/HttpCounter/d1/incr", b'{"args": [1]}', {"Idempotency-Key": "x" * 300}),
        ("/v1/actors/HttpCounter/d1/incr", b"", {}),
        ("/v1/actors/HttpCounter/d1/incr", b"   ", {}),
        ("/v1/actors/HttpCounter/d1/value", b'{"args": []}', {}),
        ("/v1/actors/HttpCounter/d1/incr", b'{"args": [1', {}),
        ("/v1/actors/HttpCounter/d1/incr", b'{"args": [NaN]}', {}),
        ("/v1/actors/HttpCounter/d1/incr", b'{"argz": []}', {}),
        ("/v1/actors/HttpCounter/d1/incr", b"[1]", {}),
        ("/v1/actors/HttpCounter/d1/incr", b'{"args": [1, 2, 3]}', {}),
        ("/v1/actors/HttpCounter/d1/incr", b'{"args": [1]}', {"content-type": "text/plain"}),
        ("/v1/actors/HttpCounter/d1/explode", b"", {}),
        ("/v1/actors/HttpCounter/d1/opaque", b"", {}),
        ("/v1/actors/HttpCounter/d1/_private", b"", {}),
        ("/v1/actors/HttpCounter/nobody/incr", b"", {}),
        ("/v1/actors/NoSuchType/d1/incr", b"", {}),
        ("/v1/actors/HttpCounter/d1/%20", b"", {}),
        ("/v1/actors/HttpCounter/d1/teapot", b"", {}),
        ("/v1/actors/HttpCounter/d1/incr?args=[5]", b"", {}),  # a query is not read
    ]
    for path, content, headers in calls:
        headers = {"content-type": "application/json", **headers}
        a = direct.post(path, content=content, headers=headers)
        b = routed.post(path, content=content, headers=headers)
        assert (a.status_code, a.headers, a.content) == (b.status_code, b.headers, b.content), (path, content)
    assert routes_seen[0::2] == [False] * (len(routes_seen) // 2)  # the direct app never routed
    assert routes_seen[1::2] == [True] * (len(routes_seen) // 2)
    # The same effects behind both.
    assert direct.post("/v1/actors/HttpCounter/d1/value").json() == {"result": 11}
    assert routed.post("/v1/actors/HttpCounter/d1/value").json() == {"result": 11}
    # Paths the route would not take are left to FastAPI (404 / 405).
    assert direct.post("/v1/actors/HttpCounter/d1/incr/extra").status_code == 404
    empty_id = "/v1/actors/HttpCounter//incr"
    assert direct.post(empty_id).status_code == routed.post(empty_id).status_code == 404


def test_idempotency_key_gives_one_effect_and_the_same_response(client: TestClient) -> None:
    client.post("/v1/actors/HttpCounter/idem")
    headers = {"Idempotency-Key": "order-77"}
    first = client.post("/v1/actors/HttpCounter/idem/incr", json={"args": [10]}, headers=headers)
    again = client.post("/v1/actors/HttpCounter/idem/incr", json={"args": [10]}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.content == again.content == b'{"result":10}'
    assert client.post("/v1/actors/HttpCounter/idem/value").json() == {"result": 10}
    assert (
        client.post("/v1/actors/HttpCounter/idem/incr", headers={"Idempotency-Key": "x" * 300}).status_code
        == 400
    )


def test_not_found_statuses(client: TestClient) -> None:
    client.post("/v1/actors/HttpCounter/nf")
    cases = {
        "/v1/actors/NoSuchType/nf/incr": "unknown_actor_type",
        "/v1/actors/HttpStrict/missing/ping": "actor_not_found",
        "/v1/actors/HttpCounter/nf/nosuch": "unknown_method",
        "/v1/actors/HttpCounter/nf/_private": "unknown_method",
        "/v1/actors/HttpCounter/nf/limit": "unknown_method",
        "/v1/actors/HttpCounter/nf/__init__": "unknown_method",
    }
    for path, code in cases.items():
        r = client.post(path)
        assert (r.status_code, r.json()["error"]) == (404, code), path
    assert client.get("/v1/actors/NoSuchType").status_code == 404
    assert client.post("/v1/actors/NoSuchType/x").status_code == 404


def test_a_call_activates_an_actor_that_was_never_created(client: TestClient) -> None:
    """As in Orleans, Dapr and Restate: the first call on an id creates the actor (``__init__``
    with no arguments) and runs the method, in one commit."""
    assert client.get("/v1/actors/HttpCounter").json()["ids"] == []
    r = client.post("/v1/actors/HttpCounter/fresh/value")  # read-only: the initial state, nothing stored
    assert r.json() == {"result": 0}
    assert client.get("/v1/actors/HttpCounter/fresh").status_code == 404
    r = client.post(
        "/v1/actors/HttpCounter/fresh/incr", json={"args": [2]}, headers={"Idempotency-Key": "i1"}
    )
    assert (r.status_code, r.json()) == (200, {"result": 2})
    again = client.post(
        "/v1/actors/HttpCounter/fresh/incr", json={"args": [2]}, headers={"Idempotency-Key": "i1"}
    )
    assert again.json() == {"result": 2}  # replayed from the record the activating turn wrote
    assert client.get("/v1/actors/HttpCounter").json()["ids"] == ["fresh"]
    assert client.get("/v1/actors/HttpCounter/fresh").json()["state"] == {"count": 2}
    # A deleted actor stays gone until it is created again: a late retry cannot revive it.
    assert client.delete("/v1/actors/HttpCounter/fresh").status_code == 204
    r = client.post("/v1/actors/HttpCounter/fresh/incr")
    assert r.status_code == 404 and "was deleted; create it again" in r.json()["message"]
    # Without arguments __init__ cannot run, and a class may opt out: the 404 says what to do.
    r = client.post("/v1/actors/HttpNeedy/n1/whose")
    assert r.status_code == 404 and "HttpNeedy.__init__ needs owner: create it first" in r.json()["message"]
    r = client.post("/v1/actors/HttpStrict/s1/ping")
    assert r.status_code == 404 and "activate=False" in r.json()["message"]
    assert client.post("/v1/actors/HttpNeedy/n1", json={"args": ["ann"]}).status_code in (200, 201)
    assert client.post("/v1/actors/HttpNeedy/n1/whose").json() == {"result": "ann"}


def test_declared_errors_must_be_exception_classes_with_client_statuses() -> None:
    from actorflow.errors import ConfigError

    for errors in (
        {KeyError: 500},
        {KeyError: 399},
        {KeyError: True},
        {"KeyError": 409},
        {BaseException: 409},
    ):
        with pytest.raises(ConfigError, match="virtual actor Bad"):

            @workflow.virtual_actor(name="Bad", errors=errors)  # type: ignore[arg-type]
            class Bad:
                pass


def test_bad_input_statuses_change_nothing(client: TestClient) -> None:
    client.post("/v1/actors/HttpCounter/bad", json={"args": [1]})
    version = client.get("/v1/actors/HttpCounter/bad").json()["version"]
    r = client.post("/v1/actors/HttpCounter/bad/incr", json={"args": [1, 2, 3]})
    assert r.status_code == 422 and r.json()["error"] == "invalid_arguments"
    assert "incr" in r.json()["message"]
    r = client.post("/v1/actors/HttpCounter/bad/incr", json={"kwargs": {"nope": 1}})
    assert r.status_code == 422
    assert client.post("/v1/actors/HttpCounter/bad2", json={"args": [1, 2]}).status_code == 422
    r = client.post(
        "/v1/actors/HttpCounter/bad/incr", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "JSON" in r.json()["message"]
    for body in ([1, 2], {"args": {}}, {"kwargs": []}, {"argz": []}):
        assert client.post("/v1/actors/HttpCounter/bad/incr", json=body).status_code == 400, body
    r = client.post(
        "/v1/actors/HttpCounter/bad/incr", content=b"by=1", headers={"content-type": "text/plain"}
    )
    assert r.status_code == 415
    r = client.post(
        "/v1/actors/HttpCounter/bad/incr",
        content=b"\x80\x04pickle",
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == 415
    for bad_id in ("a b", "x" * 257, "a*b", "%2E%2E"):
        r = client.post(f"/v1/actors/HttpCounter/{bad_id}")
        assert (r.status_code, r.json()["error"]) == (400, "invalid_id"), bad_id
    for dots in (".", ".."):  # the URL layer folds these away before any route sees them
        assert client.post(f"/v1/actors/HttpCounter/{dots}").status_code in (400, 404, 405)
    assert client.get("/v1/actors/HttpCounter").json()["ids"] == ["bad"]
    assert client.get("/v1/actors/HttpCounter/bad").json()["version"] == version
    assert client.get("/v1/actors/HttpCounter", params={"limit": "x"}).status_code == 422


def test_body_over_the_limit_gets_413(client: TestClient) -> None:
    client.post("/v1/actors/HttpCounter/big")
    huge = json.dumps({"args": ["x" * 5000]})
    r = client.post(
        "/v1/actors/HttpCounter/big/incr", content=huge, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(10):
            yield b" " * 1000

    r = client.post(
        "/v1/actors/HttpCounter/big/incr", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert client.get("/v1/actors/HttpCounter/big").json()["version"] == 1


def test_method_that_raises_gives_json_error_without_traceback(client: TestClient) -> None:
    client.post("/v1/actors/HttpCounter/boom", json={"args": [3]})
    r = client.post("/v1/actors/HttpCounter/boom/explode")
    assert r.status_code == 500
    body = r.json()
    assert body["error"] == "method_raised" and body["type"] == "KeyError"
    assert "secret internals" in body["message"]
    assert "Traceback" not in r.text and "File " not in r.text
    assert client.get("/v1/actors/HttpCounter/boom").json()["state"] == {"count": 3}
    r = client.post("/v1/actors/HttpCounter/boom/opaque")  # ran, but its result cannot be sent
    assert r.status_code == 500 and r.json()["error"] == "unencodable_result"


def test_bank_example_over_http(client: TestClient) -> None:
    client.post("/v1/actors/Account/alice", json={"kwargs": {"owner": "Alice", "balance": 100}})
    assert client.post("/v1/actors/Account/alice/withdraw", json={"args": [30]}).json() == {"result": 70}
    r = client.post("/v1/actors/Account/alice/withdraw", json={"args": [1000]})
    assert r.status_code == 409  # declared by the class: the caller's fault
    body = r.json()
    assert (body["error"], body["type"], body["builtin"]) == (
        "method_raised",
        "InsufficientFunds",
        "ValueError",
    )
    assert client.post("/v1/actors/Account/alice/get_balance").json() == {"result": 70}  # unchanged
    assert client.post("/v1/actors/HttpCounter/boom/explode").status_code == 500  # undeclared: a fault
    assert client.post("/v1/actors/Account/alice/get_balance").json() == {"result": 70}


def test_workflow_routes(client: TestClient, rt: WorkflowRuntime) -> None:
    @workflow.step
    def noop() -> int:
        return 1

    # Store a workflow without running it (running needs Ray): it reads RUNNING, its lease
    # being held by this live process.
    prepared = rt.engine.prepare(noop.step(), "wf-http", {"k": "v"})
    assert rt.blocking(rt.storage.commit(prepared.batch))
    listed = client.get("/v1/workflows").json()
    assert listed == {"workflows": [{"id": "wf-http", "status": "RUNNING"}], "next": None}
    assert client.get("/v1/workflows", params={"status": "FAILED"}).json() == {"workflows": [], "next": None}
    assert client.get("/v1/workflows", params={"status": "BOGUS"}).status_code == 400
    meta = client.get("/v1/workflows/wf-http").json()
    assert meta["status"] == "RUNNING" and meta["user_metadata"] == {"k": "v"}
    assert client.post("/v1/workflows/wf-http/resume").json() == {"id": "wf-http", "status": "RUNNING"}
    assert client.post("/v1/workflows/wf-http/cancel").json()["status"] == "CANCELED"
    assert client.get("/v1/workflows/wf-http").json()["status"] == "CANCELED"
    assert client.post("/v1/workflows/wf-http/resume").json()["status"] == "CANCELED"
    r = client.get("/v1/workflows/nope")
    assert r.status_code == 404 and r.json()["workflow_id"] == "nope"
    assert client.post("/v1/workflows/nope/cancel").status_code == 404
    assert client.get("/v1/workflows/bad id").status_code == 400
    assert Batch  # the storage API used above


def test_the_workflow_list_comes_in_bounded_pages(client: TestClient, rt: WorkflowRuntime) -> None:
    """Pages of at most ``limit`` ids looked at, in id order, narrowed by status and prefix;
    following ``next`` lists each workflow once; bad paging parameters are 400s."""

    @workflow.step
    def noop() -> int:
        return 1

    ids = [f"page-{i:02d}" for i in range(7)] + ["other-1"]
    for wid in ids:
        assert rt.blocking(rt.storage.commit(rt.engine.prepare(noop.step(), wid, None).batch))
    assert client.post("/v1/workflows/page-03/cancel").status_code == 200

    def every(**params: Any) -> tuple[list[str], int]:
        seen, pages = [], 0
        while True:
            got = client.get("/v1/workflows", params=params)
            assert got.status_code == 200, got.text
            pages += 1
            seen += [w["id"] for w in got.json()["workflows"]]
            if got.json()["next"] is None:
                return seen, pages
            params["start_after"] = got.json()["next"]

    assert every(limit=3) == (sorted(ids), 3)
    assert every(limit=3, prefix="page-") == ([i for i in sorted(ids) if i.startswith("page-")], 3)
    # Pages may come back empty; a full last page cannot know it is the last (a fifth, empty).
    assert every(limit=2, status="CANCELED") == (["page-03"], 5)
    assert every(status="CANCELED", prefix="other") == ([], 1)
    for bad in ({"limit": 0}, {"limit": 1001}, {"limit": "many"}, {"start_after": "bad id"}):
        r = client.get("/v1/workflows", params=bad)
        assert r.status_code in (400, 422) and "workflows" not in r.json(), (bad, r.text)


def test_actor_types_are_listed_with_their_counts(client: TestClient) -> None:
    for actor_id in ("a", "b", "c"):
        client.post(f"/v1/actors/HttpCounter/{actor_id}")
    client.post("/v1/actors/Account/alice")
    client.delete("/v1/actors/HttpCounter/b")  # deleted: not counted
    assert client.get("/v1/actors", headers={"authorization": ""}).status_code == 401
    listing = client.get("/v1/actors").json()["types"]
    assert [t["type"] for t in listing] == sorted(t["type"] for t in listing)  # every registered type
    found = {t["type"]: t for t in listing}
    assert found["HttpCounter"] == {"type": "HttpCounter", "count": 2, "more": False}
    assert found["Account"] == {"type": "Account", "count": 1, "more": False}
    assert found["HttpStrict"] == {"type": "HttpStrict", "count": 0, "more": False}


def test_workflow_steps_name_the_steps_they_take_from(client: TestClient, rt: WorkflowRuntime) -> None:
    @workflow.step
    def source(n: int) -> int:
        return n

    @workflow.step
    def total(a: int, b: int, more: list[int]) -> int:
        return a + b + sum(more)

    first, second = source.step(1), source.step(2)
    prepared = rt.engine.prepare(total.step(first, second, more=[first]), "wf-deps", {})
    assert rt.blocking(rt.storage.commit(prepared.batch))
    steps = client.get("/v1/workflows/wf-deps").json()["steps"]
    assert [s["status"] for s in steps] == ["PENDING"] * 3
    *sources, last = steps
    assert [s["deps"] for s in sources] == [[], []]
    assert last["deps"] == [s["step_id"] for s in sources]  # each once, in argument order


def test_steps_added_as_a_workflow_ran_have_no_recorded_deps() -> None:
    from actorflow import testing

    @workflow.step
    def one() -> int:
        return 1

    @workflow.step
    def plus(x: int) -> int:
        return x + 1

    @workflow.step
    def grow() -> Any:
        return plus.step(one.step())  # a continuation: its steps are stored as they are made

    with testing.Environment() as env:
        assert workflow.run(grow.step(), workflow_id="wf-grown") == 2
        steps = env.http().get("/v1/workflows/wf-grown").json()["steps"]
    assert [s["status"] for s in steps] == ["SUCCESSFUL"] * 3
    assert [s["deps"] for s in steps] == [[], None, None]  # the planned step, then the added ones


def test_metrics_count_calls(client: TestClient) -> None:
    """``/metrics`` through the API, parsed as Prometheus reads it: calls by type, method and
    status. (In a session with Ray up the figures come from Ray's agent, a few seconds late:
    the test waits for them, on a type no other test calls.)"""
    from prometheus_client.parser import text_string_to_metric_families

    def calls() -> dict[tuple[str, str], float]:
        r = client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return {
            (s.labels["method"], s.labels["status"]): s.value
            for family in text_string_to_metric_families(r.text)
            for s in family.samples
            if s.name == "actorflow_calls_total" and s.labels["type"] == "MetricsProbe"
        }

    client.post("/v1/actors/MetricsProbe/m/incr")
    client.post("/v1/actors/MetricsProbe/m/incr")
    assert client.post("/v1/actors/MetricsProbe/m/explode").status_code == 500
    wanted = {("incr", "ok"): 2.0, ("explode", "error"): 1.0}
    deadline = time.monotonic() + 30
    while (got := calls()) != wanted and time.monotonic() < deadline:
        time.sleep(0.5)
    assert got == wanted


def test_timers_events_and_tick_routes(client: TestClient, rt: WorkflowRuntime) -> None:
    import time

    load_modules(["examples.order"])
    client.post("/v1/actors/Order/o1", json={"kwargs": {"item": "book", "amount": 20}})
    r = client.put("/v1/actors/Order/o1/timers/reminder", json={"after": 3600, "method": "expire"})
    assert r.status_code == 200 and r.json()["method"] == "expire"
    assert client.get("/v1/actors/Order/o1/timers/reminder").json()["name"] == "reminder"
    assert set(client.get("/v1/actors/Order/o1/timers").json()["timers"]) == {"reminder"}
    assert "reminder" in client.get("/v1/actors/Order/o1").json()["timers"]
    assert client.delete("/v1/actors/Order/o1/timers/reminder").status_code == 204
    assert client.get("/v1/actors/Order/o1/timers/reminder").status_code == 404
    for bad in (
        {"method": "expire"},
        {"after": -1, "method": "expire"},
        {"after": "x", "method": "expire"},
        {"every": 0.001, "method": "expire"},
        {"after": 1},
        {"after": 1, "method": "nosuch"},
        {"after": 1, "method": "expire", "bogus": 1},
    ):
        r = client.put("/v1/actors/Order/o1/timers/bad", json=bad)
        assert r.status_code in (400, 404, 422), bad
    assert client.get("/v1/actors/Order/o1/timers").json()["timers"] == {}
    assert (
        client.put("/v1/actors/Order/nobody/timers/t", json={"after": 1, "method": "expire"}).status_code
        == 404
    )

    client.post("/v1/actors/Order/o1/place", json={"kwargs": {"pay_within": 60}})
    r = client.post(
        "/v1/actors/Order/o1/events/payment?wait=true",
        json={"amount": 20},
        headers={"Idempotency-Key": "pay-1"},
    )
    assert r.status_code == 200 and r.json() == {"result": "paid"}
    r = client.post(
        "/v1/actors/Order/o1/events/payment?wait=true",
        json={"amount": 20},
        headers={"Idempotency-Key": "pay-1"},
    )
    assert r.json() == {"result": "paid"}  # the same event id: handled once
    assert len(client.post("/v1/actors/Order/o1/info").json()["result"]["payments"]) == 1
    assert client.get("/v1/actors/Order/o1/timers").json()["timers"] == {}  # paid: timer cancelled
    r = client.post("/v1/actors/Order/o1/events/refund", json={})
    assert r.status_code == 404 and r.json()["error"] == "unknown_event"
    assert client.post("/v1/actors/Order/ghost/events/payment", json={"amount": 1}).status_code == 404
    r = client.post(
        "/v1/actors/Order/o1/events/payment", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    r = client.post("/v1/actors/Order/o1/events/payment", json={"amount": 5})
    assert r.status_code == 202 and r.json()["accepted"] is True

    client.post("/v1/actors/Order/o2", json={"kwargs": {"item": "pen", "amount": 2}})
    client.post("/v1/actors/Order/o2/place", json={"kwargs": {"pay_within": 0}})
    deadline = time.monotonic() + 10
    while client.post("/v1/actors/Order/o2/info").json()["result"]["state"] != "cancelled":
        client.post("/v1/timers/tick")  # an external clock may drive the scheduler too
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert set(client.post("/v1/timers/tick").json()) == {"fired", "retried", "failed", "skipped"}


def test_workflow_event_route(client: TestClient, rt: WorkflowRuntime) -> None:
    @workflow.step
    def noop() -> int:
        return 1

    prepared = rt.engine.prepare(noop.step(), "wf-ev", None)
    assert rt.blocking(rt.storage.commit(prepared.batch))
    r = client.post("/v1/workflows/wf-ev/events/approval", json={"by": "ann"})
    assert r.status_code == 202 and r.json() == {"accepted": True, "duplicate": False}
    assert client.post("/v1/workflows/wf-ev/events/approval", json={"by": "bob"}).json()["duplicate"] is True
    assert client.post("/v1/workflows/nope/events/approval", json={}).status_code == 404
    assert client.post("/v1/workflows/wf-ev/events/bad key", json={}).status_code == 400


def test_conflict_and_unavailable_statuses(rt: WorkflowRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    from actorflow.errors import ActorConflictError, StorageUnavailableError

    load_modules(["examples.bank"])
    backend = LocalBackend(rt)
    client = TestClient(create_api(backend, ApiSettings()))
    client.post("/v1/actors/HttpCounter/busy")
    raised: list[BaseException] = [
        ActorConflictError("HttpCounter", "busy", "gave up after 200 conflicting commits"),
        StorageUnavailableError("cannot reach redis", "redis://db:6379/0"),
    ]

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise raised.pop(0)

    monkeypatch.setattr(backend, "call", failing)
    r = client.post("/v1/actors/HttpCounter/busy/incr")
    assert (r.status_code, r.json()["error"]) == (409, "conflict")
    r = client.post("/v1/actors/HttpCounter/busy/incr")
    assert (r.status_code, r.json()["error"]) == (503, "storage_unavailable")
    assert "redis://db:6379/0" in r.json()["message"]
