"""The ``actorflow`` command.

``actorflow demo`` runs a short durable workflow on the default storage and shows its
checkpoints; ``actorflow workflows list|status|resume`` manage stored workflows.

The bearer token of ``serve`` and ``call`` is best given as ``$ACTORFLOW_TOKEN`` or in a file
(``--token-file PATH`` or ``$ACTORFLOW_TOKEN_FILE``): ``--token T`` puts it in the process table,
where other users of the machine can read it. Nothing here prints the token.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from actorflow.errors import ActorflowError
from actorflow.serve.settings import TOKEN_ENV, TOKEN_FILE_ENV, resolve_token


def _demo(args: argparse.Namespace) -> int:
    """Run a short workflow: on ``--storage`` if given, else on a SQLite file of its own in a
    temporary directory (removed afterwards), so the demo never writes into the storage a
    service or the user's own code uses by default."""
    import shutil
    import tempfile

    from actorflow.engine import close_all

    scratch = None if args.storage else tempfile.mkdtemp(prefix="actorflow-demo-")
    try:
        return _demo_on(args.storage or f"sqlite://{scratch}/demo.db")
    finally:
        if scratch is not None:
            close_all()
            shutil.rmtree(scratch, ignore_errors=True)


def _demo_on(storage: str) -> int:
    from actorflow import workflow
    from actorflow.engine import default_runtime

    workflow.init(storage)
    print(f"actorflow demo on storage {default_runtime().storage_url}")

    @workflow.step
    def fetch_order(order_id: str) -> dict[str, object]:
        return {"order": order_id, "items": [("apple", 3, 0.5), ("pear", 2, 0.75)]}

    @workflow.step
    def price(order: dict[str, object]) -> float:
        return sum(qty * unit for _, qty, unit in order["items"])  # type: ignore[attr-defined]

    @workflow.step
    def fib(n: int) -> Any:
        return n if n <= 1 else add.step(fib.step(n - 1), fib.step(n - 2))

    @workflow.step
    def add(a: float, b: float) -> float:
        return a + b

    wid = f"demo-{int(time.time())}"
    start = time.perf_counter()
    total = add.step(price.step(fetch_order.step("order-1")), fib.step(10)).run(workflow_id=wid)
    took = time.perf_counter() - start
    print(f"workflow {wid}: output {total} in {took:.2f} s, status {workflow.get_status(wid)}")
    meta = workflow.get_metadata(wid)
    print("metadata:", json.dumps(meta, default=str))
    print(f"running it again resumes from its checkpoints: {add.step(0, 0).run(workflow_id=wid)}")
    print("stored workflows:", len(workflow.list_all()))
    return 0


def _serve(args: argparse.Namespace) -> int:
    """Start a local Ray, deploy the application, and serve until interrupted."""
    import shutil

    import ray

    from actorflow.serve.app import build
    from actorflow.serve.ingress import configure, stop_haproxy
    from actorflow.serve.settings import settings_from

    _check_port_free(args.host, args.port)
    modules = [_module_name(m) for m in args.modules]
    _find_modules_here()
    build_args = {
        "modules": modules,
        "storage": args.storage,
        "token": args.token,
        "token_file": args.token_file,
        "actor_host_replicas": args.replicas,
    }
    settings = settings_from(build_args)
    # Before Ray starts (its processes read it then) and before the application is built.
    chosen = configure(args.proxy)
    haproxy_dir = os.environ.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "")
    haproxy_dir = os.path.dirname(haproxy_dir) if args.proxy == "haproxy" else ""
    app = build(build_args)  # imports the modules and validates everything before Ray starts
    try:
        _run_service(args, app, settings)
    finally:
        # Every acknowledged call is already in storage, so there is nothing to drain.
        ray.shutdown()
        if haproxy_dir:
            # Serve stops its HAProxy as Ray shuts down; one left over by a Ray that died
            # would keep the port, so make sure.
            stop_haproxy(haproxy_dir)
            if "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC" in chosen:
                shutil.rmtree(haproxy_dir, ignore_errors=True)
    return 0


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port something listens on, before Ray starts. Serve binds with SO_REUSEPORT,
    so a second service on a busy port would start, say it is ready, and get half the traffic;
    a plain bind (SO_REUSEADDR only, which allows TIME_WAIT leftovers) finds the listener."""
    import socket

    from actorflow.errors import ConfigError

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


def _module_name(arg: str) -> str:
    """``my_actors.py`` (a file in the working directory) names module ``my_actors``."""
    if arg.endswith(".py") and os.path.isfile(arg):
        return os.path.splitext(os.path.normpath(arg))[0].replace(os.sep, ".")
    return arg


def _find_modules_here() -> None:
    """Let the modules to serve come from the working directory, as ``python -m`` does: put it
    first on this process's module path and on ``PYTHONPATH``, which the Ray processes started
    from here (every replica) inherit."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([here, *paths])


def _run_service(args: argparse.Namespace, app: Any, settings: dict[str, Any]) -> None:
    import signal
    import threading

    import ray
    from ray import serve

    from actorflow.serve.app import APP_NAME
    from actorflow.storage import redact_url

    ray.init(include_dashboard=False, logging_level=logging.WARNING, num_cpus=args.num_cpus)
    serve.start(
        http_options={"host": args.host, "port": args.port}, logging_config={"enable_access_log": False}
    )
    serve.run(app, name=APP_NAME, route_prefix="/")
    address = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    auth = ' -H "Authorization: Bearer $ACTORFLOW_TOKEN"' if settings["token"] else ""
    from actorflow.actor import registered_types

    types = ", ".join(sorted(registered_types())) or "(none: pass modules that define actors)"
    # The storage URL of a Redis carries its password; the token is never printed either.
    ingress = "HAProxy" if args.proxy == "haproxy" else "Serve's classic proxy"
    print(
        f"actorflow is serving {types} at {address} through {ingress} "
        f"(storage {redact_url(settings['storage'])})"
    )
    print(f"  API docs:  {address}/docs")
    if "Account" in registered_types():
        body = '{"kwargs": {"owner": "Alice", "balance": 100}}'
        print(f"  try:       curl -s -X POST{auth} {address}/v1/actors/Account/alice \\")
        print(f"                  -H 'content-type: application/json' -d '{body}'")
        print(f"             curl -s -X POST{auth} {address}/v1/actors/Account/alice/get_balance")
    print("Ctrl-C stops it.", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    print("stopping...", flush=True)


def _call(args: argparse.Namespace) -> int:
    """Call one actor method on a running service and print the JSON result."""
    import httpx

    from actorflow._wire import error_from_json

    try:
        call_args = json.loads(args.args_json) if args.args_json else []
    except ValueError as exc:
        print(f"actorflow: ARGS_JSON is not JSON: {exc}", file=sys.stderr)
        return 2
    body = (
        call_args
        if isinstance(call_args, dict)
        else {"args": call_args if isinstance(call_args, list) else [call_args]}
    )
    headers = {"x-session-id": f"{args.type}/{args.id}"}
    token = resolve_token(args.token, args.token_file)
    if token:
        headers["authorization"] = f"Bearer {token}"
    if args.idempotency_key:
        headers["idempotency-key"] = args.idempotency_key
    base = args.address.rstrip("/")
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        if args.create:
            client.post(f"/v1/actors/{args.type}/{args.id}", json={})
        resp = client.post(f"/v1/actors/{args.type}/{args.id}/{args.method}", json=body)
    if resp.status_code >= 400:
        raise error_from_json(resp.status_code, resp.json() if resp.content else None)
    print(json.dumps(resp.json()["result"]))
    return 0


def _workflows(args: argparse.Namespace) -> int:
    from actorflow import workflow

    workflow.init(args.storage)
    if args.action == "list":
        for wid, status in workflow.list_all(args.status):
            print(f"{wid}\t{status}")
    elif args.action == "status":
        print(workflow.get_status(args.workflow_id))
        print(json.dumps(workflow.get_metadata(args.workflow_id), default=str, indent=2))
    elif args.action == "resume":
        print(json.dumps(workflow.resume(args.workflow_id), default=str))
    return 0


def _storage(args: argparse.Namespace) -> int:
    import asyncio

    from actorflow.errors import ConfigError
    from actorflow.storage import default_storage_url, parse_storage_url

    url = args.url or args.storage or default_storage_url()
    if parse_storage_url(url)[0] != "redis":
        raise ConfigError("only a Redis storage has an earlier layout to migrate from")
    from actorflow.storage.redis_migrate import migrate

    counts = asyncio.run(migrate(url, progress=print))
    print(f"done: {counts['keys']} keys, {counts['index_members']} index members in the current layout")
    return 0


def _add_token_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """--token and --token-file, which exclude each other (argparse reports both given)."""
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token",
        default=None,
        help=f"{what}; other users can read it in the process table, so prefer ${TOKEN_ENV} or --token-file",
    )
    tokens.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help=f"read the token from PATH, surrounding whitespace stripped (default: ${TOKEN_FILE_ENV}, "
        f"else ${TOKEN_ENV}; neither set: no token)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``actorflow`` command; returns the exit status."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    parser = argparse.ArgumentParser(
        prog="actorflow", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument(
        "--storage", default=None, help="storage URL (default: $ACTORFLOW_STORAGE or per-user SQLite)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a short durable workflow")
    demo.set_defaults(func=_demo)
    wf = sub.add_parser("workflows", help="list, inspect and resume stored workflows")
    wf_sub = wf.add_subparsers(dest="action", required=True)
    lst = wf_sub.add_parser("list")
    lst.add_argument("--status", default=None)
    for name in ("status", "resume"):
        p = wf_sub.add_parser(name)
        p.add_argument("workflow_id")
    wf.set_defaults(func=_workflows)
    st = sub.add_parser("storage", help="maintain a storage")
    st_sub = st.add_subparsers(dest="action", required=True)
    mig = st_sub.add_parser(
        "migrate",
        help="move a single Redis's data from the layout before Redis Cluster support to the current "
        "one (stop every process that uses it first; safe to run again)",
    )
    mig.add_argument("url", nargs="?", default=None, help="the Redis URL (default: --storage)")
    st.set_defaults(func=_storage)
    srv = sub.add_parser("serve", help="run the HTTP service on a local Ray with the given actor modules")
    srv.add_argument("modules", nargs="*", metavar="MODULE", help="modules that define actor types")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=int(os.environ.get("ACTORFLOW_PORT", "8000")))
    srv.add_argument("--replicas", type=int, default=2, help="ActorHost replicas (default 2)")
    _add_token_arguments(srv, "bearer token that every route but /healthz requires")
    srv.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray")
    srv.add_argument(
        "--proxy",
        choices=("haproxy", "classic"),
        default=os.environ.get("ACTORFLOW_PROXY", "haproxy"),
        help="Serve's HTTP ingress: HAProxy, routing each actor id to one replica (default, "
        "$ACTORFLOW_PROXY), or Serve's classic Python proxy",
    )
    srv.set_defaults(func=_serve)
    call = sub.add_parser("call", help="call an actor method on a running service")
    call.add_argument("type")
    call.add_argument("id")
    call.add_argument("method")
    call.add_argument(
        "args_json",
        nargs="?",
        default="",
        metavar="ARGS_JSON",
        help='a JSON array of arguments, or {"args": [...], "kwargs": {...}}',
    )
    call.add_argument("--address", default=os.environ.get("ACTORFLOW_ADDRESS", "http://127.0.0.1:8000"))
    _add_token_arguments(call, "bearer token to send to the service")
    call.add_argument("--idempotency-key", default=None)
    call.add_argument("--create", action="store_true", help="create the actor first if it is missing")
    call.set_defaults(func=_call)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ActorflowError as exc:
        print(f"actorflow: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
