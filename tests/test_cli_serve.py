"""``actorflow serve`` as a user runs it, in both of Serve's proxy modes: the installed command,
in a folder holding only the user's module, a child process with a Ray of its own, plain HTTP
requests from several clients, then Ctrl-C. Nothing of it may be left
running afterwards (a HAProxy outliving its Ray would keep the port)."""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import signal
import subprocess
import sys
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


@pytest.mark.parametrize("proxy", ["haproxy", "classic"])
def test_serve_in_each_proxy_mode_then_ctrl_c_leaves_nothing_running(
    proxy: str, tmp_path: pathlib.Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # A user's first own module, in a folder of its own, served from there by the installed
    # command: nothing else puts that folder on the module path.
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_actors.py").write_text((HERE / "serve_actors.py").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_SERVE_", "RAY_ADDRESS"))}
    env.pop("PYTHONPATH", None)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    log = tmp_path / "serve.log"
    before = haproxy_pids()
    command = pathlib.Path(sys.executable).with_name("actorflow")
    cmd = [str(command), "--storage", f"sqlite://{tmp_path}/serve.db", "serve", "my_actors"]
    cmd += ["--port", str(port), "--proxy", proxy]
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
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=90)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert not (haproxy_pids() & mine), "HAProxy outlived actorflow serve"
    assert not answers(url)
