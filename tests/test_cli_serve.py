"""``actorflow serve`` as a user runs it, in both of Serve's proxy modes: the installed command,
in a folder holding only the user's module, a child process with a Ray of its own, plain HTTP
requests from several clients, then SIGTERM (what Docker and Kubernetes send) or Ctrl-C, each
answered by one line and a clean exit. Nothing of it may be left running afterwards (a HAProxy
outliving its Ray would keep the port). The access log is off unless asked for."""

from __future__ import annotations

import concurrent.futures
import functools
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict

import httpx
import pytest
from _procs import child, wait_while_alive
from _redis import free_port
from _routing import steady

pytestmark = pytest.mark.slow

HERE = pathlib.Path(__file__).parent


def haproxy_pids() -> set[int]:
    """Live HAProxy processes (a zombie waiting to be reaped holds no port)."""
    out = subprocess.run(["pgrep", "-x", "haproxy"], capture_output=True, text=True).stdout
    live = set()
    for pid in map(int, out.split()):
        try:
            state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            live.add(pid)
    return live


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def user_env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_SERVE_", "RAY_ADDRESS", "ACTORFLOW_"))
    }
    env.pop("PYTHONPATH", None)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


ACCESS_LINE = re.compile(r"POST /v1/actors/\S+ 200 ")


@pytest.mark.parametrize(
    ("proxy", "stop", "access_log"),
    [("haproxy", signal.SIGTERM, False), ("classic", signal.SIGINT, True)],
    ids=["haproxy-sigterm", "classic-ctrl-c-access-log"],
)
def test_serve_in_each_proxy_mode_then_a_signal_leaves_nothing_running(
    proxy: str, stop: signal.Signals, access_log: bool, tmp_path: pathlib.Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # A user's first own module, in a folder of its own, served from there by the installed
    # command: nothing else puts that folder on the module path.
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_actors.py").write_text((HERE / "serve_actors.py").read_text())
    env = user_env()
    log = tmp_path / "serve.log"
    before = haproxy_pids()
    command = pathlib.Path(sys.executable).with_name("actorflow")
    cmd = [str(command), "serve", "my_actors", "--storage", f"sqlite://{tmp_path}/serve.db"]
    cmd += ["--port", str(port), "--proxy", proxy] + (["--access-log"] if access_log else [])
    with log.open("w") as out, child(cmd, env=env, cwd=project, stdout=out, stderr=subprocess.STDOUT) as proc:
        ready = "Ctrl-C stops it."  # printed once the application is deployed
        wait_while_alive(proc, lambda: ready in log.read_text(), "the service to be ready", timeout=150)
        actors = [f"t{i}" for i in range(4)]
        owners: dict[str, set[str]] = defaultdict(set)

        def client(c: int) -> list[tuple[str, int]]:
            got = []
            with httpx.Client(base_url=url, timeout=60) as http:
                for i in range(10):
                    actor = actors[(c + i) % len(actors)]
                    r = http.post(f"/v1/actors/Tally/{actor}/incr")  # plain: no routing header
                    r.raise_for_status()
                    owners[actor].add(r.headers["x-actorflow-replica"])
                    got.append((actor, r.json()["result"]))
            return got

        with httpx.Client(base_url=url, timeout=60) as http:
            for a in actors:
                http.post(f"/v1/actors/Tally/{a}").raise_for_status()
        if proxy == "haproxy":
            steady(url, replicas=2)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = [r for f in [pool.submit(client, c) for c in range(8)] for r in f.result(timeout=120)]
        for a in actors:
            values = sorted(v for actor, v in results if actor == a)
            assert values == list(range(1, len(values) + 1)), (a, values)
        if proxy == "haproxy":
            assert all(len(o) == 1 for o in owners.values()), owners  # one owner per actor
        mine = haproxy_pids() - before
        assert bool(mine) == (proxy == "haproxy")
        proc.send_signal(stop)
        proc.wait(timeout=90)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert [line for line in text.splitlines() if "stopping" in line] == [f"actorflow: {stop.name}: stopping"]
    assert bool(ACCESS_LINE.search(text)) == access_log, text[-3000:]
    assert not (haproxy_pids() & mine), "HAProxy outlived actorflow serve"
    assert not answers(url)


def test_ctrl_c_during_start_up_stops_cleanly_once_started(tmp_path: pathlib.Path) -> None:
    """Ctrl-C while Ray starts: one line, then a clean stop once start-up is over (a Ray
    interrupted half-way could leave its processes behind), no traceback, no service."""
    port = free_port()
    log = tmp_path / "serve.log"
    before = haproxy_pids()
    command = pathlib.Path(sys.executable).with_name("actorflow")
    cmd = [str(command), "serve", "examples.bank", "--storage", f"sqlite://{tmp_path}/serve.db"]
    cmd += ["--port", str(port)]
    root = HERE.parent  # examples/ is imported from the working directory
    with (
        log.open("w") as out,
        child(cmd, env=user_env(), cwd=root, stdout=out, stderr=subprocess.STDOUT) as proc,
    ):
        time.sleep(3)  # past its imports (0.5 s here) and the build, into ray.init (7 s here)
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    assert "actorflow: SIGINT: stopping once start-up has finished (SIGINT again stops now)" in text
    assert "Ctrl-C stops it." not in text  # it never said it was serving
    assert not (haproxy_pids() - before), "a HAProxy outlived actorflow serve"
    assert not answers(f"http://127.0.0.1:{port}")


@functools.cache
def python_startup() -> float:
    """How long Python takes here to start (its ``site``, the editable install's finder) before
    it runs a line of the command: a signal in that time reaches the interpreter, not
    actorflow (seen: 50-60 ms on a slow machine, where a Ctrl-C at 50 ms gave Python's
    traceback from inside its import system). Half as much again, for the spread."""
    took = []
    for _ in range(3):
        start = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], env=user_env(), check=True)
        took.append(time.monotonic() - start)
    return 1.5 * max(took)


@pytest.mark.parametrize("after", [0.05, 0.15, 0.3])
def test_ctrl_c_while_the_command_loads_is_one_line(after: float) -> None:
    """Ctrl-C in the first moments of the command, while Python is still importing it: one
    line and status 130, never Python's KeyboardInterrupt traceback. ``after`` counts from
    when Python has started."""
    command = pathlib.Path(sys.executable).with_name("actorflow")
    startup = python_startup()
    proc = subprocess.Popen(
        [str(command), "workflows", "list", "--address", f"http://127.0.0.1:{free_port()}"],
        env=user_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(startup + after)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    # Interrupted (130) while loading; or it had loaded and then failed to reach the address (1).
    assert proc.returncode in (130, 1), (proc.returncode, err)
    # One line (after the line break click writes first when the signal reaches a command).
    assert err.lstrip("\n").count("\n") == 1 and err.lstrip("\n").startswith("actorflow: "), err
    assert proc.returncode == 1 or err.strip() == "actorflow: interrupted", err
