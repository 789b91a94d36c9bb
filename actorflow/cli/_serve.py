"""``actorflow serve``: a local Ray, the application deployed on it, and a clean stop.

Stopping: SIGINT (Ctrl-C) and SIGTERM (what Docker and Kubernetes send) are handled alike, at
any point. While serving, the first one prints one line and shuts Ray down; nothing is drained
because every acknowledged call is already in storage. During start-up the first one waits for
start-up to finish (a Ray interrupted half-way can leave its processes behind) and then stops;
a second one stops at once. No traceback either way, and the exit status is 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import click

from actorflow.cli._common import err, token_options
from actorflow.errors import ConfigError
from actorflow.serve.ingress import PROXY_MODES

#: Where the per-user default storage is (see :func:`actorflow.storage.default_storage_url`).
DEFAULT_STORAGE_HELP = "$XDG_DATA_HOME/actorflow/actorflow.db, else ~/.local/share/actorflow/actorflow.db"


class _StopNow(BaseException):
    """Raised in the main thread by a second signal during start-up."""


class Stopper:
    """SIGINT and SIGTERM as a request to stop (see the module docstring)."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.serving = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        """The handlers in place for the block; the ones before it put back after it."""
        before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        self.install()
        try:
            yield
        finally:
            for signum, handler in before.items():
                signal.signal(signum, handler)

    def install(self) -> None:
        """(Re)install the handlers: ``ray.init`` puts its own SIGTERM handler in place."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self.requested.is_set():
            self.requested.set()
            if self.serving:
                err(f"{name}: stopping")
            else:
                err(f"{name}: stopping once start-up has finished ({name} again stops now)")
            return
        if not self.serving:
            raise _StopNow
        # Already shutting down: a further signal changes nothing.

    def wait(self) -> None:
        """Serve until a stop is requested."""
        self.serving = True
        while not self.requested.wait(1.0):
            pass


@click.command()
@click.argument("modules", nargs=-1, metavar="[MODULE]...")
@click.option(
    "--storage",
    metavar="URL",
    envvar="ACTORFLOW_STORAGE",
    show_envvar=True,
    help=f"Where actors and workflows are stored: sqlite:///PATH, redis://HOST:PORT/DB, "
    f"redis+cluster://HOST:PORT [default: {DEFAULT_STORAGE_HELP}].",
)
@click.option(
    "--host",
    default="127.0.0.1",
    envvar="ACTORFLOW_HOST",
    show_envvar=True,
    show_default=True,
    help="Interface to listen on (0.0.0.0: all of them).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8000,
    envvar="ACTORFLOW_PORT",
    show_envvar=True,
    show_default=True,
    help="HTTP port; refused if something listens there.",
)
@click.option(
    "--replicas",
    type=click.IntRange(1, 256),
    default=2,
    envvar="ACTORFLOW_REPLICAS",
    show_envvar=True,
    show_default=True,
    help="ActorHost replicas; each owns a share of the actors.",
)
@token_options("bearer token that every route but /healthz requires")
@click.option(
    "--proxy",
    type=click.Choice(PROXY_MODES),
    default="haproxy",
    envvar="ACTORFLOW_PROXY",
    show_envvar=True,
    show_default=True,
    help="Serve's HTTP ingress: HAProxy, which routes each actor id to one replica, or "
    "Serve's classic Python proxy (about 5 times slower).",
)
@click.option(
    "--access-log/--no-access-log",
    default=False,
    envvar="ACTORFLOW_ACCESS_LOG",
    show_envvar=True,
    help="Log a line per request (method, route, status, time) from every replica [default: off].",
)
@click.option(
    "--num-cpus",
    type=click.IntRange(1),
    default=None,
    envvar="ACTORFLOW_NUM_CPUS",
    show_envvar=True,
    help="CPUs the local Ray may use [default: all].",
)
def serve(
    modules: tuple[str, ...],
    storage: str | None,
    host: str,
    port: int,
    replicas: int,
    token: str | None,
    token_file: str | None,
    proxy: str,
    access_log: bool,
    num_cpus: int | None,
) -> None:
    """Serve the actor types that MODULEs define over HTTP, on a local Ray, until SIGINT
    (Ctrl-C) or SIGTERM.

    A MODULE is a module name or a .py file of the working directory (my_actors or
    my_actors.py), imported here and in every replica. None given: $ACTORFLOW_MODULES
    (comma-separated).
    """
    stopper = Stopper()
    with stopper.installed():  # before anything slow: Ctrl-C during start-up is handled too
        check_port_free(host, port)
        find_modules_here()
        build_args: dict[str, Any] = {
            "modules": [module_name(m) for m in modules] or None,
            "storage": storage,
            "token": token,
            "token_file": token_file,
            "actor_host_replicas": replicas,
            "access_log": access_log,
        }
        try:
            _serve(build_args, host, port, proxy, num_cpus, stopper)
        except _StopNow:
            pass


def _serve(
    build_args: dict[str, Any], host: str, port: int, proxy: str, num_cpus: int | None, stopper: Stopper
) -> None:
    import shutil

    import ray

    from actorflow.serve.app import build
    from actorflow.serve.ingress import configure, stop_haproxy
    from actorflow.serve.settings import settings_from

    settings = settings_from(build_args)
    # Before Ray starts (its processes read it then) and before the application is built.
    chosen = configure(proxy)  # type: ignore[arg-type]
    haproxy_dir = os.environ.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "")
    haproxy_dir = os.path.dirname(haproxy_dir) if proxy == "haproxy" else ""
    with _importing(settings["modules"]):
        app = build(build_args)  # imports the modules and validates everything before Ray starts
    try:
        _start(app, host, port, num_cpus, settings["access_log"], stopper)
        if not stopper.requested.is_set():
            _announce(host, port, proxy, settings)
        stopper.wait()
    finally:
        stopper.serving = True  # from here on, further signals are ignored
        ray.shutdown()
        if haproxy_dir:
            # Serve stops its HAProxy as Ray shuts down; one left over by a Ray that died
            # would keep the port, so make sure.
            stop_haproxy(haproxy_dir)
            if "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC" in chosen:
                shutil.rmtree(haproxy_dir, ignore_errors=True)


def _start(app: Any, host: str, port: int, num_cpus: int | None, access_log: bool, stopper: Stopper) -> None:
    import ray
    from ray import serve

    from actorflow.serve.app import APP_NAME

    ray.init(include_dashboard=False, logging_level=logging.WARNING, num_cpus=num_cpus)
    stopper.install()  # ray.init replaced the SIGTERM handler
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # this process's start-up chatter
    # Serve's own processes (controller, proxies) log warnings only; the replicas' level and
    # access log are set on the deployment (actorflow.serve.app), so they reach every replica.
    serve.start(
        http_options={"host": host, "port": port},
        logging_config={"log_level": "WARNING", "enable_access_log": access_log},
    )
    serve.run(app, name=APP_NAME, route_prefix="/")
    stopper.install()


def _announce(host: str, port: int, proxy: str, settings: dict[str, Any]) -> None:
    from actorflow.actor import registered_types
    from actorflow.storage import redact_url

    address = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    auth = ' -H "Authorization: Bearer $ACTORFLOW_TOKEN"' if settings["token"] else ""
    types = ", ".join(sorted(registered_types())) or "(none: pass modules that define actors)"
    # The storage URL of a Redis carries its password; the token is never printed either.
    ingress = "HAProxy" if proxy == "haproxy" else "Serve's classic proxy"
    click.echo(
        f"actorflow is serving {types} at {address} through {ingress} "
        f"(storage {redact_url(settings['storage'])})"
    )
    click.echo(f"  API docs:  {address}/docs")
    if "Account" in registered_types():
        body = '{"kwargs": {"owner": "Alice", "balance": 100}}'
        click.echo(f"  try:       curl -s -X POST{auth} {address}/v1/actors/Account/alice \\")
        click.echo(f"                  -H 'content-type: application/json' -d '{body}'")
        click.echo(f"             curl -s -X POST{auth} {address}/v1/actors/Account/alice/get_balance")
    click.echo("Ctrl-C stops it.")
    sys.stdout.flush()


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something listens on, before Ray starts. Serve binds with SO_REUSEPORT,
    so a second service on a busy port would start, say it is ready, and get half the traffic;
    a plain bind (SO_REUSEADDR only, which allows TIME_WAIT leftovers) finds the listener."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on port {port} of {host} ({exc.strerror}): is another actorflow "
                f"serve running there? Stop it, or pick another port with --port or $ACTORFLOW_PORT"
            ) from None


def module_name(arg: str) -> str:
    """``my_actors.py`` (a file in the working directory) names module ``my_actors``."""
    if arg.endswith(".py") and os.path.isfile(arg):
        return os.path.splitext(os.path.normpath(arg))[0].replace(os.sep, ".")
    return arg


def find_modules_here() -> None:
    """Let the modules to serve come from the working directory, as ``python -m`` does: put it
    first on this process's module path and on ``PYTHONPATH``, which the Ray processes started
    from here (every replica) inherit."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([here, *paths])


@contextmanager
def _importing(modules: list[str]) -> Iterator[None]:
    """A module to serve that is not there is a one-line error; an error inside a module that
    is there keeps its traceback (it points at the line to fix)."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name is None or not any(m == exc.name or m.startswith(exc.name + ".") for m in modules):
            raise
        raise ConfigError(
            f"no module named {exc.name!r} in {os.getcwd()} or on the module path: run "
            f"actorflow serve from the folder that holds it, or name a .py file"
        ) from None
