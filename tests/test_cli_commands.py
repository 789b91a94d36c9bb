"""Every form of the ``actorflow`` command the README documents, against a real service: the
installed ``actorflow serve`` in a child process (its own Ray, a token file), and the commands
that talk to it over HTTP (``call``, ``actors``, ``timers``, ``workflows``), run in process
through ``main`` and, for the exit statuses, as the installed command.

What is promised: every option is accepted after its subcommand and from its environment
variable; ``--json`` prints the API's JSON; exit status 0 on success, 1 when the command ran
and failed (with one line that says why), 2 for a usage error; no traceback.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import click
import pytest
from _procs import child, wait_while_alive
from _redis import free_port

from actorflow.cli import main

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMAND = pathlib.Path(sys.executable).with_name("actorflow")
TOKEN = "cli-token-5d1e0b9a"

# A user's module next to the examples: a job whose workflow fails while a flag file exists,
# so a failed workflow can be resumed from the command line once the flag is gone.
JOBS = """
import os
from typing import Any

from actorflow import workflow


@workflow.step
def prepare(n: int) -> int:
    return n * 2


@workflow.step
def risky(value: int, flag: str) -> int:
    if os.path.exists(flag):
        raise RuntimeError(f"flag {flag} is set")
    return value + 1


@workflow.virtual_actor
class Job:
    def __init__(self) -> None:
        self.started = 0

    def start(self, n: int, flag: str) -> Any:
        self.started += 1
        return risky.step(prepare.step(n), flag)
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment a user's shell would have: the service's address and token file."""
    tmp = tmp_path_factory.mktemp("cli")
    project = tmp / "project"
    project.mkdir()
    (project / "jobs.py").write_text(JOBS)
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_SERVE_", "RAY_ADDRESS", "ACTORFLOW_"))
    }
    env.update(
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=str(ROOT),  # examples/, beside the user's own module
        ACTORFLOW_STORAGE=f"sqlite://{tmp}/cli.db",  # options from their variables
        ACTORFLOW_PORT=str(port),
        ACTORFLOW_TOKEN_FILE=str(token_file),
    )
    cmd = [str(COMMAND), "serve", "examples.bank", "examples.order", "jobs.py", "--replicas", "1"]
    log = tmp / "serve.log"
    with log.open("w") as out, child(cmd, env=env, cwd=project, stdout=out, stderr=subprocess.STDOUT) as proc:
        wait_while_alive(proc, lambda: "Ctrl-C stops it." in log.read_text(), "the service", timeout=150)
        yield {
            "ACTORFLOW_ADDRESS": f"http://127.0.0.1:{port}",
            "ACTORFLOW_TOKEN_FILE": str(token_file),
            "flag": str(tmp / "flag"),
        }
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
    assert proc.returncode == 0, log.read_text()[-3000:]


@pytest.fixture
def shell(service: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in ("ACTORFLOW_TOKEN", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACTORFLOW_ADDRESS", service["ACTORFLOW_ADDRESS"])
    monkeypatch.setenv("ACTORFLOW_TOKEN_FILE", service["ACTORFLOW_TOKEN_FILE"])
    return service


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert TOKEN not in out + err
    return status, out, err


def ok(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    status, out, err = run(capsys, *argv)
    assert status == 0, err
    return out


def test_call_activates_and_reports_business_errors(shell: dict[str, str], capsys: Any) -> None:
    # A fresh id: the call activates it (Account's __init__ has defaults).
    assert ok(capsys, "call", "Account", "alice", "deposit", "[100]") == "100\n"
    assert ok(capsys, "call", "Account", "alice", "withdraw", '{"kwargs": {"amount": 30}}') == "70\n"
    assert (
        ok(capsys, "call", "Account", "alice", "transfer", '["bob", 20]', "--idempotency-key", "t-1")
        == "50\n"
    )
    assert (
        ok(capsys, "call", "Account", "alice", "transfer", '["bob", 20]', "--idempotency-key", "t-1")
        == "50\n"
    )
    assert ok(capsys, "call", "Account", "bob", "get_balance") == "20\n"  # one transfer, not two
    status, out, err = run(capsys, "call", "Account", "alice", "withdraw", "[1000]")
    assert (status, out) == (1, "")
    assert err == ("actorflow: HTTP 409 method_raised: InsufficientFunds: balance 50 is less than 1000\n")


def test_actors_list_get_delete(shell: dict[str, str], capsys: Any) -> None:
    for actor in ("a1", "a2", "a3"):
        ok(capsys, "call", "Account", actor, "deposit", "[1]")
    ids = ok(capsys, "actors", "list", "Account").split()
    assert {"a1", "a2", "a3"} <= set(ids) and ids == sorted(ids)
    status, out, err = run(capsys, "actors", "list", "Account", "--limit", "1")
    assert status == 0 and out == f"{ids[0]}\n" and err == f"(more: --start-after {ids[0]})\n"
    assert json.loads(
        ok(capsys, "actors", "list", "Account", "--start-after", "a1", "--limit", "1", "--json")
    ) == {
        "ids": ["a2"],
        "next": "a2",
    }
    got = json.loads(ok(capsys, "actors", "get", "Account", "a2", "--json"))
    assert got["state"]["balance"] == 1 and got["version"] >= 1
    text = ok(capsys, "actors", "get", "Account", "a2")
    assert text.startswith("Account/a2  version ") and '"balance": 1' in text
    assert ok(capsys, "actors", "delete", "Account", "a2", "--yes") == "deleted Account/a2\n"
    assert "a2" not in ok(capsys, "actors", "list", "Account").split()
    status, _, err = run(capsys, "actors", "get", "Account", "a2")
    assert status == 1 and err.startswith("actorflow: HTTP 404 actor_not_found: ")


def test_timers_list(shell: dict[str, str], capsys: Any) -> None:
    ok(capsys, "call", "Order", "o7", "place", '{"kwargs": {"pay_within": 3600}}')
    got = json.loads(ok(capsys, "timers", "list", "Order", "o7", "--json"))
    timer = got["timers"]["payment_timeout"]
    assert timer["method"] == "expire" and 3500 < timer["due"] - time.time() <= 3600
    lines = ok(capsys, "timers", "list", "Order", "o7").splitlines()
    assert lines[0].split() == ["TIMER", "METHOD", "DUE", "SCHEDULE"]
    assert lines[1].split()[:2] == ["payment_timeout", "expire"]
    assert re.search(r"\(in (59m\d\ds|1h00m)\)", lines[1]), lines[1]


def test_workflows_list_status_resume_cancel(shell: dict[str, str], capsys: Any) -> None:
    flag = pathlib.Path(shell["flag"])
    flag.write_text("set")
    status, _, err = run(capsys, "call", "Job", "j1", "start", json.dumps([20, str(flag)]))
    assert status == 1 and f"flag {flag} is set" in err
    rows = [line.split() for line in ok(capsys, "workflows", "list", "--status", "FAILED").splitlines()]
    assert rows[0] == ["WORKFLOW", "STATUS"]
    [wid] = [w for w, s in rows[1:] if w.startswith("Job:j1:")]
    listed = json.loads(ok(capsys, "workflows", "list", "--json"))["workflows"]
    assert {"id": wid, "status": "FAILED"} in listed
    steps = json.loads(ok(capsys, "workflows", "status", wid, "--json"))["steps"]
    assert [(s["name"], s["status"]) for s in steps][-2:] == [("prepare", "SUCCESSFUL"), ("risky", "FAILED")]
    flag.unlink()
    assert ok(capsys, "workflows", "resume", wid).split() == [wid, "RUNNING"]
    deadline = time.monotonic() + 60
    while json.loads(ok(capsys, "workflows", "status", wid, "--json"))["status"] != "SUCCESSFUL":
        assert time.monotonic() < deadline, "the resumed workflow did not finish"
        time.sleep(0.3)
    text = ok(capsys, "workflows", "status", wid)
    assert text.startswith(f"{wid}  SUCCESSFUL\n")
    table = [line.split() for line in text.splitlines() if line.split()[:1] and "risky" in line]
    assert table and table[0][2:4] == ["SUCCESSFUL", "1"]  # attempts of the run that finished it
    # A second failed job, cancelled: it can no longer be resumed.
    flag.write_text("set")
    run(capsys, "call", "Job", "j2", "start", json.dumps([1, str(flag)]))
    [wid2] = [
        w["id"]
        for w in json.loads(ok(capsys, "workflows", "list", "--json"))["workflows"]
        if w["id"].startswith("Job:j2:")
    ]
    assert ok(capsys, "workflows", "cancel", wid2).split() == [wid2, "CANCELED"]
    assert json.loads(ok(capsys, "workflows", "status", wid2, "--json"))["status"] == "CANCELED"
    status, _, err = run(capsys, "workflows", "status", "no-such-workflow")
    assert status == 1 and err.startswith("actorflow: HTTP 404 workflow_not_found: ")


def test_exit_statuses_of_the_installed_command(service: dict[str, str], tmp_path: pathlib.Path) -> None:
    address = service["ACTORFLOW_ADDRESS"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTORFLOW_")}

    def command(*argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(COMMAND), *argv], env={**env, **extra}, capture_output=True, text=True, timeout=60
        )
        assert "Traceback" not in done.stdout + done.stderr
        return done

    assert command("--version").stdout.startswith("actorflow ")
    # No token: the service says 401, and the line says how to give one.
    done = command("call", "Account", "alice", "get_balance", "--address", address)
    assert done.returncode == 1
    assert done.stderr.startswith("actorflow: HTTP 401 ") and "--token-file" in done.stderr
    # The token file from the option, after the subcommand's arguments.
    done = command(
        "call",
        "Account",
        "alice",
        "get_balance",
        "--address",
        address,
        "--token-file",
        service["ACTORFLOW_TOKEN_FILE"],
    )
    assert done.returncode == 0 and done.stdout.strip().isdigit(), done.stderr
    # Nothing listens there: one line, status 1.
    done = command("workflows", "list", "--address", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "cannot reach the service" in done.stderr and "$ACTORFLOW_ADDRESS" in done.stderr
    # Usage errors: status 2.
    assert command("actors", "get", "Account").returncode == 2  # the id is missing
    assert command("call", "Account", "a", "m", "not json", "--address", address).returncode == 2
    assert command("serve", "--port", "0").returncode == 2
    assert command("workflows", "list", "--address", "localhost:8000").returncode == 2
    assert command("no-such-command").returncode == 2


def parse(group: click.Group, argv: list[str]) -> None:
    """Parse ``argv`` down to its command, as the command line would, without running it."""
    ctx = group.make_context("actorflow", list(argv))
    command: click.Command | None = group
    rest = argv
    while isinstance(command, click.Group):
        _, command, rest = command.resolve_command(ctx, rest)
        assert command is not None
        ctx = command.make_context(command.name or "", list(rest), parent=ctx)
        rest = ctx.protected_args + ctx.args if isinstance(command, click.Group) else []


def readme_forms() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_every_readme_form_runs(shell: dict[str, str], capsys: Any) -> None:
    """Each line of the README's command-line block, as written: the commands that talk to a
    service run against this one (WORKFLOW_ID: a failed workflow of its own); ``serve``,
    ``demo`` and ``storage migrate`` are parsed and checked here and run by their own tests
    (test_cli_serve, test_cli_demo, test_redis_migrate)."""
    from actorflow.cli import cli

    flag = pathlib.Path(shell["flag"])
    flag.write_text("set")
    run(capsys, "call", "Job", "readme", "start", json.dumps([3, str(flag)]))
    [wid] = [
        w["id"]
        for w in json.loads(ok(capsys, "workflows", "list", "--json"))["workflows"]
        if w["id"].startswith("Job:readme:")
    ]
    forms = readme_forms()
    assert len(forms) >= 14 and all(f[0] == "actorflow" for f in forms)
    assert {" ".join(f[1:3]) for f in forms} >= {
        "actors list",
        "actors get",
        "actors delete",
        "timers list",
        "workflows list",
        "workflows status",
        "workflows resume",
        "workflows cancel",
    }
    for form in forms:
        argv = [wid if word == "WORKFLOW_ID" else word for word in form[1:]]
        if argv[0] in ("serve", "demo", "storage"):
            parse(cli, argv)  # checks every option's value, runs nothing
            continue
        status, out, err = run(capsys, *argv)
        assert status == 0, (form, err)
        assert out or argv == ["--version"], form
    assert ok(capsys, "actors", "list", "Account", "--start-after", "alice", "--limit", "1") != "alice\n"
