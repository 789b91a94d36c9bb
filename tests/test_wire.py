"""The wire between the HTTP API and its clients: every error the server can report reaches a
remote handle as the type the server raised, with its message and attributes.

The answers come from the server's own encoder (``actorflow.serve.api.error_response``) and
are served by a real HTTP server; the call goes through a real handle over the HTTP client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from _scripted import Script, scripted_server

from actorflow import _wire, errors, workflow
from actorflow.actor import ActorHandle, lookup
from actorflow.actor._context import set_invoker
from actorflow.actor._methods import mark_method_error
from actorflow.client import HttpInvoker
from actorflow.serve.api import error_response

SAMPLE = {
    "actor_type": "WireTarget",
    "actor_id": "w1",
    "method": "poke",
    "workflow_id": "wf-1",
    "key": "k-9",
    "retry_after": 7.0,
    "status": 418,
}


@workflow.virtual_actor(name="WireTarget")
class Target:
    def poke(self) -> int:
        return 1


@pytest.fixture
def handle() -> Iterator[tuple[ActorHandle, Script]]:
    with scripted_server() as (url, script):
        set_invoker(HttpInvoker(url, retry_timeout=0))  # no retries: every answer is final
        try:
            yield ActorHandle(lookup("WireTarget"), "w1"), script
        finally:
            set_invoker(None)


def error_types() -> list[type[errors.ActorflowError]]:
    return [getattr(errors, name) for name in errors.__all__]


def serve_error(script: Script, exc: BaseException) -> dict[str, Any]:
    resp = error_response(exc)
    body: dict[str, Any] = json.loads(bytes(resp.body))
    headers = {k: v for k, v in resp.headers.items() if k in ("retry-after",)}
    script.answers.append((resp.status_code, "application/json", bytes(resp.body), headers))
    return body


@pytest.mark.parametrize("cls", error_types(), ids=lambda c: c.__name__)
def test_every_error_type_reaches_a_remote_handle_as_itself(
    handle: tuple[ActorHandle, Script], cls: type[errors.ActorflowError]
) -> None:
    h, script = handle
    attrs = {k: v for k, v in SAMPLE.items() if k != "status" or issubclass(cls, errors.RemoteError)}
    sent = errors.rebuild(cls, f"the server raised {cls.__name__}", attrs)
    body = serve_error(script, sent)
    assert body["type"] == cls.__name__
    with pytest.raises(errors.ActorflowError) as info:
        h.poke.run()
    got = info.value
    assert type(got) is cls, (body, type(got))
    assert str(got) == str(sent)
    for name, value in attrs.items():
        assert getattr(got, name) == value, name


def test_every_code_the_server_sends_is_in_the_one_table() -> None:
    codes = {code for _, _, code in _wire.ERRORS}
    for cls in error_types():
        status, code = _wire.status_for(errors.rebuild(cls, "x", {}))
        assert code in codes and 400 <= status < 600, cls
    # The five codes that used to come back as a plain RemoteError.
    for code in ("unknown_event", "timeout", "remote_error", "storage_unavailable", "internal_error"):
        assert code in codes


def test_a_method_error_keeps_its_builtin_ancestor(handle: tuple[ActorHandle, Script]) -> None:
    h, script = handle

    class InsufficientFunds(ValueError):
        pass

    exc = InsufficientFunds("balance 3 is below 10")
    mark_method_error(exc)
    serve_error(script, exc)
    with pytest.raises(ValueError, match="balance 3 is below 10") as info:
        h.poke.run()
    assert isinstance(info.value, errors.ActorMethodError)
    assert info.value.remote_type == "InsufficientFunds"


def test_a_server_bug_is_a_remote_error_not_a_crash(handle: tuple[ActorHandle, Script]) -> None:
    h, script = handle
    body = serve_error(script, KeyError("oops"))
    assert body["error"] == "internal_error"
    with pytest.raises(errors.RemoteError) as info:
        h.poke.run()
    assert info.value.status == 500


def test_the_client_sends_the_shared_header_names(handle: tuple[ActorHandle, Script]) -> None:
    h, script = handle
    assert h.poke.options(idempotency_key="k-1").run() == 1
    ((path, headers),) = script.requests
    lowered = {k.lower(): v for k, v in headers.items()}
    assert path == "/v1/actors/WireTarget/w1/poke"
    assert lowered[_wire.IDEMPOTENCY_HEADER] == "k-1"
    assert lowered[_wire.SESSION_HEADER] == "WireTarget/w1"


@pytest.mark.parametrize("key", ["", "x" * 257, 5])
def test_the_idempotency_key_rule_is_one_rule(key: Any) -> None:
    assert _wire.idempotency_key_problem(key) is not None
    with pytest.raises(errors.ConfigError, match="1 to 256"):
        ActorHandle(lookup("WireTarget"), "w1").poke.options(idempotency_key=key)
