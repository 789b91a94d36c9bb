"""Bulk operations over HTTP and from the command line, on every storage backend: cancel or
delete workflows by id prefix, status and age; delete the actors of a type by id prefix; purge
failed timer ticks. Each with a dry run that counts what the real run then does, in bounded
batches that a client goes through by ``next``.

The HTTP layer runs in process (TestClient over a LocalBackend: no Ray, no sockets); the CLI
talks over real HTTP to the same application served by uvicorn in a thread. Workflows are
stored through the engine's own records: RESUMABLE ones as a runner that then died leaves them
(RUNNING, under a lease that lapsed), others run to their end on the inline step runner.
"""

from __future__ import annotations

import asyncio
import io
import os
import pathlib
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from actorflow import workflow
from actorflow._clock import SYSTEM
from actorflow.actor import ActorConfig, ActorRuntime, adopt
from actorflow.cli import main
from actorflow.engine import InlineRunner, WorkflowRuntime, WorkflowStatus
from actorflow.errors import (
    WorkflowCancelledError,
    WorkflowExecutionError,
    WorkflowNotFoundError,
    WorkflowRunningError,
)
from actorflow.serve.api import ApiSettings, create_api
from actorflow.serve.backend import LocalBackend
from actorflow.storage import Storage

TOKEN = "bulk-token-7c1f"
AUTH = {"authorization": f"Bearer {TOKEN}"}
CANCEL = "/v1/bulk/workflows/cancel"
DELETE = "/v1/bulk/workflows/delete"


@workflow.virtual_actor(name="BulkThing")
class BulkThing:
    def __init__(self) -> None:
        self.n = 0

    def bump(self) -> int:
        self.n += 1
        return self.n

    def fail(self) -> None:
        raise RuntimeError("this tick always fails")


@workflow.step
def noop() -> int:
    return 1


@workflow.step(max_retries=0)
def boom() -> int:
    raise ValueError("a step that fails")


@workflow.step
def wait_for_file(path: str) -> str:
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "done"


# --------------------------------------------------------------------------- fixtures, helpers


def _runtime(url: str) -> WorkflowRuntime:
    """A runtime whose steps run in threads here, with an actor runtime whose loops do not run
    (timers fire only when a test ticks them) and whose failed ticks are retried at once."""
    rt = WorkflowRuntime(url, runner=InlineRunner(SYSTEM))
    adopt(rt, ActorRuntime(rt, ActorConfig(timer_backoff=0.001)))
    return rt


@pytest.fixture
def rt(storage_url: str) -> Iterator[WorkflowRuntime]:
    runtime = _runtime(storage_url)
    try:
        yield runtime
    finally:
        runtime.close()


def _app(rt: WorkflowRuntime) -> Any:
    from actorflow.actor import actor_runtime

    return create_api(LocalBackend(rt, actor_runtime(rt)), ApiSettings(token=TOKEN))


@pytest.fixture
def client(rt: WorkflowRuntime) -> TestClient:
    return TestClient(_app(rt), headers=AUTH)


async def _commit_all(storage: Storage, batches: list[Any]) -> None:
    lanes = asyncio.Semaphore(32)

    async def one(batch: Any) -> None:
        async with lanes:
            assert await storage.commit(batch)

    await asyncio.gather(*(one(b) for b in batches))


def seed_resumable(rt: WorkflowRuntime, ids: Iterable[str]) -> None:
    """Store workflows as a runner that died right after starting them leaves them: their
    creating batch (``engine.prepare``, what ``run`` commits) under a lease that has lapsed."""
    ttl = rt.lease_ttl
    rt.lease_ttl = 0.001
    try:
        batches = [rt.engine.prepare(noop.step(), wid, None).batch for wid in ids]
    finally:
        rt.lease_ttl = ttl
    time.sleep(0.005)
    rt.blocking(_commit_all(rt.storage, batches))


def seed_running(rt: WorkflowRuntime, wid: str) -> None:
    """A workflow whose runner (this live process) holds its lease."""
    assert rt.blocking(rt.storage.commit(rt.engine.prepare(noop.step(), wid, None).batch))


def statuses(rt: WorkflowRuntime) -> dict[str, str]:
    return {wid: s.value for wid, s in rt.list_all()}


def bulk(client: TestClient, path: str, body: dict[str, Any], limit: int) -> dict[str, Any]:
    """Go through a bulk operation batch by batch, as a client does; the sums, the ids and how
    many batches it took."""
    totals: dict[str, Any] = {
        "scanned": 0,
        "matched": 0,
        "affected": 0,
        "skipped": 0,
        "ids": [],
        "batches": 0,
    }
    after = None
    while True:
        r = client.post(path, json={**body, "limit": limit, "start_after": after})
        assert r.status_code == 200, r.text
        page = r.json()
        assert set(page) == {"dry_run", "scanned", "matched", "affected", "skipped", "ids", "next"}
        assert page["dry_run"] is bool(body.get("dry_run"))
        assert page["scanned"] <= limit and page["matched"] == page["affected"] + page["skipped"]
        assert len(page["ids"]) == page["affected"]
        for name in ("scanned", "matched", "affected", "skipped", "ids"):
            totals[name] += page[name]
        totals["batches"] += 1
        after = page["next"]
        if after is None:
            return totals


# --------------------------------------------------------------------------- workflows


def test_a_thousand_resumable_workflows_cancelled_by_prefix(rt: WorkflowRuntime, client: TestClient) -> None:
    a_ids = [f"a-{i:04d}" for i in range(1000)]
    others = [f"b-{i:03d}" for i in range(20)] + ["a", "a_1", "ab-0", "ab-1", "A-0"]
    seed_resumable(rt, a_ids + others)
    before = statuses(rt)
    assert set(before.values()) == {"RESUMABLE"} and len(before) == 1025
    first = client.get("/v1/workflows").json()  # the plain list: bounded pages of it
    assert len(first["workflows"]) == 1000 and first["next"] == first["workflows"][-1]["id"]
    rest = client.get("/v1/workflows", params={"start_after": first["next"]}).json()
    listed = {w["id"]: w["status"] for w in first["workflows"] + rest["workflows"]}
    assert (listed, rest["next"]) == (before, None)
    body = {"prefix": "a-", "status": ["RESUMABLE"]}

    dry = bulk(client, CANCEL, {**body, "dry_run": True}, limit=300)
    assert statuses(rt) == before  # a dry run changes nothing
    assert (dry["matched"], dry["affected"], dry["skipped"], dry["batches"]) == (1000, 1000, 0, 4)
    assert dry["ids"] == a_ids

    done = bulk(client, CANCEL, body, limit=300)
    assert done["affected"] == dry["affected"] == 1000 and done["skipped"] == 0
    assert done["ids"] == a_ids
    after = statuses(rt)
    assert {after[w] for w in a_ids} == {"CANCELED"}
    assert {w: after[w] for w in others} == {w: before[w] for w in others}  # no other prefix touched
    # Again: the status filter now matches none of them.
    assert bulk(client, CANCEL, body, limit=1000)["matched"] == 0


def test_a_bulk_cancel_is_the_single_cancel(
    rt: WorkflowRuntime, client: TestClient, storage_url: str, tmp_path: pathlib.Path
) -> None:
    """Ended workflows are skipped, not errors; a FAILED one is cancelled; a RUNNING one held by
    another runner stops as a single cancel stops it (its lease fenced off: its step's result
    is never stored)."""
    rt.run(noop.step(), workflow_id="c-done")
    with pytest.raises(WorkflowExecutionError):
        rt.run(boom.step(), workflow_id="c-failed")
    seed_resumable(rt, ["c-resumable", "c-canceled"])
    client.post("/v1/workflows/c-canceled/cancel")
    other = _runtime(storage_url)  # another runner, with a lease of its own
    flag = tmp_path / "go"
    try:
        live = other.run_async(wait_for_file.step(str(flag)), workflow_id="c-live")
        deadline = time.monotonic() + 10
        while statuses(rt).get("c-live") != "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        before = statuses(rt)
        dry = bulk(client, CANCEL, {"prefix": "c-", "dry_run": True}, limit=2)
        assert statuses(rt) == before
        done = bulk(client, CANCEL, {"prefix": "c-"}, limit=2)
        for totals in (dry, done):
            assert (totals["matched"], totals["affected"], totals["skipped"]) == (5, 3, 2)
            assert totals["ids"] == ["c-failed", "c-live", "c-resumable"]
        flag.write_text("")
        with pytest.raises(WorkflowCancelledError):
            live.result(timeout=20)
    finally:
        other.close()
    assert statuses(rt) == {
        "c-done": "SUCCESSFUL",
        "c-failed": "CANCELED",
        "c-resumable": "CANCELED",
        "c-canceled": "CANCELED",
        "c-live": "CANCELED",
    }
    assert [s["status"] for s in client.get("/v1/workflows/c-live").json()["steps"]] == ["PENDING"]


def test_a_status_filter_is_checked_again_as_each_commits(rt: WorkflowRuntime) -> None:
    """What a bulk request passes down: a workflow read RESUMABLE by the page, then taken over
    by a resume elsewhere before its turn came, is left running."""
    seed_resumable(rt, ["r-0", "r-1"])
    resumable = {WorkflowStatus.RESUMABLE}
    assert rt.blocking(rt.engine.take_over_for("r-0")) is not None  # a resume elsewhere
    assert rt.blocking(rt.engine.cancel("r-0", resumable)) is False
    with pytest.raises(WorkflowRunningError):  # a bulk delete counts it as skipped
        rt.blocking(rt.engine.delete("r-0", resumable))
    assert rt.blocking(rt.engine.delete("r-1", {WorkflowStatus.FAILED})) is False
    assert rt.blocking(rt.engine.cancel("r-1", resumable)) is True
    assert statuses(rt) == {"r-0": "RUNNING", "r-1": "CANCELED"}
    assert rt.blocking(rt.engine.cancel("r-0")) is True  # the single cancel: whatever its status
    assert rt.blocking(rt.engine.cancel("r-0")) is False  # once
    assert statuses(rt) == {"r-0": "CANCELED", "r-1": "CANCELED"}


def test_bulk_delete_by_age_and_status_skips_running_ones(rt: WorkflowRuntime, client: TestClient) -> None:
    old = [f"d-old-{i}" for i in range(10)]
    new = [f"d-new-{i}" for i in range(5)]
    seed_resumable(rt, old)
    time.sleep(0.05)
    cutoff = time.time()
    time.sleep(0.05)
    seed_resumable(rt, new)
    seed_running(rt, "d-live")
    seed_resumable(rt, ["e-0"])

    assert (
        bulk(client, DELETE, {"prefix": "d-", "older_than": 3600, "dry_run": True}, limit=4)["matched"] == 0
    )
    by_age = {"prefix": "d-", "started_before": cutoff}
    dry = bulk(client, DELETE, {**by_age, "dry_run": True}, limit=4)
    assert (dry["matched"], dry["affected"], dry["ids"]) == (10, 10, sorted(old))
    assert len(statuses(rt)) == 17
    done = bulk(client, DELETE, by_age, limit=4)
    assert (done["affected"], done["ids"]) == (10, sorted(old))
    for wid in old:
        assert client.get(f"/v1/workflows/{wid}").status_code == 404
    assert set(statuses(rt)) == {*new, "d-live", "e-0"}

    # Without a status filter, the running one is skipped (as a single delete refuses it).
    dry = bulk(client, DELETE, {"prefix": "d-", "dry_run": True}, limit=100)
    done = bulk(client, DELETE, {"prefix": "d-"}, limit=100)
    for totals in (dry, done):
        assert (totals["matched"], totals["affected"], totals["skipped"]) == (6, 5, 1)
    assert statuses(rt) == {"d-live": "RUNNING", "e-0": "RESUMABLE"}
    r = client.delete("/v1/workflows/d-live")
    assert (r.status_code, r.json()["error"]) == (409, "workflow_running")
    assert client.post("/v1/workflows/d-live/cancel").status_code == 200
    assert client.delete("/v1/workflows/d-live").status_code == 204
    assert client.delete("/v1/workflows/d-live").status_code == 404
    assert statuses(rt) == {"e-0": "RESUMABLE"}


# --------------------------------------------------------------------------- actors and timers


def test_bulk_delete_actors_by_prefix(client: TestClient) -> None:
    a_ids = sorted(f"a-{i}" for i in range(30))
    others = ["b-0", "b-1", "ab-0", "a"]
    for actor_id in a_ids + others:
        assert client.post(f"/v1/actors/BulkThing/{actor_id}").status_code == 201
    client.post("/v1/actors/BulkThing/a-3/bump")
    client.put("/v1/actors/BulkThing/a-3/timers/later", json={"after": 3600, "method": "bump"})
    path = "/v1/actors/BulkThing"
    bulk_delete = "/v1/bulk/actors/BulkThing/delete"

    dry = bulk(client, bulk_delete, {"prefix": "a-", "dry_run": True}, limit=7)
    assert (dry["matched"], dry["affected"], dry["batches"], dry["ids"]) == (30, 30, 5, a_ids)
    assert all(client.get(f"{path}/{a}").status_code == 200 for a in a_ids)
    everything = bulk(client, bulk_delete, {"all": True, "dry_run": True}, limit=1000)
    assert everything["affected"] == 34

    done = bulk(client, bulk_delete, {"prefix": "a-"}, limit=7)
    assert (done["affected"], done["ids"]) == (30, a_ids)
    assert all(client.get(f"{path}/{a}").status_code == 404 for a in a_ids)
    assert client.get(path).json()["ids"] == sorted(others)
    assert client.post("/v1/actors/BulkThing/b-0/bump").json() == {"result": 1}  # the others work on
    assert bulk(client, bulk_delete, {"prefix": "a-"}, limit=7)["matched"] == 0
    # A deleted id starts afresh: nothing of the old actor (its timer) is left.
    assert client.post("/v1/actors/BulkThing/a-3").status_code == 201
    assert client.get("/v1/actors/BulkThing/a-3/timers").json() == {"timers": {}, "failed_timers": {}}


def test_purge_failed_timers_of_a_type_by_prefix(client: TestClient) -> None:
    ids = ["p-0", "p-1", "p-2", "q-0"]
    for actor_id in ids:
        client.post(f"/v1/actors/BulkThing/{actor_id}")
        r = client.put(f"/v1/actors/BulkThing/{actor_id}/timers/boom", json={"after": 0, "method": "fail"})
        assert r.status_code == 200
    client.put("/v1/actors/BulkThing/p-1/timers/later", json={"after": 3600, "method": "bump"})
    deadline = time.monotonic() + 20
    while not all(client.get(f"/v1/actors/BulkThing/{a}/timers").json()["failed_timers"] for a in ids):
        client.post("/v1/timers/tick")  # each tick retries what failed; after 5 attempts it is recorded
        assert time.monotonic() < deadline
        time.sleep(0.005)
    path = "/v1/bulk/actors/BulkThing/purge-failed-timers"

    dry = bulk(client, path, {"prefix": "p-", "dry_run": True}, limit=2)
    assert (dry["affected"], dry["ids"]) == (3, ["p-0/boom", "p-1/boom", "p-2/boom"])
    assert client.get("/v1/actors/BulkThing/p-0/timers").json()["failed_timers"]
    done = bulk(client, path, {"prefix": "p-"}, limit=2)
    assert (done["affected"], done["ids"]) == (3, dry["ids"])
    for actor_id in ("p-0", "p-1", "p-2"):
        assert client.get(f"/v1/actors/BulkThing/{actor_id}/timers").json()["failed_timers"] == {}
    assert set(client.get("/v1/actors/BulkThing/p-1/timers").json()["timers"]) == {"later"}  # timers stay
    assert set(client.get("/v1/actors/BulkThing/q-0/timers").json()["failed_timers"]) == {"boom"}
    assert bulk(client, path, {"prefix": "p-"}, limit=2)["affected"] == 0


# --------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_bad_bulk_requests_are_refused_and_change_nothing(rt: WorkflowRuntime, client: TestClient) -> None:
    seed_resumable(rt, ["h-0", "h-1"])
    client.post("/v1/actors/BulkThing/h-0")
    before = statuses(rt)
    bad_filters: list[Any] = [
        {},  # no filter: never "everything" by accident
        {"prefix": ""},  # nor is an empty prefix
        {"all": "yes"},
        {"all": False},
        {"prefix": "h/"},
        {"prefix": "h-", "bogus": 1},
        {"prefix": 5},
        {"prefix": "h-", "dry_run": "false"},
        {"prefix": "h-", "limit": 0},
        {"prefix": "h-", "limit": -1},
        {"prefix": "h-", "limit": 1001},
        {"prefix": "h-", "limit": 10**12},
        {"prefix": "h-", "limit": 1.5},
        {"prefix": "h-", "limit": True},
        {"prefix": "h-", "limit": "10"},
        {"prefix": "h-", "start_after": "a b"},
        {"prefix": "h-", "start_after": 3},
        [],
        "h-",
        None,
    ]
    workflow_only: list[Any] = [
        {"status": "BOGUS"},
        {"status": ["RESUMABLE", "NOPE"]},
        {"status": []},
        {"status": 5},
        {"status": [5]},
        {"older_than": -1},
        {"older_than": "1h"},
        {"older_than": True},
        {"started_before": "yesterday"},
        {"older_than": 60, "started_before": time.time()},
    ]
    answers = []
    for body in bad_filters + workflow_only:
        for path in (CANCEL, DELETE):
            answers.append((path, body, client.post(path, json=body)))
    for body in [*bad_filters, {"status": ["RESUMABLE"], "all": True}, {"older_than": 1, "all": True}]:
        for path in ("/v1/bulk/actors/BulkThing/delete", "/v1/bulk/actors/BulkThing/purge-failed-timers"):
            answers.append((path, body, client.post(path, json=body)))
    for path, body, r in answers:
        assert r.status_code == 400, (path, body, r.text)
        assert r.json()["error"] in ("bad_request", "invalid_id") and r.json()["message"], (path, body)
    strict = client.post(
        CANCEL, content=b'{"prefix": "h-", "older_than": NaN}', headers={"content-type": "application/json"}
    )
    assert strict.status_code == 400
    assert client.post(CANCEL, content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert (
        client.post(CANCEL, content=b"prefix=h-", headers={"content-type": "text/plain"}).status_code == 415
    )
    assert client.post(CANCEL, json={"prefix": "h-"}, headers={"authorization": ""}).status_code == 401
    unknown = client.post("/v1/bulk/actors/Nobody/delete", json={"prefix": "h-"})
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_actor_type")
    assert statuses(rt) == before
    assert client.get("/v1/actors/BulkThing/h-0").status_code == 200
    # The bounds themselves are fine, and "all" says "every one" out loud.
    assert client.post(CANCEL, json={"all": True, "dry_run": True, "limit": 1000}).json()["matched"] == 2
    assert client.post(CANCEL, json={"prefix": "h-", "dry_run": True, "limit": 1}).json()["next"] == "h-0"
    assert statuses(rt) == before


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_the_bulk_routes_are_documented(rt: WorkflowRuntime, client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    routes = {
        CANCEL: "actorflow.BulkWorkflowFilter",
        DELETE: "actorflow.BulkWorkflowFilter",
        "/v1/bulk/actors/{type_name}/delete": "actorflow.BulkActorFilter",
        "/v1/bulk/actors/{type_name}/purge-failed-timers": "actorflow.BulkActorFilter",
    }
    for path, body in routes.items():
        op = doc["paths"][path]["post"]
        assert op["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{body}"
        }
        assert {"400", "401", "500", "503"} <= set(op["responses"])
        assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("BulkResult")
    assert set(schemas["actorflow.BulkWorkflowFilter"]["properties"]["status"]["items"]["enum"]) >= {
        "RESUMABLE"
    }
    seed_resumable(rt, ["o-0"])
    answer = client.post(CANCEL, json={"prefix": "o-"}).json()
    jsonschema.validate(
        answer, {"$ref": "#/components/schemas/actorflow.BulkResult", "components": doc["components"]}
    )
    body = {"prefix": "o-", "status": ["RESUMABLE"], "older_than": 1, "limit": 5, "dry_run": True}
    jsonschema.validate(
        body, {"$ref": "#/components/schemas/actorflow.BulkWorkflowFilter", "components": doc["components"]}
    )
    assert "delete" in doc["paths"]["/v1/workflows/{workflow_id}"]


# --------------------------------------------------------------------------- the command line


@pytest.fixture
def served(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkflowRuntime]:
    """The application served over real HTTP (uvicorn, in a thread) on SQLite, and a shell
    pointed at it."""
    import uvicorn

    rt = _runtime(f"sqlite://{tmp_path}/cli.db")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_app(rt), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    for name in ("ACTORFLOW_TOKEN_FILE", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACTORFLOW_ADDRESS", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("ACTORFLOW_TOKEN", TOKEN)
    try:
        yield rt
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        rt.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and TOKEN not in out + err
    return status, out, err


def test_the_cli_goes_batch_by_batch(
    served: WorkflowRuntime, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    rt = served
    a_ids = [f"a-{i:03d}" for i in range(250)]
    seed_resumable(rt, [*a_ids, "b-0", "b-1"])
    before = statuses(rt)
    status, out, _ = run(capsys, "workflows", "list", "--json")
    assert status == 0 and json.loads(out)["workflows"] == [
        {"id": w, "status": "RESUMABLE"} for w in sorted(before)
    ]
    select = ("--prefix", "a-", "--status", "resumable")

    status, out, err = run(capsys, "workflows", "cancel", *select, "--dry-run")
    assert status == 0 and out == "would cancel 250 workflows (250 matched, 0 skipped; nothing changed)\n"
    assert err.splitlines() == [
        "batch 1: 100 to cancel, 0 to skip (100 so far)",
        "batch 2: 100 to cancel, 0 to skip (200 so far)",
        "batch 3: 50 to cancel, 0 to skip (250 so far)",
    ]
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))  # counts, asks, and stops at "no"
    status, out, err = run(capsys, "workflows", "cancel", *select, "--batch-size", "200")
    assert status == 1 and "counting: batch 2: 50 to cancel" in err
    assert "Cancel 250 workflows (id prefix 'a-', status RESUMABLE)?" in err and "aborted" in err
    assert statuses(rt) == before

    status, out, err = run(capsys, "workflows", "cancel", *select, "--older-than", "1h", "--yes")
    assert (status, out) == (0, "cancelled 0 workflows (0 matched, 0 skipped)\n")
    status, out, err = run(capsys, "workflows", "cancel", *select, "--yes", "--json", "--batch-size", "1000")
    assert status == 0 and len(err.splitlines()) == 1
    assert json.loads(out) == {
        "dry_run": False,
        "scanned": 250,
        "matched": 250,
        "affected": 250,
        "skipped": 0,
        "batches": 1,
    }
    after = statuses(rt)
    assert {after[w] for w in a_ids} == {"CANCELED"} and after["b-0"] == after["b-1"] == "RESUMABLE"

    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    status, out, err = run(capsys, "workflows", "delete", "--prefix", "a-", "--status", "CANCELED")
    assert (status, out) == (0, "deleted 250 workflows (250 matched, 0 skipped)\n")
    assert set(statuses(rt)) == {"b-0", "b-1"}
    assert run(capsys, "workflows", "delete", "b-0", "--yes")[:2] == (0, "deleted b-0\n")
    assert run(capsys, "workflows", "cancel", "b-1")[:2] == (0, "b-1  CANCELED\n")

    for actor_id in ("x-0", "x-1", "x-2", "y-0"):
        assert run(capsys, "call", "BulkThing", actor_id, "bump")[0] == 0
    status, out, _ = run(
        capsys, "actors", "delete", "BulkThing", "--prefix", "x-", "--yes", "--batch-size", "2"
    )
    assert (status, out) == (0, "deleted 3 BulkThing actors (3 matched, 0 skipped)\n")
    assert run(capsys, "actors", "list", "BulkThing")[1] == "y-0\n"
    status, out, _ = run(capsys, "timers", "purge-failed", "BulkThing", "--all", "--dry-run")
    assert (status, out) == (
        0,
        "would purge 0 failed timer records of BulkThing (0 matched, 0 skipped; nothing changed)\n",
    )

    for argv in (
        ("workflows", "cancel"),  # no id and no filter
        ("workflows", "cancel", "b-1", "--prefix", "a-"),
        ("workflows", "delete", "--older-than", "1x"),
        ("workflows", "cancel", "--status", "BOGUS"),
        ("workflows", "cancel", "--prefix", "a-", "--batch-size", "0"),
        ("actors", "delete", "BulkThing"),
        ("timers", "purge-failed", "BulkThing"),
    ):
        status, out, err = run(capsys, *argv)
        assert status == 2 and out == "", (argv, err)
    status, _, err = run(capsys, "actors", "delete", "Nobody", "--prefix", "x-", "--yes")
    assert status == 1 and "unknown_actor_type" in err


# --------------------------------------------------------------------------- delete and resume at once


def test_a_resume_that_takes_over_first_makes_the_delete_refuse(rt: WorkflowRuntime) -> None:
    """The delete read the workflow RESUMABLE, then a resume took it over before the delete
    changed anything: the delete must refuse (it runs now) and leave every checkpoint."""
    seed_resumable(rt, ["race-1"])
    engine, real = rt.engine, rt.engine.store.read_head
    handed: list[bytes | None] = []
    reads = 0

    async def read_then_resume(wid: str) -> Any:
        nonlocal reads
        head = await real(wid)
        reads += 1
        if reads == 1:  # the delete's first read: a resume takes it over right after
            handed.append(await engine.take_over_for(wid))
        return head

    engine.store.read_head = read_then_resume  # type: ignore[method-assign]
    try:
        with pytest.raises(WorkflowRunningError):
            rt.blocking(engine.delete("race-1"))
    finally:
        engine.store.read_head = real  # type: ignore[method-assign]
    assert handed[0] is not None and rt.get_status("race-1") is WorkflowStatus.RUNNING
    specs, _ = rt.blocking(engine.store.load_dag("race-1"))  # its graph is all there
    assert [s.name for s in specs] == ["noop"]


def test_a_workflow_being_deleted_is_not_taken_over_even_after_a_crash(
    rt: WorkflowRuntime, client: TestClient
) -> None:
    """The delete marks the head before any checkpoint goes; a crash after that leaves it
    listed, a resume treats it as gone (rather than run what is left of it), and a second
    delete finishes the job."""
    seed_resumable(rt, ["race-2"])
    engine, storage = rt.engine, rt.storage
    real = storage.delete_prefix

    async def crash(prefix: str) -> int:
        raise ConnectionError("the deleting process died here")

    storage.delete_prefix = crash  # type: ignore[method-assign]
    try:
        with pytest.raises(ConnectionError):
            rt.blocking(engine.delete("race-2"))
    finally:
        storage.delete_prefix = real  # type: ignore[method-assign]
    assert statuses(rt) == {"race-2": "RESUMABLE"}  # still listed
    with pytest.raises(WorkflowNotFoundError):
        rt.blocking(engine.take_over_for("race-2"))
    with pytest.raises(WorkflowNotFoundError):
        rt.resume("race-2")
    assert client.post("/v1/workflows/race-2/resume").status_code == 404
    assert rt.blocking(engine.delete("race-2", only={WorkflowStatus.SUCCESSFUL})) is True  # marked: goes
    assert statuses(rt) == {}
