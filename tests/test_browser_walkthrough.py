"""A new user's first service, as the README's "Your own actors, served" tells it, in a real
browser: its actor class written verbatim into an empty folder, ``actorflow serve`` run there
(the installed command, its own Ray), its curl line run by curl with no create step, then
``/docs`` opened in headless Chromium (Debian's ``chromium`` and ``chromium-driver``) where
"Try it out" calls the method, and SIGTERM stops the service with one line. (The same page
with a token typed into its form is tried in tests/test_console.py's browser test.)

The page must work offline: Chromium is started with every host but the service's blocked."""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from _procs import child, wait_while_alive
from _redis import free_port
from _swagger import try_it_out

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(
        "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
        ".ci/run installs them)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver")


GRACE = '{"kwargs": {"name": "Grace"}}'


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Your own actors, served", 1)[1].split("\n## ", 1)[0]


def blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    # Offline: any host but this machine fails, so a page that needs a CDN cannot work.
    options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_first_actor_served_called_with_curl_tried_in_docs_and_stopped(
    tmp_path: pathlib.Path, browser: object
) -> None:
    """As the README says, step by step."""
    section = readme_section()
    [module] = blocks(section, "python")
    [shell] = blocks(section, "sh")
    commands = [line for line in shell.splitlines() if line.strip() and not line.startswith("#")]
    answers = [line[2:] for line in shell.splitlines() if line.startswith("# ")]
    serve_line, curl_line = commands
    name = re.search(r"`(\w+)\.py`", section).group(1)  # type: ignore[union-attr]
    assert shlex.split(serve_line) == ["actorflow", "serve", name]

    folder = tmp_path / "first-service"
    folder.mkdir()
    (folder / f"{name}.py").write_text(module)
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_SERVE_", "RAY_ADDRESS", "ACTORFLOW_"))
    }
    env.pop("PYTHONPATH", None)
    bin_dir = str(pathlib.Path(sys.executable).parent)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",  # as the README says
        XDG_DATA_HOME=str(tmp_path / "data"),  # the per-user default storage, here in a temp dir
        ACTORFLOW_PORT=str(port),  # the README's 8000 may be taken here
        RAY_USAGE_STATS_ENABLED="0",
    )
    log = tmp_path / "serve.log"
    with (
        log.open("w") as out,
        child(shlex.split(serve_line), env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT) as proc,
    ):
        wait_while_alive(proc, lambda: "Ctrl-C stops it." in log.read_text(), "the service", timeout=150)
        base = f"http://127.0.0.1:{port}"
        curl = shlex.split(curl_line.replace("localhost:8000", base))
        got = subprocess.run(curl, capture_output=True, text=True, timeout=60, env=env)
        assert got.returncode == 0, got.stderr
        assert got.stdout == answers[0]  # {"result":"Hello, Ada! You are visitor 1."}

        browser.get(f"{base}/docs")  # type: ignore[attr-defined]
        tried = try_it_out(browser, "/v1/actors/Greeter/{actor_id}/greet", "front-desk", GRACE)
        assert '"name"' in tried.example  # Swagger's example, from the schema
        assert tried.status == "200", tried.response
        assert '"result": "Hello, Grace! You are visitor 2."' in tried.response
        assert "curl -X 'POST'" in tried.block  # the request Swagger shows is the one it sent
        assert "Authorization: Bearer" not in tried.block

        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text
    assert [line for line in text.splitlines() if "stopping" in line] == ["actorflow: SIGTERM: stopping"]
