"""The typed OpenAPI document and the offline /docs page, in-process (TestClient over a
LocalBackend: no Ray, no sockets), and a client generated from the document calling the bank."""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from actorflow import workflow
from actorflow.engine import WorkflowRuntime
from actorflow.serve.api import ApiSettings, create_api
from actorflow.serve.backend import LocalBackend, load_modules
from actorflow.serve.docs import PUBLIC_PATHS

TOKEN = "open-sesame"
AUTH = {"authorization": f"Bearer {TOKEN}"}
ERROR_REF = "#/components/schemas/actorflow.Error"
GENERIC = {
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("post", "/v1/actors/{type_name}/{actor_id}"),
    ("get", "/v1/actors/{type_name}/{actor_id}"),
    ("delete", "/v1/actors/{type_name}/{actor_id}"),
    ("post", "/v1/actors/{type_name}/{actor_id}/{method}"),
    ("get", "/v1/actors/{type_name}"),
    ("get", "/v1/actors"),
    ("get", "/v1/actors/{type_name}/{actor_id}/timers"),
    ("put", "/v1/actors/{type_name}/{actor_id}/timers/{name}"),
    ("get", "/v1/actors/{type_name}/{actor_id}/timers/{name}"),
    ("delete", "/v1/actors/{type_name}/{actor_id}/timers/{name}"),
    ("post", "/v1/timers/tick"),
    ("post", "/v1/actors/{type_name}/{actor_id}/events/{event}"),
    ("post", "/v1/workflows/{workflow_id}/events/{key}"),
    ("get", "/v1/workflows"),
    ("get", "/v1/workflows/{workflow_id}"),
    ("post", "/v1/workflows/{workflow_id}/resume"),
    ("post", "/v1/workflows/{workflow_id}/cancel"),
    ("delete", "/v1/workflows/{workflow_id}"),
    ("post", "/v1/bulk/workflows/cancel"),
    ("post", "/v1/bulk/workflows/delete"),
    ("post", "/v1/bulk/actors/{type_name}/delete"),
    ("post", "/v1/bulk/actors/{type_name}/purge-failed-timers"),
}


class Opaque:
    """Not a type pydantic can model."""


@workflow.virtual_actor(name="OpenapiOdd")
class OpenapiOdd:
    """Signatures the document must survive: hints pydantic cannot model, one that does not
    resolve, positional-only and variadic parameters, a default JSON cannot show."""

    def __init__(self, *, label: str = "odd") -> None:
        self.label = label

    def odd(  # type: ignore[no-untyped-def]  # "plain" has no annotation on purpose
        self,
        first: int,
        /,
        callback: Callable[[int], int],
        thing: Opaque,
        ghost: NoSuchName,  # type: ignore[name-defined]  # noqa: F821
        plain,
        *rest: float,
        sentinel: object = object(),
        **extra: bool,
    ) -> Opaque:
        return Opaque()

    def tagged(self, items: list[dict[str, int]], limit: int | None = None) -> tuple[int, str]:
        return len(items), self.label


@pytest.fixture
def rt(tmp_path: pathlib.Path) -> Iterator[WorkflowRuntime]:
    runtime = WorkflowRuntime(f"sqlite://{tmp_path}/openapi.db")
    try:
        yield runtime
    finally:
        runtime.close()


def make_app(rt: WorkflowRuntime, token: str | None = TOKEN) -> Any:
    load_modules(["examples.bank", "examples.cart", "examples.order"])
    return create_api(LocalBackend(rt), ApiSettings(token=token))


@pytest.fixture
def client(rt: WorkflowRuntime) -> TestClient:
    return TestClient(make_app(rt), headers=AUTH)


@pytest.fixture
def doc(client: TestClient) -> dict[str, Any]:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    document: dict[str, Any] = r.json()
    return document


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``schema``, or the component it references."""
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def body_of(doc: dict[str, Any], op: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(request body schema, kwargs schema)`` of an operation."""
    request = resolve(doc, op["requestBody"]["content"]["application/json"]["schema"])
    return request, resolve(doc, request["properties"]["kwargs"])


def result_of(doc: dict[str, Any], op: dict[str, Any]) -> dict[str, Any]:
    schema = resolve(doc, op["responses"]["200"]["content"]["application/json"]["schema"])
    assert schema["required"] == ["result"]
    result: dict[str, Any] = schema["properties"]["result"]
    return result


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield method, path, op


def test_every_type_and_public_method_has_a_typed_operation(doc: dict[str, Any]) -> None:
    ops = {op["operationId"]: (method, path, op) for method, path, op in operations(doc)}
    expected = {
        "Account": ["deposit", "get_balance", "statement", "transfer", "withdraw"],
        "Cart": ["add_item", "checkout", "contents", "remove_item"],
        "Order": ["expire", "info", "on_payment", "place"],
    }
    for type_name, methods in expected.items():
        for method in methods:
            verb, path, op = ops[f"{type_name}_{method}"]
            assert (verb, path) == ("post", f"/v1/actors/{type_name}/{{actor_id}}/{method}")
            assert op["tags"] == [type_name]
        verb, path, op = ops[f"{type_name}_create"]
        assert (verb, path, op["tags"]) == ("post", f"/v1/actors/{type_name}/{{actor_id}}", [type_name])
        assert set(op["responses"]) >= {"200", "201"}
    assert not any(op_id.startswith("Account__") for op_id in ops)  # private methods stay private

    request, kwargs = body_of(doc, ops["Account_withdraw"][2])
    assert kwargs["properties"] == {"amount": {"type": "integer"}} and kwargs["required"] == ["amount"]
    assert kwargs["additionalProperties"] is False
    assert request["required"] == ["kwargs"] and request["properties"]["args"]["type"] == "array"
    assert ops["Account_withdraw"][2]["requestBody"]["required"] is True
    assert result_of(doc, ops["Account_withdraw"][2]) == {"type": "integer"}
    _, kwargs = body_of(doc, ops["Account_transfer"][2])
    assert kwargs["properties"] == {"to": {"type": "string"}, "amount": {"type": "integer"}}
    assert kwargs["required"] == ["to", "amount"]
    request, kwargs = body_of(doc, ops["Account_create"][2])
    assert kwargs["properties"] == {
        "owner": {"type": "string", "default": ""},
        "balance": {"type": "integer", "default": 0},
    }
    assert "required" not in kwargs and "required" not in request  # __init__ needs nothing
    assert ops["Account_create"][2].get("requestBody", {}).get("required") is not True
    assert result_of(doc, ops["Account_statement"][2]) == {"type": "object", "additionalProperties": True}

    _, kwargs = body_of(doc, ops["Cart_add_item"][2])
    assert kwargs["properties"] == {"name": {"type": "string"}, "qty": {"type": "integer", "default": 1}}
    assert kwargs["required"] == ["name"]
    assert result_of(doc, ops["Cart_add_item"][2]) == {
        "type": "object",
        "additionalProperties": {"type": "integer"},
    }
    assert result_of(doc, ops["Cart_checkout"][2]) == {}  # -> Any: any JSON
    request, kwargs = body_of(doc, ops["Cart_contents"][2])
    assert kwargs["properties"] == {} and request["properties"]["args"]["maxItems"] == 0
    assert ops["Cart_contents"][2]["requestBody"].get("required") is not True  # no body: no arguments
    _, kwargs = body_of(doc, ops["Cart_create"][2])
    assert kwargs["properties"] == {"customer": {"type": "string", "default": "guest"}}

    _, kwargs = body_of(doc, ops["Order_place"][2])
    assert kwargs["properties"] == {"pay_within": {"type": "number", "default": 60.0}}
    _, kwargs = body_of(doc, ops["Order_on_payment"][2])
    assert kwargs["properties"]["payment"]["type"] == "object" and kwargs["required"] == ["payment"]
    _, kwargs = body_of(doc, ops["Order_create"][2])
    assert set(kwargs["properties"]) == {"item", "amount"}
    assert result_of(doc, ops["Order_expire"][2]) == {"type": "string"}


def test_unmodellable_parameters_are_any_json_and_the_rest_stays_typed(doc: dict[str, Any]) -> None:
    ops = {op["operationId"]: op for _, _, op in operations(doc)}
    request, kwargs = body_of(doc, ops["OpenapiOdd_odd"])
    props = kwargs["properties"]
    assert props["callback"] == props["thing"] == props["ghost"] == props["plain"] == {}
    assert props["sentinel"] == {}  # object: any JSON, and its default has no JSON form
    assert "first" not in props  # positional-only: only by position
    assert kwargs["required"] == ["callback", "thing", "ghost", "plain"]
    assert kwargs["additionalProperties"] == {"type": "boolean"}  # **extra: bool
    args = request["properties"]["args"]
    assert args["prefixItems"][0] == {"type": "integer"} and args["minItems"] == 1
    assert args["items"] == {"type": "number"} and "maxItems" not in args  # *rest: float
    assert request["required"] == ["args", "kwargs"]
    assert result_of(doc, ops["OpenapiOdd_odd"]) == {}
    _, kwargs = body_of(doc, ops["OpenapiOdd_tagged"])
    assert kwargs["properties"]["items"] == {
        "type": "array",
        "items": {"type": "object", "additionalProperties": {"type": "integer"}},
    }
    assert kwargs["properties"]["limit"]["default"] is None
    assert result_of(doc, ops["OpenapiOdd_tagged"])["prefixItems"] == [
        {"type": "integer"},
        {"type": "string"},
    ]
    _, kwargs = body_of(doc, ops["OpenapiOdd_create"])
    assert kwargs["properties"] == {"label": {"type": "string", "default": "odd"}}


def test_the_generic_operations_stay_documented_with_their_bodies(doc: dict[str, Any]) -> None:
    generic = {(method, path): op for method, path, op in operations(doc) if "{type_name}" in path}
    generic.update({(m, p): op for m, p, op in operations(doc) if not p.startswith("/v1/actors/")})
    assert set(generic) == GENERIC
    with_body = {
        ("post", "/v1/actors/{type_name}/{actor_id}"),
        ("post", "/v1/actors/{type_name}/{actor_id}/{method}"),
        ("put", "/v1/actors/{type_name}/{actor_id}/timers/{name}"),
        ("post", "/v1/actors/{type_name}/{actor_id}/events/{event}"),
        ("post", "/v1/workflows/{workflow_id}/events/{key}"),
        ("post", "/v1/bulk/workflows/cancel"),
        ("post", "/v1/bulk/workflows/delete"),
        ("post", "/v1/bulk/actors/{type_name}/delete"),
        ("post", "/v1/bulk/actors/{type_name}/purge-failed-timers"),
    }
    assert {key for key, op in generic.items() if "requestBody" in op} == with_body
    arguments = resolve(
        doc,
        generic[("post", "/v1/actors/{type_name}/{actor_id}/{method}")]["requestBody"]["content"][
            "application/json"
        ]["schema"],
    )
    assert set(arguments["properties"]) == {"args", "kwargs"} and arguments["additionalProperties"] is False
    timer = resolve(
        doc,
        generic[("put", "/v1/actors/{type_name}/{actor_id}/timers/{name}")]["requestBody"]["content"][
            "application/json"
        ]["schema"],
    )
    assert timer["required"] == ["method"] and set(timer["properties"]) == {
        "after",
        "at",
        "every",
        "cron",
        "tz",
        "method",
        "args",
        "kwargs",
    }


def test_every_error_status_references_the_error_body(client: TestClient, doc: dict[str, Any]) -> None:
    assert (
        "HTTPValidationError" not in json.dumps(doc) and "ValidationError" not in doc["components"]["schemas"]
    )
    error = doc["components"]["schemas"]["actorflow.Error"]
    assert error["required"] == ["error", "message"] and error["properties"]["type"] == {
        "type": "string",
        "description": "The exception's class",
    }
    for method, path, op in operations(doc):
        for status, response in op["responses"].items():
            if int(status) >= 400:
                assert response["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}, (
                    path,
                    status,
                )
        if path != "/healthz":
            assert "401" in op["responses"], (method, path)
    ops = {op["operationId"]: op for _, _, op in operations(doc)}
    withdraw = ops["Account_withdraw"]["responses"]
    assert {"400", "401", "404", "409", "413", "422", "500", "503"} <= set(withdraw)
    assert "InsufficientFunds" in withdraw["409"]["description"]
    assert "409" in ops["Cart_add_item"]["responses"] and "InsufficientFunds" not in json.dumps(
        ops["Cart_add_item"]
    )
    assert "workflow_running" not in withdraw["409"]["description"]  # not a code an actor call answers
    assert "401" not in ops["healthz_healthz_get"]["responses"]

    # The answers the API really gives fit the schemas the document declares for them.
    components = {"components": doc["components"]}

    def fits(schema: dict[str, Any], body: Any) -> None:
        jsonschema.validate(body, {**schema, **components})

    client.post("/v1/actors/Account/alice", json={"kwargs": {"owner": "Alice", "balance": 10}})
    answers = [
        client.post("/v1/actors/Account/alice/withdraw", json={"kwargs": {"amount": 99}}),  # 409
        client.post("/v1/actors/Account/alice/withdraw", json={"kwargs": {"nope": 1}}),  # 422
        client.post("/v1/actors/Nobody/alice/withdraw"),  # 404
        client.post(
            "/v1/actors/Account/alice/withdraw", content=b"{", headers={"content-type": "application/json"}
        ),
        client.post("/v1/actors/Account/alice/withdraw", headers={"authorization": ""}),  # 401
        client.get("/v1/actors/Account", params={"limit": "x"}),  # 422 from FastAPI's validation
    ]
    assert [r.status_code for r in answers] == [409, 422, 404, 400, 401, 422]
    for r in answers:
        fits({"$ref": ERROR_REF}, r.json())
    ok = client.post("/v1/actors/Account/alice/withdraw", json={"kwargs": {"amount": 3}})
    fits(ops["Account_withdraw"]["responses"]["200"]["content"]["application/json"]["schema"], ok.json())
    assert ok.json() == {"result": 7}


def test_the_types_listing_is_documented_as_it_answers(client: TestClient, doc: dict[str, Any]) -> None:
    op = doc["paths"]["/v1/actors"]["get"]
    assert op["tags"] == ["actors"] and op["security"] == [{"bearerAuth": []}]
    assert {"401", "500", "503"} <= set(op["responses"])
    assert "workflow_" not in json.dumps(op["responses"])  # not a code it answers
    schema = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/actorflow.ActorTypes"}
    client.post("/v1/actors/Account/alice")
    answer = client.get("/v1/actors").json()
    jsonschema.validate(answer, {**schema, "components": doc["components"]})
    assert {"type": "Account", "count": 1, "more": False} in answer["types"]


def test_bearer_scheme_with_and_without_a_token(rt: WorkflowRuntime, doc: dict[str, Any]) -> None:
    assert doc["components"]["securitySchemes"]["bearerAuth"]["type"] == "http"
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for _, path, op in operations(doc):
        assert op.get("security") == (None if path == "/healthz" else [{"bearerAuth": []}]), path
    open_doc = TestClient(make_app(rt, token=None)).get("/openapi.json").json()
    assert open_doc["components"]["securitySchemes"] == doc["components"]["securitySchemes"]
    for _, path, op in operations(open_doc):
        # Declared, but optional: Swagger UI and clients may send a token; the service needs none.
        assert op.get("security") == (None if path == "/healthz" else [{"bearerAuth": []}, {}]), path
        assert "401" not in op["responses"], path
    validate(open_doc)


def test_idempotency_key_is_an_optional_header_of_calls_and_events(doc: dict[str, Any]) -> None:
    def keyed(op: dict[str, Any]) -> bool:
        found = [p for p in op.get("parameters", []) if p["name"] == "Idempotency-Key"]
        assert all(p["in"] == "header" and p["required"] is False for p in found)
        return bool(found)

    for method, path, op in operations(doc):
        is_call = path.startswith("/v1/actors/") and path.count("/") == 5 and "/timers" not in path
        is_event = path.endswith("/events/{event}")
        assert keyed(op) == (method == "post" and (is_call or is_event)), (method, path)


def test_the_document_validates(doc: dict[str, Any]) -> None:
    validate(doc)
    assert doc["openapi"].startswith("3.1")


def test_the_document_follows_types_registered_later(client: TestClient) -> None:
    assert "/v1/actors/OpenapiLate/{actor_id}/hello" not in client.get("/openapi.json").json()["paths"]

    @workflow.virtual_actor(name="OpenapiLate")
    class OpenapiLate:
        def hello(self, who: str) -> str:
            return f"hello {who}"

    assert "/v1/actors/OpenapiLate/{actor_id}/hello" in client.get("/openapi.json").json()["paths"]
    r = client.post("/v1/actors/OpenapiLate/x/hello", json={"kwargs": {"who": "ann"}})
    assert r.json() == {"result": "hello ann"}


def test_docs_are_offline_and_public_and_the_document_stays_guarded(rt: WorkflowRuntime) -> None:
    anonymous = TestClient(make_app(rt))  # a token is configured but not sent
    r = anonymous.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert not re.search(r"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page), "the page names another host"
    urls = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert urls and all(u.startswith("/docs/assets/") for u in urls), urls
    assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"} <= set(urls)
    for url in urls:
        asset = anonymous.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
    assert (
        anonymous.get("/docs/assets/swagger-ui-bundle.js")
        .headers["content-type"]
        .startswith("text/javascript")
    )
    assert anonymous.get("/docs/assets/swagger-ui.css").headers["content-type"].startswith("text/css")
    assert '"/openapi.json"' in page and "preauthorizeApiKey" in page and '"bearerAuth"' in page
    # Nothing else became public: the document, other files, the API.
    for path in ("/openapi.json", "/docs/assets/redoc.standalone.js", "/docs/assets/", "/docs/", "/metrics"):
        assert anonymous.get(path).status_code == 401, path
    assert anonymous.get("/openapi.json", headers=AUTH).status_code == 200
    assert PUBLIC_PATHS == {"/docs", *(u for u in urls)} | {"/docs/assets/favicon.png"}


def test_docs_under_a_root_path_point_below_it(rt: WorkflowRuntime) -> None:
    mounted = TestClient(make_app(rt), root_path="/api")
    r = mounted.get("/api/docs")
    assert r.status_code == 200
    assert '"/api/openapi.json"' in r.text and 'src="/api/docs/assets/swagger-ui-bundle.js"' in r.text
    assert mounted.get("/api/docs/assets/swagger-ui.css").status_code == 200
    assert mounted.get("/api/openapi.json").status_code == 401


def generator() -> str | None:
    """The openapi-python-client program, next to this Python's or on PATH."""
    here = str(pathlib.Path(sys.executable).parent)
    return shutil.which("openapi-python-client", path=os.pathsep.join([here, os.environ.get("PATH", "")]))


@pytest.mark.skipif(
    generator() is None,
    reason="openapi-python-client is not installed (it is in the test extra: pip install -e '.[test]')",
)
def test_a_client_generated_from_the_document_calls_the_bank(
    rt: WorkflowRuntime, tmp_path: pathlib.Path
) -> None:
    app = make_app(rt)
    spec = tmp_path / "openapi.json"
    spec.write_text(TestClient(app, headers=AUTH).get("/openapi.json").text)
    config = tmp_path / "config.yaml"
    config.write_text("package_name_override: bank_client\npost_hooks: []\n")
    out = tmp_path / "bank_client"
    program = generator()
    assert program is not None
    command = [program, "generate", "--path", str(spec), "--meta", "none", "--config", str(config)]
    command += ["--output-path", str(out), "--fail-on-warning"]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        package = importlib.import_module("bank_client")
        models = importlib.import_module("bank_client.models")
        api = {
            name: importlib.import_module(f"bank_client.api.account.account_{name}")
            for name in ("create", "deposit", "withdraw", "get_balance")
        }
        client = package.AuthenticatedClient(base_url="http://testserver", token=TOKEN)
        # No sockets: the generated client's httpx client is a TestClient over the app, sending
        # the header the generated client would.
        auth = {client.auth_header_name: f"{client.prefix} {client.token}"}
        client.set_httpx_client(TestClient(app, base_url="http://testserver", headers=auth))

        opened = api["create"].sync_detailed(
            "alice",
            client=client,
            body=models.AccountInitRequest(kwargs=models.AccountInitKwargs(owner="Alice", balance=100)),
        )
        assert opened.status_code == 201 and opened.parsed.created is True
        deposit = api["deposit"].sync(
            "alice",
            client=client,
            body=models.AccountDepositRequest(kwargs=models.AccountDepositKwargs(amount=50)),
        )
        assert isinstance(deposit, models.AccountDepositResult) and deposit.result == 150
        refused = api["withdraw"].sync_detailed(
            "alice",
            client=client,
            body=models.AccountWithdrawRequest(kwargs=models.AccountWithdrawKwargs(amount=1000)),
            idempotency_key="w-1",
        )
        assert refused.status_code == 409  # declared by the class: the caller's fault
        error = refused.parsed
        assert isinstance(error, models.Error)
        assert (error.error, error.type_, error.builtin) == (
            "method_raised",
            "InsufficientFunds",
            "ValueError",
        )
        assert "less than 1000" in error.message
        taken = api["withdraw"].sync(
            "alice",
            client=client,
            body=models.AccountWithdrawRequest(kwargs=models.AccountWithdrawKwargs(amount=30)),
        )
        assert isinstance(taken, models.AccountWithdrawResult) and taken.result == 120
        balance = api["get_balance"].sync("alice", client=client, body=models.AccountGetBalanceRequest())
        assert isinstance(balance, models.AccountGetBalanceResult) and balance.result == 120

        client.set_httpx_client(TestClient(app, base_url="http://testserver"))  # no token
        denied = api["get_balance"].sync_detailed(
            "alice", client=client, body=models.AccountGetBalanceRequest()
        )
        assert denied.status_code == 401 and denied.parsed.error == "unauthorized"
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "bank_client" or m.startswith("bank_client.")]:
            del sys.modules[name]
