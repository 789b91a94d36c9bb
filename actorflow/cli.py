"""The ``actorflow`` command.

``actorflow demo`` runs a short durable workflow on the default storage and shows its
checkpoints; ``actorflow workflows list|status|resume`` manage stored workflows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from actorflow.errors import ActorflowError


def _demo(args: argparse.Namespace) -> int:
    from actorflow import workflow
    from actorflow.workflow._runtime import default_runtime

    workflow.init(args.storage)
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
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ActorflowError as exc:
        print(f"actorflow: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
