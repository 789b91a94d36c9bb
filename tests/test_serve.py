"""Integration tests on one shared Ray Serve instance (2 ActorHost replicas, Redis storage)."""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _routing import owners, steady

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


BODY_TIMEOUT = 2.0


def deploy(storage: str, replicas: int) -> None:
    from ray import serve

    from actorflow.serve.app import APP_NAME, build

    serve.run(
        build(
            {
                "modules": ["serve_actors", "examples.bank", "examples.order"],
                "storage": storage,
                "actor_host_replicas": replicas,
                "body_timeout": BODY_TIMEOUT,
            }
        ),
        name=APP_NAME,
        route_prefix="/",
    )


@pytest.fixture(scope="module")
def service(redis_server: Any) -> Iterator[dict[str, str]]:
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    storage = f"{redis_server.url}?prefix=serve{uuid.uuid4().hex[:8]}:"
    deploy(storage, 2)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "storage": storage}
    finally:
        serve.shutdown()


def call(client: httpx.Client, actor: str, key: str, routed: bool, deadline: float) -> int:
    """One increment, retried under the same Idempotency-Key until it gets an answer."""
    headers = {"idempotency-key": key}
    if routed:
        headers["x-session-id"] = f"Tally/{actor}"
    while True:
        try:
            r = client.post(f"/v1/actors/Tally/{actor}/incr", headers=headers)
            if r.status_code == 200:
                return int(r.json()["result"])
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer for {key}")
        time.sleep(0.1)


def run_load(
    url: str, actors: list[str], clients: int, per_client: int, during: Any = None
) -> dict[str, list[int]]:
    for a in actors:
        httpx.post(f"{url}/v1/actors/Tally/{a}", timeout=60).raise_for_status()
    results: dict[str, list[int]] = {a: [] for a in actors}
    lock = threading.Lock()
    deadline = time.monotonic() + 240
    run = uuid.uuid4().hex[:6]

    def client_loop(c: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(per_client):
                actor = actors[(c + i) % len(actors)]
                value = call(client, actor, f"{run}-{c}-{i}", routed=c % 2 == 0, deadline=deadline)
                with lock:
                    results[actor].append(value)

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client_loop, c) for c in range(clients)]
        if during is not None:
            during()
        for f in futures:
            f.result(timeout=300)
    return results


def assert_exact(url: str, results: dict[str, list[int]]) -> None:
    for actor, values in results.items():
        # Every increment applied once: the answers are exactly 1..n and the state is n.
        assert sorted(values) == list(range(1, len(values) + 1)), actor
        assert described(url, actor)["state"] == {"n": len(values)}, actor


def described(url: str, actor: str) -> Any:
    """``GET`` the actor, retried (it is a read) while a replaced replica's connections fail."""
    deadline = time.monotonic() + 60
    while True:
        try:
            r = httpx.get(f"{url}/v1/actors/Tally/{actor}", timeout=30)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"no answer describing {actor}"
        time.sleep(0.2)


def test_32_clients_on_5_actors_end_with_exact_counts(service: dict[str, str]) -> None:
    actors = [f"load-{i}" for i in range(5)]
    results = run_load(service["url"], actors, clients=32, per_client=10)
    assert sum(len(v) for v in results.values()) == 320
    assert_exact(service["url"], results)


def test_a_replica_killed_under_load_loses_and_doubles_nothing(service: dict[str, str]) -> None:
    import ray

    def kill_one_replica() -> None:
        time.sleep(1.0)
        names = [a for a in ray.util.list_named_actors(all_namespaces=True) if "ActorHost" in a["name"]]
        assert names, "no ActorHost replica found"
        ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)

    actors = [f"chaos-{i}" for i in range(5)]
    results = run_load(service["url"], actors, clients=32, per_client=15, during=kill_one_replica)
    assert sum(len(v) for v in results.values()) == 32 * 15
    assert_exact(service["url"], results)


def test_redeploy_with_another_replica_count_keeps_state(service: dict[str, str]) -> None:
    url = service["url"]
    actors = [f"redeploy-{i}" for i in range(5)]
    before = run_load(url, actors, clients=8, per_client=5)
    states = {a: httpx.get(f"{url}/v1/actors/Tally/{a}", timeout=30).json()["state"] for a in actors}
    deploy(service["storage"], 3)
    try:
        for a in actors:
            assert httpx.get(f"{url}/v1/actors/Tally/{a}", timeout=30).json()["state"] == states[a]
        after = run_load(url, actors, clients=8, per_client=5)
        assert_exact(url, {a: before[a] + after[a] for a in actors})
    finally:
        deploy(service["storage"], 2)


def test_remote_handles_run_the_seed_block(
    service: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    from test_seed import VIRTUAL_ACTORS, _namespace

    from actorflow import workflow
    from actorflow.actor._context import set_invoker

    monkeypatch.setenv("ACTORFLOW_ADDRESS", service["url"])
    data = pathlib.Path("/tmp/data")
    existed = data.exists()
    ns = _namespace()
    exec(compile("from actorflow import workflow\n" + VIRTUAL_ACTORS, "<seed>", "exec"), ns)
    try:
        c = ns["Counter"].get("counter_1")
        assert c.incr.run() == 3  # the state lives in the service
        calls = [c.incr.run_async() for _ in range(10)]
        assert [f.result(timeout=60) for f in calls] == list(range(4, 14))
        from examples.bank import Account

        alice = Account.get_or_create("remote-alice", "Alice", 10)
        with pytest.raises(ValueError, match="less than"):
            alice.withdraw.run(100)  # InsufficientFunds arrives as a ValueError
        from serve_actors import Tally

        tally = Tally.get_or_create("remote-args")
        assert tally.measure.run("abc", times=2) == 6
        assert tally.measure.run("é&?=/" * 1000) == 5000  # any text, any size, in the JSON body
        assert os.environ["ACTORFLOW_ADDRESS"] == service["url"]
    finally:
        set_invoker(None)
        workflow.init(f"sqlite://{tmp_path}/after.db")
        if not existed:
            import shutil

            shutil.rmtree(data, ignore_errors=True)


def test_in_cluster_serve_handle(service: dict[str, str]) -> None:
    from serve_actors import Tally

    from actorflow import workflow
    from actorflow.actor._context import set_invoker

    workflow.init(address="serve://actorflow")
    try:
        t = Tally.get_or_create("via-handle")
        assert [t.incr.run() for _ in range(3)] == [1, 2, 3]
        assert t.value.run() == 3
    finally:
        set_invoker(None)


def test_order_example_end_to_end_over_http(service: dict[str, str]) -> None:
    url = service["url"]
    with httpx.Client(base_url=url, timeout=30) as c:
        for order, amount in (("o-paid", 20), ("o-unpaid", 5)):
            r = c.post(f"/v1/actors/Order/{order}", json={"kwargs": {"item": "book", "amount": amount}})
            assert r.is_success, r.text
        c.post("/v1/actors/Order/o-paid/place", json={"kwargs": {"pay_within": 30}}).raise_for_status()
        c.post("/v1/actors/Order/o-unpaid/place", json={"kwargs": {"pay_within": 1}}).raise_for_status()
        assert set(c.get("/v1/actors/Order/o-paid/timers").json()["timers"]) == {"payment_timeout"}
        r = c.post(
            "/v1/actors/Order/o-paid/events/payment", json={"amount": 20}, headers={"Idempotency-Key": "p-1"}
        )
        assert r.status_code == 202
        c.post(
            "/v1/actors/Order/o-paid/events/payment", json={"amount": 20}, headers={"Idempotency-Key": "p-1"}
        )

        def state(order: str) -> Any:
            return c.post(f"/v1/actors/Order/{order}/info").json()["result"]

        deadline = time.monotonic() + 30
        while state("o-paid")["state"] != "paid" or state("o-unpaid")["state"] != "cancelled":
            assert time.monotonic() < deadline, (state("o-paid"), state("o-unpaid"))
            time.sleep(0.1)
        assert len(state("o-paid")["payments"]) == 1  # the repeated event was handled once
        assert c.get("/v1/actors/Order/o-paid/timers").json()["timers"] == {}
        assert c.get("/v1/actors/Order/o-unpaid/timers").json()["timers"] == {}


def _kill_every_replica() -> None:
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if "ActorHost" in a["name"]]
    assert names, "no ActorHost replica found"
    for a in names:
        ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=True)


def test_a_keyed_python_call_survives_the_replica_killed_under_it(service: dict[str, str]) -> None:
    """The replica running a keyed call dies mid-call (every replica does, so it cannot have
    been another): the proxy answers with a bare 500 or 503 until Serve has replaced them, and
    the Python client retries under the same key until it gets the call's one true result."""
    from serve_actors import Tally

    from actorflow.client import HttpInvoker

    invoker = HttpInvoker(service["url"], retry_timeout=120)
    try:
        invoker.create(Tally, "killed-under", (), {})  # type: ignore[arg-type]
        started = time.monotonic()
        call = invoker.submit(Tally, "killed-under", "slow_incr", (3.0,), {}, "slow-1")  # type: ignore[arg-type]
        time.sleep(1.0)
        _kill_every_replica()
        assert call.result(timeout=150) == 1
        took = time.monotonic() - started
        again = invoker.submit(Tally, "killed-under", "slow_incr", (3.0,), {}, "slow-1")  # type: ignore[arg-type]
        assert again.result(timeout=60) == 1  # the same key: the recorded result, no second effect
        state = httpx.get(f"{service['url']}/v1/actors/Tally/killed-under", timeout=30).json()
        assert state["state"] == {"n": 1}, state
        print(f"keyed call answered {took:.1f} s after it was sent, across the replicas' deaths")
    finally:
        invoker.close()


def test_stalled_clients_get_408_and_do_not_starve_other_calls(service: dict[str, str]) -> None:
    """140 clients announce a 100-byte body and send 10 bytes; 100 more send half their headers.
    Each stalled body gets 408 once the body timeout passes, and a normal call made meanwhile
    still gets its answer."""
    host, port = service["url"].removeprefix("http://").split(":")
    httpx.post(f"{service['url']}/v1/actors/Tally/stall", timeout=60)
    stalled: list[socket.socket] = []
    try:
        for i in range(140):
            s = socket.create_connection((host, int(port)), timeout=30)
            s.sendall(
                b"POST /v1/actors/Tally/stall/incr HTTP/1.1\r\nHost: x\r\n"
                b"content-type: application/json\r\ncontent-length: 100\r\n"
                + f"x-session-id: Tally/stall-{i}\r\n\r\n".encode()
                + b'{"args": ['
            )
            stalled.append(s)
        half_headers = []
        for _ in range(100):
            s = socket.create_connection((host, int(port)), timeout=30)
            s.sendall(b"POST /v1/actors/Tally/stall/incr HTTP/1.1\r\nHost: x\r\ncontent-le")
            half_headers.append(s)
        start = time.monotonic()
        r = httpx.post(f"{service['url']}/v1/actors/Tally/stall/incr", timeout=60)
        assert r.status_code == 200 and r.json() == {"result": 1}
        waited = time.monotonic() - start
        statuses = []
        for s in stalled:
            s.settimeout(BODY_TIMEOUT + 30)
            statuses.append(s.recv(64).split(b" ")[1])
        assert set(statuses) == {b"408"}, statuses
        assert waited < BODY_TIMEOUT + 20, waited
        stalled += half_headers
    finally:
        for s in stalled:
            s.close()
    assert httpx.get(f"{service['url']}/v1/actors/Tally/stall", timeout=30).json()["state"] == {"n": 1}


def test_every_request_for_an_actor_reaches_one_replica_before_and_after_a_scale(
    service: dict[str, str],
) -> None:
    """Plain HTTP requests (no routing header, a new connection each) for one actor all reach
    one replica, with 2 replicas and again after scaling to 3; HAProxy got the routing rule."""
    from actorflow.serve.ingress import balance_rule

    url = service["url"]
    actors = [f"own-{i}" for i in range(30)]
    for a in actors:
        httpx.post(f"{url}/v1/actors/Tally/{a}", timeout=60).raise_for_status()
    assert len(steady(url, 2)) == 2
    before = owners(url, actors)
    assert all(len(o) == 1 for o in before.values()), before
    assert len(set().union(*before.values())) == 2  # both replicas own some
    deploy(service["storage"], 3)
    try:
        assert len(steady(url, 3)) == 3
        after = owners(url, actors)
        assert all(len(o) == 1 for o in after.values()), after
        assert len(set().union(*after.values())) == 3
    finally:
        deploy(service["storage"], 2)
    configs = list(pathlib.Path(os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent.glob("*/haproxy.cfg"))
    assert configs and all(balance_rule(3) in c.read_text() for c in configs)


def test_replicas_run_actor_code_on_the_loop_that_serves_their_http_port(service: dict[str, str]) -> None:
    """In HAProxy mode a replica runs the API and its actors on the loop of its HTTP server
    (Ray's actor loop), not on the loop Serve otherwise starts in a thread of its own for user
    code: no request crosses between two threads."""
    from actorflow.serve.ingress import USER_CODE_THREAD

    assert os.environ[USER_CODE_THREAD] == "0"
    url = service["url"]
    replicas = steady(url, 2)
    names, answered = set(), set()
    for i in range(20):  # actors on both replicas
        r = httpx.post(f"{url}/v1/actors/Probe/p{i}/thread", timeout=60)
        assert r.status_code == 200, r.text
        names.add(r.json()["result"])
        answered.add(r.headers["x-actorflow-replica"])  # as _routing reads it
    assert answered == replicas, (answered, replicas)
    assert not any("_run_user_code_event_loop" in n for n in names), names


def _scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``GET /metrics``, parsed by prometheus_client: sample name -> labels -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _value(scraped: dict[str, Any], name: str, **labels: str) -> float:
    return float(scraped.get(name, {}).get(tuple(sorted(labels.items())), 0.0))


def test_metrics_after_a_scripted_load_count_what_it_did(
    service: dict[str, str], tmp_path: pathlib.Path
) -> None:
    """Each metric of ``/metrics`` after a load whose every part is known: calls, a repeated
    key, a message, an event, a timer, a sub-workflow whose step retried once, and an actor
    written by the service and by this process at once (compare-and-set conflicts)."""
    from actorflow.actor import actor_runtime
    from actorflow.actor._class import lookup
    from actorflow.engine import WorkflowRuntime

    url = service["url"]
    ids = {name: f"met-{name}-{uuid.uuid4().hex[:6]}" for name in ("a", "b", "c", "d", "e")}
    base = f"{url}/v1/actors/Metered"
    with httpx.Client(timeout=60) as client:
        for _ in range(10):
            assert client.post(f"{base}/{ids['a']}/bump").status_code == 200
        for _ in range(2):  # the second is answered from the record
            r = client.post(f"{base}/{ids['a']}/bump", headers={"Idempotency-Key": "k-1"})
            assert r.json()["result"] == 11
        assert client.post(f"{base}/{ids['a']}/poke", json={"kwargs": {"other": ids["b"]}}).status_code == 200
        assert client.post(f"{base}/{ids['a']}/events/ping", json={"by": 2}).status_code == 202
        assert client.post(f"{base}/{ids['c']}/arm", json={"kwargs": {"after": 0.2}}).status_code == 200
        r = client.post(
            f"{base}/{ids['d']}/launch", json={"kwargs": {"marker": str(tmp_path / "failed-once")}}
        )
        assert r.status_code == 200 and r.json()["result"] == 42, r.text

        # Two writers on one actor: the service's replica and a runtime in this process.
        ours = WorkflowRuntime(service["storage"])
        here, metered = actor_runtime(ours), lookup("Metered")

        def bumps() -> None:
            for _ in range(40):
                here.submit(metered, ids["e"], "bump", (), {}, None).result(timeout=60)

        thread = threading.Thread(target=bumps)
        try:
            thread.start()
            for _ in range(40):
                assert client.post(f"{base}/{ids['e']}/bump").status_code == 200
            thread.join(timeout=120)
        finally:
            thread.join(timeout=120)
            ours.close()
        deadline = time.monotonic() + 30
        while client.post(f"{base}/{ids['c']}/value").json()["result"] != 1:
            assert time.monotonic() < deadline, "the timer did not fire"
            time.sleep(0.1)
        assert client.post(f"{base}/{ids['e']}/value").json()["result"] == 80  # nothing lost

    # Ray's agents publish each process's metrics every few seconds: wait for the last ones.
    deadline = time.monotonic() + 60
    while True:
        m = _scrape(url)
        done = (
            _value(m, "actorflow_calls_total", type="Metered", method="bump", status="ok") >= 92
            and _value(m, "actorflow_timer_lateness_seconds_count", type="Metered") >= 1
            and _value(m, "actorflow_workflow_steps_total", outcome="ok") >= 2
            and _value(m, "actorflow_messages_delivered_total", type="Metered") >= 2
        )
        if done:
            break
        assert time.monotonic() < deadline, f"metrics never caught up: {sorted(m)}"
        time.sleep(1.0)

    bump = {"type": "Metered", "method": "bump", "status": "ok"}
    # 10 + 1 keyed + 1 delivered message + 1 timer tick + 80 on the contended actor (its
    # reruns are one call each) = 93 calls that ran; the replayed key is a call too.
    calls = _value(m, "actorflow_calls_total", **bump)
    assert calls >= 93
    assert _value(m, "actorflow_call_duration_seconds_count", **bump) == calls
    assert _value(m, "actorflow_call_duration_seconds_bucket", le="+Inf", **bump) == calls
    assert 0 < _value(m, "actorflow_call_duration_seconds_sum", **bump) / calls < 5
    assert _value(m, "actorflow_calls_total", type="Metered", method="launch", status="ok") >= 1
    assert _value(m, "actorflow_idempotent_replays_total", type="Metered") >= 1
    assert _value(m, "actorflow_events_total", type="Metered") >= 1
    assert _value(m, "actorflow_messages_delivered_total", type="Metered") >= 2  # the message, the event
    assert "actorflow_message_retries_total" in m
    conflicts = _value(m, "actorflow_commit_conflicts_total", type="Metered")
    assert conflicts >= 1, "two writers on one actor and no conflict counted"
    assert _value(m, "actorflow_turn_reruns_total", type="Metered") >= 1
    for component in ("actor", "workflow"):
        count = _value(m, "actorflow_commit_duration_seconds_count", component=component)
        total = _value(m, "actorflow_commit_duration_seconds_sum", component=component)
        assert count >= 1 and 0 < total < count  # commits of well under a second each
    assert 0 <= _value(m, "actorflow_timer_lateness_seconds_sum", type="Metered") < 5
    assert _value(m, "actorflow_workflow_steps_total", outcome="ok") >= 2
    assert _value(m, "actorflow_workflow_step_retries_total") >= 1
    assert _value(m, "actorflow_cached_actors") >= 1
    assert _value(m, "actorflow_outbox_backlog") == 0  # everything was delivered
    assert _value(m, "actorflow_due_timers") == 0  # the one timer fired
    labels = {k for samples in m.values() for key in samples for k, _ in key}
    assert not labels & {"actor_id", "id", "WorkerId", "workflow_id"}  # bounded label values only
