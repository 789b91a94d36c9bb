"""Where ``actorflow serve`` and ``actorflow call`` take their bearer token from, and that they
never print it. No Ray cluster: ``call`` talks to a small HTTP server in a thread, and ``serve``
runs with Ray's start-up functions replaced.

What is promised: the token comes from ``--token``, ``--token-file``, ``$ACTORFLOW_TOKEN`` or
``$ACTORFLOW_TOKEN_FILE`` (a flag wins over the environment; two sources of one kind are an
error); a token file is its text with surrounding whitespace stripped; a file that cannot be
read, is empty or holds more than one line ends the command with a message and status 2, no
traceback; and the token appears in no output.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from _redis import free_port

from actorflow.cli import main
from actorflow.errors import ConfigError
from actorflow.serve.settings import read_token_file, resolve_token

TOKEN = "tok-3f9a7c1e5b2d4806"


@pytest.fixture(autouse=True)
def _no_token_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with neither variable set (a developer's shell may export one)."""
    monkeypatch.delenv("ACTORFLOW_TOKEN", raising=False)
    monkeypatch.delenv("ACTORFLOW_TOKEN_FILE", raising=False)


def token_file(tmp_path: Path, text: str | bytes, name: str = "token") -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


# -- resolution ----------------------------------------------------------------------------------


def test_token_file_is_its_text_stripped(tmp_path: Path) -> None:
    assert read_token_file(token_file(tmp_path, f"  {TOKEN}\n\n")) == TOKEN
    assert resolve_token(None, token_file(tmp_path, f"{TOKEN}\r\n"), environ={}) == TOKEN


def test_explicit_token_and_no_token(tmp_path: Path) -> None:
    assert resolve_token(TOKEN, None, environ={}) == TOKEN
    assert resolve_token(None, None, environ={}) is None
    assert resolve_token("", "", environ={"ACTORFLOW_TOKEN": ""}) is None  # empty is not given


def test_environment_variables(tmp_path: Path) -> None:
    path = token_file(tmp_path, TOKEN + "\n")
    assert resolve_token(None, None, environ={"ACTORFLOW_TOKEN": TOKEN}) == TOKEN
    assert resolve_token(None, None, environ={"ACTORFLOW_TOKEN_FILE": path}) == TOKEN
    # Either flag wins over either variable.
    both = {"ACTORFLOW_TOKEN": "from-env", "ACTORFLOW_TOKEN_FILE": "/nonexistent/token"}
    assert resolve_token(TOKEN, None, environ=both) == TOKEN
    assert resolve_token(None, path, environ=both) == TOKEN


def test_two_sources_of_one_kind_are_an_error(tmp_path: Path) -> None:
    path = token_file(tmp_path, TOKEN)
    with pytest.raises(ConfigError, match="not both"):
        resolve_token(TOKEN, path, environ={})
    with pytest.raises(ConfigError, match="both set"):
        resolve_token(None, None, environ={"ACTORFLOW_TOKEN": TOKEN, "ACTORFLOW_TOKEN_FILE": path})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read token file .*: No such file or directory"),
        ("directory", "cannot read token file .*: Is a directory"),
        ("", "is empty"),
        (" \n\t\n", "is empty"),
        (f"{TOKEN}\nsecond line\n", "on one line"),
        (b"\xfftok-" + TOKEN.encode(), "not UTF-8"),
    ],
    ids=["missing", "directory", "empty", "blank", "two-lines", "not-utf8"],
)
def test_bad_token_file_is_a_config_error(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    if content is None:
        path = str(tmp_path / "missing")
    elif content == "directory":
        path = str(tmp_path)
    else:
        path = token_file(tmp_path, content)
    with pytest.raises(ConfigError, match=message) as caught:
        resolve_token(None, path, environ={})
    assert TOKEN not in str(caught.value)
    with pytest.raises(ConfigError, match=message):
        resolve_token(None, None, environ={"ACTORFLOW_TOKEN_FILE": path})


def test_builder_takes_token_file_argument_and_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from actorflow.serve.app import settings_from

    storage = f"sqlite:///{tmp_path}/x.db"
    path = token_file(tmp_path, TOKEN + "\n")
    assert settings_from({"storage": storage, "token_file": path})["token"] == TOKEN
    assert settings_from({"storage": storage})["token"] is None
    monkeypatch.setenv("ACTORFLOW_TOKEN_FILE", path)
    assert settings_from({"storage": storage})["token"] == TOKEN
    assert settings_from({"storage": storage, "token": "from-args"})["token"] == "from-args"
    monkeypatch.setenv("ACTORFLOW_TOKEN", "from-env")
    with pytest.raises(ConfigError, match="both set"):
        settings_from({"storage": storage})
    monkeypatch.delenv("ACTORFLOW_TOKEN_FILE")
    assert settings_from({"storage": storage})["token"] == "from-env"  # as before token files
    with pytest.raises(ConfigError, match="is empty"):
        settings_from({"storage": storage, "token_file": token_file(tmp_path, "", "empty")})


# -- actorflow call --------------------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """Answers every POST with ``{"result": 42}`` and keeps the requests' paths and headers."""

    seen: list[tuple[str, dict[str, str]]]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        body = json.dumps({"result": 42}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test's stderr to what the command writes


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """(address, requests seen) of a recording HTTP server on a free port of 127.0.0.1."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)  # httpx would send a local call through a proxy
    seen: list[tuple[str, dict[str, str]]] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the test HTTP server did not stop"


def test_call_sends_the_token_from_a_file(
    tmp_path: Path, service: tuple[str, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    address, seen = service
    path = token_file(tmp_path, f"\n{TOKEN}\n")
    status = main(["call", "Account", "alice", "deposit", "[5]", "--address", address, "--token-file", path])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert out.strip() == "42"
    [(url, headers)] = seen
    assert url == "/v1/actors/Account/alice/deposit"
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in out + err


def test_call_reads_the_token_file_variable(
    tmp_path: Path,
    service: tuple[str, list[Any]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address, seen = service
    monkeypatch.setenv("ACTORFLOW_TOKEN_FILE", token_file(tmp_path, TOKEN))
    assert main(["call", "Account", "alice", "get_balance", "--address", address]) == 0
    assert seen[0][1]["authorization"] == f"Bearer {TOKEN}"
    out, err = capsys.readouterr()
    assert TOKEN not in out + err


def test_call_without_a_token_sends_no_authorization(
    service: tuple[str, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    address, seen = service
    assert main(["call", "Account", "alice", "get_balance", "--address", address]) == 0
    assert "authorization" not in seen[0][1]


@pytest.mark.parametrize("how", ["flag", "variable"])
def test_call_with_a_bad_token_file_fails_cleanly(
    tmp_path: Path,
    service: tuple[str, list[Any]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    address, seen = service
    args = ["call", "Account", "alice", "get_balance", "--address", address]
    for path in (token_file(tmp_path, "\n"), str(tmp_path / "missing")):
        if how == "flag":
            status = main([*args, "--token-file", path])
        else:
            monkeypatch.setenv("ACTORFLOW_TOKEN_FILE", path)
            status = main(args)
        _, err = capsys.readouterr()
        assert status == 2
        assert err.startswith("actorflow: ") and path in err, err
        assert "Traceback" not in err
    assert seen == []  # refused before any request


def test_call_refuses_token_and_token_file_together(
    tmp_path: Path, service: tuple[str, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    address, seen = service
    path = token_file(tmp_path, TOKEN)
    assert main(["call", "A", "a", "m", "--address", address, "--token", TOKEN, "--token-file", path]) == 2
    out, err = capsys.readouterr()
    assert err == "actorflow: give the token or a token file, not both\n"
    assert TOKEN not in out + err
    assert seen == []


@pytest.mark.parametrize("command", ["serve", "call", "actors list", "workflows status"])
def test_token_help_warns_about_the_process_table(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command.split(), "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # help text wraps lines anywhere
    assert "--token-file PATH" in text
    assert "Other users can read it in the process table, so prefer $ACTORFLOW_TOKEN or --token-file" in text
    assert "ACTORFLOW_TOKEN_FILE" in text


# -- actorflow serve --------------------------------------------------------------------------------


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Ray's start-up replaced by recorders, and a real SIGTERM sent to this process just after
    the application is deployed, so serve stops as soon as it is up (through its handler). The
    environment ``serve`` sets up for Ray (its proxy mode) is put back afterwards."""
    import ray
    from ray import serve

    calls: dict[str, Any] = {}

    def deployed(app: Any, **kw: Any) -> None:
        calls.setdefault("serve.run", kw)
        # Once serve waits (a signal during start-up would stop it before it says it is up).
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()

    monkeypatch.setattr(ray, "init", lambda **kw: calls.setdefault("ray.init", kw))
    monkeypatch.setattr(ray, "shutdown", lambda: calls.setdefault("ray.shutdown", True))
    monkeypatch.setattr(serve, "start", lambda **kw: calls.setdefault("serve.start", kw))
    monkeypatch.setattr(serve, "run", deployed)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    saved = dict(os.environ)
    yield calls
    os.environ.clear()
    os.environ.update(saved)
    assert {s: signal.getsignal(s) for s in handlers} == handlers, "serve left its signal handlers"


def test_serve_never_prints_the_token_or_the_redis_password(
    tmp_path: Path, no_ray: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = token_file(tmp_path, TOKEN + "\n")
    # Nothing connects to this Redis: the application is built, never started.
    storage = "redis://:s3cret-redis-pw@127.0.0.1:1/0"
    port = str(free_port())
    status = main(["serve", "examples.bank", "--storage", storage, "--port", port, "--token-file", path])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "serve.run" in no_ray and "ray.shutdown" in no_ray
    assert '-H "Authorization: Bearer $ACTORFLOW_TOKEN"' in out  # the example names the variable
    assert TOKEN not in out + err
    assert "s3cret-redis-pw" not in out + err


def test_serve_refuses_a_port_in_use_before_ray(
    tmp_path: Path, no_ray: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Serve listens with SO_REUSEPORT: without this check a second service on a busy port
    would start, report itself ready and take half of the first one's connections."""
    import socket

    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as Serve's own listener
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status = main(
            ["serve", "examples.bank", "--storage", f"sqlite:///{tmp_path}/x.db", "--port", str(port)]
        )
    _, err = capsys.readouterr()
    assert status == 2
    assert err.startswith(f"actorflow: cannot listen on port {port} of 127.0.0.1 (Address already in use)")
    assert "another actorflow serve" in err and "Traceback" not in err
    assert "ray.init" not in no_ray


def test_serve_with_a_bad_token_file_stops_before_ray(
    tmp_path: Path, no_ray: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["serve", "--storage", f"sqlite:///{tmp_path}/x.db", "--token-file", str(tmp_path / "no")])
    _, err = capsys.readouterr()
    assert status == 2
    assert err.startswith("actorflow: cannot read token file ") and "Traceback" not in err
    assert "ray.init" not in no_ray


def test_help_names_every_variable_of_serve(capsys: pytest.CaptureFixture[str]) -> None:
    """Each option of serve shows the variable it also reads, and the top-level help lists them."""
    assert main(["serve", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in ("STORAGE", "HOST", "PORT", "REPLICAS", "PROXY", "ACCESS_LOG", "NUM_CPUS", "TOKEN_FILE"):
        assert f"ACTORFLOW_{name}" in text, name
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "ACTORFLOW_ADDRESS" in text and "ACTORFLOW_MODULES" in text and "Exit status: 0" in text
