"""The web console at ``/ui``.

In-process (TestClient over a LocalBackend): the page and its two files are public, come from
the package and name no other host, while the data stays behind the token. In a real browser
(headless Chromium from Debian's ``chromium`` and ``chromium-driver``, driven by selenium,
every host but this machine blocked) against the Serve application on the session's Ray
cluster, with a token: sign in, find an actor created through the API, read its state, timers
and pending messages (and see them change live), delete actors by id prefix in bulk (a dry run's
count, a confirmation, the run), open a workflow's step graph, count a bulk cancel, cancel a
running workflow, the API confirming each effect. Screenshots at 1280x800 go to ``tests/artifacts/console/``.

This module also defines the actor types the service hosts (its replicas import it by name).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import re
import shutil
import time
import tomllib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from _redis import free_port
from _swagger import try_it_out
from fastapi.testclient import TestClient

from actorflow import workflow
from actorflow.engine import WorkflowRuntime
from actorflow.serve.api import ApiSettings, create_api
from actorflow.serve.backend import LocalBackend, load_modules
from actorflow.serve.console import CONTENT_SECURITY_POLICY, FILES, PUBLIC_PATHS, console_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOKEN = "console-7d41c2"
AUTH = {"authorization": f"Bearer {TOKEN}"}
ARTIFACTS = ROOT / "tests" / "artifacts" / "console"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WIDTH, HEIGHT = 1280, 800


# --- what the service hosts ----------------------------------------------------------------------


@workflow.step
def fetch_part(part: str) -> str:
    return part.upper()


@workflow.step
def assemble(first: str, second: str, note: Any) -> str:
    return f"{first}+{second}: {note}"


@workflow.virtual_actor(name="ConsoleJob")
class ConsoleJob:
    """Launches a small diamond of steps as its sub-workflow; with ``wait`` the last step also
    waits for an event nobody posts, so the workflow stays RUNNING until it is cancelled."""

    def __init__(self) -> None:
        self.runs = 0

    def build(self, wait: bool = False) -> Any:
        self.runs += 1
        first, second = fetch_part.step("a"), fetch_part.step("b")
        note = workflow.wait_for_event("go") if wait else "done"
        return assemble.step(first, second, note)


@workflow.virtual_actor(name="ConsoleBag")
class ConsoleBag:
    """State that is not JSON (a set): stored pickled, which the console does not show."""

    def __init__(self) -> None:
        self.tags = {"red", "blue"}

    def tag(self, name: str) -> int:
        self.tags.add(name)
        return len(self.tags)


# --- in-process: the files, the headers, the token ------------------------------------------------


@pytest.fixture
def rt(tmp_path: pathlib.Path) -> Iterator[WorkflowRuntime]:
    runtime = WorkflowRuntime(f"sqlite://{tmp_path}/console.db")
    try:
        yield runtime
    finally:
        runtime.close()


def make_app(rt: WorkflowRuntime) -> Any:
    load_modules(["examples.approval"])
    return create_api(LocalBackend(rt), ApiSettings(token=TOKEN))


def test_the_console_is_public_and_its_data_is_not(rt: WorkflowRuntime) -> None:
    anonymous = TestClient(make_app(rt))  # a token is configured but not sent
    r = anonymous.get("/ui")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "connect-src 'self'" in CONTENT_SECURITY_POLICY and "script-src 'self'" in CONTENT_SECURITY_POLICY
    page = r.text
    assert not re.search(r"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page), "the page names another host"
    urls = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert sorted(urls) == ["/docs", "/ui/console.css", "/ui/console.js", "data:,"]  # data: the blank icon
    kinds = {"/ui/console.js": "text/javascript", "/ui/console.css": "text/css"}
    for url, kind in kinds.items():
        got = anonymous.get(url)
        assert got.status_code == 200 and got.headers["content-type"].startswith(kind), url
        assert got.content == (console_dir() / url.rsplit("/", 1)[1]).read_bytes()
        assert got.headers["x-content-type-options"] == "nosniff"
    slash = anonymous.get("/ui/", follow_redirects=False)
    assert slash.status_code == 308 and slash.headers["location"] == "/ui"
    assert PUBLIC_PATHS == {"/ui", "/ui/", *kinds}
    # Nothing else became public: other files of the folder, the API the console reads.
    for path in ("/ui/index.html", "/ui/nothing.js", "/ui/console.js/x", "/v1/actors", "/v1/workflows"):
        assert anonymous.get(path).status_code == 401, path
    assert anonymous.get("/v1/actors", headers=AUTH).status_code == 200


def test_the_console_under_a_root_path_points_below_it(rt: WorkflowRuntime) -> None:
    mounted = TestClient(make_app(rt), root_path="/api")
    r = mounted.get("/api/ui")
    assert r.status_code == 200
    assert 'src="/api/ui/console.js"' in r.text and 'data-root="/api"' in r.text
    assert mounted.get("/api/ui/console.css").status_code == 200
    assert mounted.get("/api/ui/", follow_redirects=False).headers["location"] == "/api/ui"


def test_the_files_ship_in_the_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]["actorflow.serve"]
    files = sorted(p.name for p in console_dir().iterdir())
    assert files == sorted(["index.html", *FILES])
    for name in files:
        assert any(pathlib.PurePath(f"console/{name}").match(p) for p in patterns), name


def test_the_script_makes_no_markup_of_data_and_calls_no_other_host() -> None:
    script = (console_dir() / "console.js").read_text()
    for risky in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert risky not in script, risky
    hosts = set(re.findall(r"https?://[^\s\"'`]+", script)) - {"http://www.w3.org/2000/svg"}
    assert not hosts, hosts  # the SVG namespace is a name, never fetched
    assert "sessionStorage" in script and "localStorage" not in script  # the token stays in the tab
    css = (console_dir() / "console.css").read_text()
    assert "@import" not in css and "url(" not in css


# --- in a browser, against the Serve application --------------------------------------------------


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        return "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    try:
        import selenium.webdriver  # noqa: F401
    except ImportError:
        return "needs selenium (pip install -e '.[test]')"
    return None


def need_browser() -> None:
    """Skip without a browser, but fail in CI (``.ci/run`` installs one)."""
    missing = browser_missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; .ci/run should have installed it")
        pytest.skip(missing)


@pytest.fixture
def service(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[str]:
    """The Serve application (one replica, SQLite, a token) on the session's Ray cluster."""
    need_browser()  # before starting anything
    request.getfixturevalue("ray_session")
    from ray import serve

    from actorflow.serve.app import APP_NAME, build

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    try:
        args = {
            "modules": ["test_console", "examples.approval"],
            "storage": f"sqlite://{tmp_path}/console.db",
            "token": TOKEN,
            "actor_host_replicas": 1,
        }
        serve.run(build(args), name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@pytest.fixture
def browser() -> Iterator[Any]:
    need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={WIDTH},{HEIGHT}")
    # Offline: any host but this machine fails, so a page that needs a CDN cannot work.
    options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
        )
        yield driver
    finally:
        driver.quit()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """``check()``'s first truthy answer, asked every 0.2 s (an exception counts as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = check()
            if answer:
                return answer
        except Exception:  # not there yet
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


class Console:
    """The page in the browser: explicit waits, screenshots, and the tidiness checks."""

    def __init__(self, driver: Any, base: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.base = base
        self.wait = WebDriverWait(driver, 30, poll_frequency=0.1)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for old in ARTIFACTS.glob("*.png"):
            old.unlink()

    def find(self, css: str, text: str | None = None) -> Any:
        """The first visible element matching ``css`` (whose text contains ``text``), waited for."""
        from selenium.webdriver.common.by import By

        def found(driver: Any) -> Any:
            for el in driver.find_elements(By.CSS_SELECTOR, css):
                if el.is_displayed() and (text is None or text in el.text):
                    return el
            return False

        return self.wait.until(found, f"no visible {css!r}" + (f" with {text!r}" if text else ""))

    def text_of(self, css: str) -> str:
        """The text of the first visible ``css``, read again if the page redrew it meanwhile."""
        from selenium.common.exceptions import StaleElementReferenceException

        def read(_: Any) -> Any:
            try:
                return [str(self.find(css).text)]
            except StaleElementReferenceException:
                return False

        got: list[str] = self.wait.until(read, f"no text of {css!r}")
        return got[0]

    def click(self, css: str, text: str | None = None) -> None:
        """Click the first visible ``css`` (with ``text``), again if the page redrew it meanwhile
        (a list is drawn again at every refresh)."""
        from selenium.common.exceptions import StaleElementReferenceException

        def clicked(_: Any) -> bool:
            try:
                self.find(css, text).click()
            except StaleElementReferenceException:
                return False
            return True

        self.wait.until(clicked, f"could not click {css!r}")

    def until(self, what: str, check: Callable[[], Any]) -> Any:
        return self.wait.until(lambda _: _quiet(check), what)

    def go(self, fragment: str) -> None:
        self.driver.execute_script("location.hash = arguments[0]", fragment)

    def shot(self, name: str) -> None:
        """A screenshot of the viewport, after checking the page does not scroll sideways."""
        width, inner, viewport = self.driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth, window.innerHeight]"
        )
        assert (inner, viewport) == (WIDTH, HEIGHT)
        assert width <= inner, f"{name}: the page is {width} px wide in a {inner} px window"
        self.driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))

    def problems(self) -> list[str]:
        """What the browser logged as errors, but the 401 that makes the page ask for its token."""
        logs = self.driver.get_log("browser")
        return [e["message"] for e in logs if e["level"] == "SEVERE" and "status of 401" not in e["message"]]


def _quiet(check: Callable[[], Any]) -> Any:
    try:
        return check()
    except Exception:  # stale or missing element: not yet
        return False


def api_client(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers=AUTH, timeout=60)


def launch(api: httpx.Client, path: str, body: Any) -> httpx.Response | None:
    """Call a method that launches a workflow which does not end by itself, without waiting for
    its output: the launch commits (its turn runs to the end whether the caller waits or not),
    the workflow runs on, and this returns after 5 s at most."""
    try:
        return api.post(path, json=body, timeout=httpx.Timeout(60.0, read=5.0))
    except httpx.ReadTimeout:
        return None


def workflow_of(api: httpx.Client, prefix: str, status: str | None = None) -> str:
    """The id of the workflow whose id starts with ``prefix`` (in ``status``), waited for."""

    def find() -> str | None:
        rows = api.get("/v1/workflows").json()["workflows"]
        ids = [w["id"] for w in rows if w["id"].startswith(prefix) and status in (None, w["status"])]
        return ids[0] if ids else None

    found: str = wait_for(f"a workflow {prefix}* ({status})", find)
    return found


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_the_console_shows_actors_and_workflows_and_cancels_one(service: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    api = api_client(service)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    waiting: concurrent.futures.Future[httpx.Response | None] | None = None
    try:
        # Through the API: two expenses (one with a deadline timer), a pickled actor, a finished
        # workflow and one that waits for an event nobody posts.
        api.post("/v1/actors/Expense/e-1001", json={"kwargs": {"employee": "ann", "amount": 120}})
        api.post("/v1/actors/Expense/x-7", json={"kwargs": {"employee": "bob", "amount": 5}})
        submitted = api.post("/v1/actors/Expense/e-1001/submit", json={"kwargs": {"approver": "carol"}})
        assert submitted.status_code == 200, submitted.text
        api.post("/v1/actors/ConsoleBag/b1").raise_for_status()
        waiting = pool.submit(launch, api, "/v1/actors/ConsoleJob/j2/build", {"kwargs": {"wait": True}})
        built = api.post("/v1/actors/ConsoleJob/j1/build")
        assert built.json() == {"result": "A+B: done"}, built.text
        done_id = workflow_of(api, "ConsoleJob:j1:", "SUCCESSFUL")
        running_id = workflow_of(api, "ConsoleJob:j2:", "RUNNING")

        console = Console(browser, service)
        browser.get(f"{service}/ui")
        field = console.find("#token-form input[name=token]")
        console.shot("01-sign-in")
        field.send_keys(TOKEN)
        console.find("#token-form button[type=submit]").click()

        # The actor types with their counts, as the API counts them.
        types = {t["type"]: t["count"] for t in api.get("/v1/actors").json()["types"]}
        assert types["Expense"] == 2 and types["ConsoleBag"] == 1
        row = console.find(".types-card tbody tr", "Expense")
        assert row.text.split() == ["Expense", "2"]
        console.find("#updated", "Updated")
        console.shot("02-actor-types")
        console.click(".types-card tbody tr a", "Expense")

        # Its ids, then a search by prefix.
        console.find(".ids a", "x-7")
        search = console.find("#id-prefix")
        search.send_keys("e-10")
        console.find(".search button[type=submit]").click()
        console.until("only e-1001 listed", lambda: console.text_of(".ids").split() == ["e-1001"])
        console.shot("03-expense-ids")
        console.click(".ids a", "e-1001")

        # One actor: its committed state, version and timer, as the API describes them.
        described = api.get("/v1/actors/Expense/e-1001").json()
        shown = console.find("#state pre.json")
        assert json.loads(shown.text) == described["state"]
        assert console.text_of("#actor-version") == str(described["version"])
        deadline = described["timers"]["deadline"]
        timer_row = console.find('#timers tr[data-timer="deadline"]')
        assert "escalate" in timer_row.text and deadline["due_at"].replace("T", " ") in timer_row.text
        assert "in 1 d 23 h" in timer_row.text or "in 2 d 0 h" in timer_row.text  # 48 h from now
        assert console.text_of("#failed-timers").endswith("None.")
        console.shot("04-actor-state-and-timers")

        # The live view: a change made through the API shows up without a reload.
        decided = api.post(
            "/v1/actors/Expense/e-1001/events/decision?wait=true", json={"approve": True, "by": "carol"}
        )
        assert decided.json() == {"result": "approved"}, decided.text
        after = api.get("/v1/actors/Expense/e-1001").json()
        assert after["timers"] == {} and after["state"]["state"] == "approved"
        console.until(
            "the new version on the page",
            lambda: (
                console.text_of("#actor-version") == str(after["version"])
                and json.loads(console.text_of("#state pre.json")) == after["state"]
                and "No timers." in console.text_of("#timers")
            ),
        )

        console.go("#/actors/ConsoleBag/b1")
        assert "Pickled, not shown" in console.text_of("#state")
        assert api.get("/v1/actors/ConsoleBag/b1").json()["pending_messages"] == []
        assert console.text_of("#pending-messages").endswith("None.")

        # A bulk delete by id prefix: refused without one, counted by a dry run as the API counts,
        # confirmed on the page, then run; the ids with another prefix stay.
        for actor_id in ("bulk-a1", "bulk-a2", "bulk-a3", "bulk-b1"):
            api.post(f"/v1/actors/ConsoleBag/{actor_id}").raise_for_status()
        dry = api.post("/v1/bulk/actors/ConsoleBag/delete", json={"prefix": "bulk-a", "dry_run": True})
        assert (dry.json()["affected"], dry.json()["next"]) == (3, None), dry.text
        console.go("#/actors/ConsoleBag")
        console.find(".ids a", "bulk-b1")
        console.find("#bulk-delete").click()
        assert "Give the prefix" in console.text_of("#bulk .problem")
        console.find("#bulk-prefix").send_keys("bulk-a")
        console.find("#bulk-delete").click()
        assert console.find("#bulk .confirm").get_attribute("data-count") == "3"
        assert console.text_of("#bulk-count").startswith("3 ConsoleBag actors whose ids start with “bulk-a”")
        console.shot("05-bulk-delete-confirm")
        console.find("#bulk-confirm").click()
        summary = console.text_of("#bulk-summary")
        assert summary == "Deleted 3 ConsoleBag actors whose ids start with “bulk-a”.", summary
        assert api.get("/v1/actors/ConsoleBag").json()["ids"] == ["b1", "bulk-b1"]
        console.until(
            "the deleted ids off the list", lambda: console.text_of(".ids").split() == ["b1", "bulk-b1"]
        )
        console.shot("06-bulk-deleted")

        # The workflows, filtered by status; a finished one's graph.
        console.find('.bar nav a[data-section="workflows"]').click()
        console.find('.filters a[data-status="SUCCESSFUL"]').click()
        console.find('.filters a[data-status="SUCCESSFUL"][aria-current="page"]')
        console.find(f'tr[data-workflow="{done_id}"]')
        assert running_id not in console.text_of(".wf-body")  # filtered by status
        # A bulk cancel of the successful ones: its dry run finds nothing to cancel, as the API does.
        by_status = {"status": ["SUCCESSFUL"], "dry_run": True}
        counted = api.post("/v1/bulk/workflows/cancel", json=by_status).json()
        assert counted["affected"] == 0 and counted["skipped"] >= 1
        console.find("#bulk-cancel").click()
        nothing = console.text_of("#bulk-summary")
        skipped = f"{counted['skipped']} skipped: already ended"
        assert nothing == f"Nothing to cancel: no successful workflows ({skipped}).", nothing
        console.shot("07-successful-workflows")
        console.click(f'tr[data-workflow="{done_id}"] a')
        steps = api.get(f"/v1/workflows/{done_id}").json()["steps"]
        assert len(steps) == 3 and sum(len(s["deps"]) for s in steps) == 2
        console.until(
            "every step drawn as successful",
            lambda: len(browser.find_elements(By.CSS_SELECTOR, "#graph svg .node.st-successful")) == 3,
        )
        assert len(browser.find_elements(By.CSS_SELECTOR, "#graph svg path.edge")) == 2
        for step in steps:
            node = console.find(f'#graph svg .node[data-step="{step["step_id"]}"]')
            assert f"{step['attempts']} attempt" in node.text
        assert console.find("#cancel").get_attribute("disabled") is not None  # it ended
        console.shot("08-workflow-graph")

        # A running one: its graph, then cancel it from the page.
        console.find('.bar nav a[data-section="workflows"]').click()
        console.find('.filters a[data-status="RUNNING"]').click()
        console.click(f'tr[data-workflow="{running_id}"] a')
        console.find("#wf-status", "RUNNING")
        console.until(
            "the waiting step drawn as ready",
            lambda: browser.find_elements(By.CSS_SELECTOR, "#graph svg .node.st-ready"),
        )
        console.shot("09-running-workflow")
        console.find("#cancel").click()
        console.find("#confirm-cancel")
        console.shot("10-confirm-cancel")
        console.find("#confirm-cancel").click()
        console.find("#wf-status", "CANCELED")
        assert api.get(f"/v1/workflows/{running_id}").json()["status"] == "CANCELED"
        assert console.find("#cancel").get_attribute("disabled") is not None
        console.shot("11-cancelled")
        assert console.problems() == []
        try_docs_with_the_token(browser, service, api)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if waiting is not None:
            concurrent.futures.wait([waiting], timeout=30)  # no thread outlives the test
        api.close()


def try_docs_with_the_token(browser: Any, service: str, api: httpx.Client) -> None:
    """The API's own page: /docs loads without the token, asks for it in its form, and then
    Swagger's "Try it out" calls a method with it (the request it shows carries the header)."""
    browser.get(f"{service}/docs")
    body = '{"kwargs": {"name": "green"}}'
    tried = try_it_out(browser, "/v1/actors/ConsoleBag/{actor_id}/tag", "b1", body, token=TOKEN)
    assert tried.status == "200", tried.response
    assert '"result": 3' in tried.response  # red, blue and now green
    assert f"Authorization: Bearer {TOKEN}" in tried.block
    again = api.post("/v1/actors/ConsoleBag/b1/tag", json={"kwargs": {"name": "green"}})
    assert again.json() == {"result": 3}, again.text  # the page's call was committed
