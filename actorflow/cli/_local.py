"""The subcommands that need no service: ``demo`` (a short durable workflow) and
``storage migrate``."""

from __future__ import annotations

import json
import time
from typing import Any

import click


@click.command()
@click.option(
    "--storage",
    metavar="URL",
    default=None,
    help="Run on this storage (default: a SQLite file of its own in a temporary folder, removed "
    "afterwards, so the demo never writes into the storage a service or your code uses).",
)
def demo(storage: str | None) -> None:
    """Run a short durable workflow, no service needed, and show its checkpoints."""
    import shutil
    import tempfile

    from actorflow.engine import close_all

    scratch = None if storage else tempfile.mkdtemp(prefix="actorflow-demo-")
    try:
        _demo_on(storage or f"sqlite://{scratch}/demo.db")
    finally:
        if scratch is not None:
            close_all()
            shutil.rmtree(scratch, ignore_errors=True)


def _demo_on(storage: str) -> None:
    from actorflow import workflow
    from actorflow.engine import default_runtime

    workflow.init(storage)
    click.echo(f"actorflow demo on storage {default_runtime().storage_url}")

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
    click.echo(f"workflow {wid}: output {total} in {took:.2f} s, status {workflow.get_status(wid)}")
    click.echo("metadata: " + json.dumps(workflow.get_metadata(wid), default=str))
    click.echo(f"running it again resumes from its checkpoints: {add.step(0, 0).run(workflow_id=wid)}")
    click.echo(f"stored workflows: {len(workflow.list_all())}")


@click.group()
def storage() -> None:
    """Maintain a storage."""


@storage.command()
@click.argument("url", metavar="URL", envvar="ACTORFLOW_STORAGE", required=True)
def migrate(url: str) -> None:
    """Move a single Redis's data at URL (default: $ACTORFLOW_STORAGE) from the layout before
    Redis Cluster support to the current one. Stop every process that uses it first; safe to
    run again."""
    import asyncio

    from actorflow.storage import parse_storage_url

    if parse_storage_url(url)[0] != "redis":
        raise click.BadParameter(
            "only a Redis storage has an earlier layout to migrate from", param_hint="URL"
        )
    from actorflow.storage.redis_migrate import migrate as run_migration

    counts = asyncio.run(run_migration(url, progress=click.echo))
    click.echo(f"done: {counts['keys']} keys, {counts['index_members']} index members in the current layout")
