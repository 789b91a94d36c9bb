"""The subcommands that work on a running service through its HTTP API: ``call``, ``actors``,
``timers`` and ``workflows``. They need nothing but the service's address and token (never its
storage URL or a Ray of their own), so they work the same against a laptop and a cluster."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import click

from actorflow.cli._bulk import (
    Operation,
    check_single,
    filters_body,
    page_options,
    prefix_options,
    report,
    run_bulk,
    workflow_filter_options,
)
from actorflow.cli._common import Failed, Service, json_option, print_json, print_table, service_options, when


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(p, safe="") for p in parts)


def _call_body(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, Any]:
    if not value:
        return {}
    try:
        given = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON ({exc})", ctx, param) from None
    if isinstance(given, dict) and set(given) <= {"args", "kwargs"}:
        return given
    if isinstance(given, dict):
        raise click.BadParameter('an object must be {"args": [...], "kwargs": {...}}', ctx, param)
    return {"args": given if isinstance(given, list) else [given]}


@click.command()
@click.argument("type_name", metavar="TYPE")
@click.argument("actor_id", metavar="ID")
@click.argument("method")
@click.argument("body", metavar="[ARGS_JSON]", required=False, callback=_call_body)
@service_options
@click.option(
    "--idempotency-key", metavar="KEY", help="Send the call with this key: a repeat has no second effect."
)
@click.option("--create", is_flag=True, help="Create the actor first (with no arguments) if it is missing.")
def call(
    type_name: str,
    actor_id: str,
    method: str,
    body: dict[str, Any],
    address: str,
    token: str | None,
    token_file: str | None,
    idempotency_key: str | None,
    create: bool,
) -> None:
    """Call METHOD of actor TYPE/ID on a running service and print the result as JSON.

    ARGS_JSON is a JSON array of positional arguments, a single value, or
    {"args": [...], "kwargs": {...}}. An actor that was never created is activated by the call
    when its class takes no constructor arguments.
    """
    headers = {"x-session-id": f"{type_name}/{actor_id}"}
    if idempotency_key:
        headers["idempotency-key"] = idempotency_key
    with Service(address, token, token_file) as service:
        if create:
            service.request("POST", _path("v1", "actors", type_name, actor_id), json_body={}, headers=headers)
        answer = service.request(
            "POST", _path("v1", "actors", type_name, actor_id, method), json_body=body, headers=headers
        )
    click.echo(json.dumps(answer["result"]))


@click.group()
def actors() -> None:
    """List, inspect and delete the actors of a running service."""


@actors.command("list")
@click.argument("type_name", metavar="TYPE")
@click.option("--start-after", metavar="ID", help="List the ids after this one (byte order).")
@click.option(
    "--limit", type=click.IntRange(1, 100_000), default=100, show_default=True, help="At most this many ids."
)
@service_options
@json_option
def list_actors(
    type_name: str,
    start_after: str | None,
    limit: int,
    address: str,
    token: str | None,
    token_file: str | None,
    as_json: bool,
) -> None:
    """The ids of TYPE's actors, in byte order, one per line."""
    ids: list[str] = []
    after = start_after
    more: str | None = None
    with Service(address, token, token_file) as service:
        while len(ids) < limit:
            page = min(1000, limit - len(ids))
            params = {"limit": page, **({"start_after": after} if after is not None else {})}
            got = service.request("GET", _path("v1", "actors", type_name), params=params)
            ids += got["ids"]
            more = after = got["next"]
            if more is None:
                break
    if as_json:
        print_json({"ids": ids, "next": more})
        return
    for actor_id in ids:
        click.echo(actor_id)
    if more is not None:
        click.echo(f"(more: --start-after {more})", err=True)


@actors.command("get")
@click.argument("type_name", metavar="TYPE")
@click.argument("actor_id", metavar="ID")
@service_options
@json_option
def get_actor(
    type_name: str, actor_id: str, address: str, token: str | None, token_file: str | None, as_json: bool
) -> None:
    """The committed state of actor TYPE/ID, its version, timers and failed deliveries."""
    with Service(address, token, token_file) as service:
        got = service.request("GET", _path("v1", "actors", type_name, actor_id))
    if as_json:
        print_json(got)
        return
    click.echo(f"{got['type']}/{got['id']}  version {got['version']}")
    click.echo(f"created  {when(got.get('created_at'))}")
    click.echo(f"updated  {when(got.get('updated_at'))}")
    if got.get("state") is None and got.get("encoding") != "json":
        click.echo("state    (not JSON: stored pickled, not shown)")
    else:
        click.echo("state    " + json.dumps(got.get("state"), indent=2).replace("\n", "\n         "))
    _print_timers(got)
    for kind in ("failed_events", "failed_messages"):
        if got.get(kind):
            click.echo(f"{kind.replace('_', ' ')}: {len(got[kind])}")


@actors.command("delete")
@click.argument("type_name", metavar="TYPE")
@click.argument("actor_id", metavar="[ID]", required=False)
@prefix_options("actor")
@page_options
@service_options
def delete_actor(
    type_name: str,
    actor_id: str | None,
    prefix: str | None,
    everything: bool,
    dry_run: bool,
    batch_size: int | None,
    yes: bool,
    as_json: bool,
    address: str,
    token: str | None,
    token_file: str | None,
) -> None:
    """Delete actor TYPE/ID: its state, timers, idempotency records and pending messages.
    Idempotent: deleting a missing actor succeeds.

    Without ID, delete the actors of TYPE whose ids start with --prefix (or, with --all, every
    one), batch by batch; without --yes it counts them first and asks.
    """
    if actor_id is None:
        op = Operation(
            "delete",
            "deleted",
            f"{type_name} actors",
            _path("v1", "bulk", "actors", type_name, "delete"),
            filters_body(prefix, everything),
        )
        with Service(address, token, token_file) as service:
            report(op, run_bulk(service, op, dry_run=dry_run, yes=yes, batch=batch_size), as_json)
        return
    check_single(
        {"prefix": prefix, "everything": everything, "dry_run": dry_run, "batch_size": batch_size}, "actor"
    )
    if not yes:
        click.confirm(f"Delete {type_name}/{actor_id} and everything stored for it?", abort=True, err=True)
    with Service(address, token, token_file) as service:
        service.request("DELETE", _path("v1", "actors", type_name, actor_id))
    if as_json:
        print_json({"type": type_name, "id": actor_id, "deleted": True})
        return
    click.echo(f"deleted {type_name}/{actor_id}")


@click.group()
def timers() -> None:
    """Look at the durable timers of a running service's actors, and purge failed ones."""


@timers.command("list")
@click.argument("type_name", metavar="TYPE")
@click.argument("actor_id", metavar="ID")
@service_options
@json_option
def list_timers(
    type_name: str, actor_id: str, address: str, token: str | None, token_file: str | None, as_json: bool
) -> None:
    """The timers of actor TYPE/ID with their next due time, and the ticks that failed."""
    with Service(address, token, token_file) as service:
        got = service.request("GET", _path("v1", "actors", type_name, actor_id, "timers"))
    if as_json:
        print_json(got)
        return
    if not got["timers"] and not got["failed_timers"]:
        click.echo(f"{type_name}/{actor_id} has no timers")
    _print_timers(got)


@timers.command("purge-failed")
@click.argument("type_name", metavar="TYPE")
@prefix_options("actor")
@page_options
@service_options
def purge_failed_timers(
    type_name: str,
    prefix: str | None,
    everything: bool,
    dry_run: bool,
    batch_size: int | None,
    yes: bool,
    as_json: bool,
    address: str,
    token: str | None,
    token_file: str | None,
) -> None:
    """Delete the records of failed timer ticks (the "failed timer ticks" of `actors get`) of
    the TYPE actors whose ids start with --prefix (or, with --all, of every one). The timers
    themselves stay."""
    path = _path("v1", "bulk", "actors", type_name, "purge-failed-timers")
    op = Operation(
        "purge",
        "purged",
        f"failed timer records of {type_name}",
        path,
        filters_body(prefix, everything, single=False),
    )
    with Service(address, token, token_file) as service:
        report(op, run_bulk(service, op, dry_run=dry_run, yes=yes, batch=batch_size), as_json)


def _print_timers(got: dict[str, Any]) -> None:
    rows = [
        (name, t.get("method"), when(t.get("due")), _schedule(t))
        for name, t in sorted(got.get("timers", {}).items())
    ]
    if rows:
        print_table(("TIMER", "METHOD", "DUE", "SCHEDULE"), rows)
    failed = got.get("failed_timers") or {}
    if failed:
        click.echo(f"failed timer ticks: {len(failed)} ({', '.join(sorted(map(str, failed)))})")


def _schedule(timer: dict[str, Any]) -> str:
    """How a listed timer repeats, in the words it was set with (``-``: it fires once)."""
    schedule = timer.get("schedule") or {}
    if schedule.get("cron"):
        text = f"cron {schedule['cron']} ({schedule.get('tz') or 'UTC'})"
    elif schedule.get("every"):
        text = f"every {schedule['every']}" + ("s" if str(schedule["every"])[-1:].isdigit() else "")
    else:
        return "-"
    if timer.get("remaining") is not None:
        text += f", {timer['remaining']} left"
    return text


@click.group()
def workflows() -> None:
    """List, inspect, resume, cancel and delete the workflows of a running service."""


@workflows.command("list")
@click.option(
    "--status",
    metavar="STATUS",
    help="Only these: RUNNING, SUCCESSFUL, FAILED, RESUMABLE, CANCELED, PENDING.",
)
@service_options
@json_option
def list_workflows(
    status: str | None, address: str, token: str | None, token_file: str | None, as_json: bool
) -> None:
    """Stored workflows and their status, every page of them, in id order."""
    rows: list[dict[str, Any]] = []
    with Service(address, token, token_file) as service:
        params: dict[str, str] = {"status": status} if status else {}
        while True:
            got = service.request("GET", "/v1/workflows", params=params or None)
            rows += got["workflows"]
            if got.get("next") is None:
                break
            params["start_after"] = got["next"]
    if as_json:
        print_json({"workflows": rows})
        return
    print_table(("WORKFLOW", "STATUS"), ((w["id"], w["status"]) for w in rows))


@workflows.command("status")
@click.argument("workflow_id", metavar="ID")
@service_options
@json_option
def workflow_status(
    workflow_id: str, address: str, token: str | None, token_file: str | None, as_json: bool
) -> None:
    """A workflow's status, times, error and steps."""
    with Service(address, token, token_file) as service:
        got = service.request("GET", _path("v1", "workflows", workflow_id))
    if as_json:
        print_json(got)
        return
    stats = got.get("stats") or {}
    click.echo(f"{got['workflow_id']}  {got['status']}")
    click.echo(f"started  {when(stats.get('start_time'))}")
    click.echo(f"ended    {when(stats.get('end_time'))}")
    if got.get("error"):
        click.echo(f"error    {got['error']}")
    if got.get("user_metadata"):
        click.echo(f"metadata {json.dumps(got['user_metadata'])}")

    def took(step: dict[str, Any]) -> str:
        start, end = step.get("start_time"), step.get("end_time")
        return f"{end - start:.3f}s" if start is not None and end is not None else "-"

    rows = [(s["step_id"], s["name"], s["status"], s.get("attempts") or "-", took(s)) for s in got["steps"]]
    print_table(("STEP", "NAME", "STATUS", "ATTEMPTS", "TOOK"), rows)


@workflows.command("resume")
@click.argument("workflow_id", metavar="ID")
@service_options
def resume_workflow(workflow_id: str, address: str, token: str | None, token_file: str | None) -> None:
    """Resume a RESUMABLE or FAILED workflow on the service (it runs there; follow it with
    ``actorflow workflows status ID``)."""
    with Service(address, token, token_file) as service:
        got = service.request("POST", _path("v1", "workflows", workflow_id, "resume"))
    click.echo(f"{got['id']}  {got['status']}")


def _bulk_workflows(
    verb: str, past: str, selection: dict[str, Any], yes: bool, as_json: bool, service: tuple[str, Any, Any]
) -> None:
    """The bulk form of ``workflows cancel`` or ``delete``: ``selection`` holds the filter and
    page options."""
    filters = filters_body(
        selection["prefix"],
        selection["everything"],
        selection["statuses"],
        selection["older_than"],
        selection["started_before"],
    )
    op = Operation(verb, past, "workflows", f"/v1/bulk/workflows/{verb}", filters)
    with Service(*service) as client:
        totals = run_bulk(client, op, dry_run=selection["dry_run"], yes=yes, batch=selection["batch_size"])
    report(op, totals, as_json)


@workflows.command("cancel")
@click.argument("workflow_id", metavar="[ID]", required=False)
@workflow_filter_options
@page_options
@service_options
def cancel_workflow(
    workflow_id: str | None,
    yes: bool,
    as_json: bool,
    address: str,
    token: str | None,
    token_file: str | None,
    **selection: Any,
) -> None:
    """Cancel a workflow: it stops at its next step and can no longer be resumed.

    Without ID, cancel every workflow the filters select (--prefix, --status, --older-than,
    --started-before, or --all), batch by batch; ended ones are skipped. Without --yes it
    counts them first and asks.
    """
    if workflow_id is None:
        _bulk_workflows("cancel", "cancelled", selection, yes, as_json, (address, token, token_file))
        return
    check_single(selection, "workflow")
    with Service(address, token, token_file) as service:
        got = service.request("POST", _path("v1", "workflows", workflow_id, "cancel"))
    if as_json:
        print_json(got)
        return
    click.echo(f"{got['id']}  {got['status']}")


@workflows.command("delete")
@click.argument("workflow_id", metavar="[ID]", required=False)
@workflow_filter_options
@page_options
@service_options
def delete_workflow(
    workflow_id: str | None,
    yes: bool,
    as_json: bool,
    address: str,
    token: str | None,
    token_file: str | None,
    **selection: Any,
) -> None:
    """Delete a workflow that is not running, with all its checkpoints.

    Without ID, delete every workflow the filters select (--prefix, --status, --older-than,
    --started-before, or --all), batch by batch; running ones are skipped. Without --yes it
    counts them first and asks.
    """
    if workflow_id is None:
        _bulk_workflows("delete", "deleted", selection, yes, as_json, (address, token, token_file))
        return
    check_single(selection, "workflow")
    if not yes:
        click.confirm(f"Delete workflow {workflow_id} and its checkpoints?", abort=True, err=True)
    with Service(address, token, token_file) as service:
        service.request("DELETE", _path("v1", "workflows", workflow_id))
    if as_json:
        print_json({"id": workflow_id, "deleted": True})
        return
    click.echo(f"deleted {workflow_id}")


__all__ = ["Failed", "actors", "call", "timers", "workflows"]
