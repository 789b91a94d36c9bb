"""Bulk operations from the command line: the filter options, and the loop that runs one through
the service's ``/v1/bulk/...`` routes batch by batch, with a line per batch on standard error.

Without ``--yes`` a destructive run first counts what it will touch (a dry run, batch by batch)
and asks before it changes anything; ``--dry-run`` only counts. Each batch is one request that
looks at ``--batch-size`` ids, so a huge store is gone through in bounded steps, and a run
stopped half-way (Ctrl-C, the service down) can simply be started again: the filters pick what
is left.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import click

from actorflow.cli._common import Failed, Service, print_json

F = TypeVar("F", bound=Callable[..., Any])

#: What one request looks at when ``--batch-size`` is not given (the API's own default).
DEFAULT_BATCH = 100
MAX_BATCH = 1000
STATUSES = ("RUNNING", "SUCCESSFUL", "FAILED", "RESUMABLE", "CANCELED", "PENDING")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``5m``, ``1h30m``, ``2d``, ``1w`` (``ValueError`` if not)."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    if not text or _PART.sub("", text):
        raise ValueError(f"{text!r} is not a duration such as 90s, 5m, 1h30m or 2d")
    return sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(text))


def parse_time(text: str) -> float:
    """A Unix time from ``1717000000`` or an ISO-8601 date and time (local time when it has no
    offset); ``ValueError`` if it is neither."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is neither a Unix time nor an ISO-8601 date and time") from None


class _Parsed(click.ParamType):
    def __init__(self, name: str, parse: Callable[[str], float]) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return self._parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Parsed("duration", parse_duration)
WHEN = _Parsed("time", parse_time)


def page_options(f: F) -> F:
    """``--dry-run``, ``--batch-size``, ``--yes`` and ``--json`` of a bulk command."""
    for option in reversed(
        (
            click.option("--dry-run", is_flag=True, help="Change nothing: count what would be done."),
            click.option(
                "--batch-size",
                type=click.IntRange(1, MAX_BATCH),
                default=None,
                help=f"Ids each request looks at (default {DEFAULT_BATCH}).",
            ),
            click.option("--yes", "-y", is_flag=True, help="Do not count first and ask for confirmation."),
            click.option("--json", "as_json", is_flag=True, help="Print the totals as JSON."),
        )
    ):
        f = option(f)
    return f


def prefix_options(what: str) -> Callable[[F], F]:
    """``--prefix`` and ``--all``."""

    def decorate(f: F) -> F:
        f = click.option(
            "--all", "everything", is_flag=True, help=f"Every {what}, when no other filter is given."
        )(f)
        return click.option("--prefix", metavar="P", help=f"Only {what}s whose id starts with P.")(f)

    return decorate


def workflow_filter_options(f: F) -> F:
    """The filters of a bulk workflow command: ``--prefix``, ``--status``, ``--older-than``,
    ``--started-before`` and ``--all``."""
    f = click.option(
        "--started-before",
        type=WHEN,
        metavar="TIME",
        help="Only workflows whose current run started before TIME (Unix time or ISO 8601).",
    )(f)
    f = click.option(
        "--older-than",
        type=DURATION,
        metavar="AGE",
        help="Only workflows whose current run started more than AGE ago (90s, 5m, 1h30m, 2d).",
    )(f)
    f = click.option(
        "--status",
        "statuses",
        multiple=True,
        type=click.Choice(STATUSES, case_sensitive=False),
        help="Only workflows in this status (repeat for several).",
    )(f)
    return prefix_options("workflow")(f)


def filters_body(
    prefix: str | None,
    everything: bool,
    statuses: tuple[str, ...] | None = None,
    older_than: float | None = None,
    started_before: float | None = None,
    *,
    single: bool = True,
) -> dict[str, Any]:
    """The JSON filters of a bulk request (``statuses`` None: a command on actors, which has
    only ``--prefix``); a usage error when there are none and no ``--all`` (the service
    refuses that too: an empty filter never means everything). ``single``: the command also
    takes one ID instead."""
    body: dict[str, Any] = {}
    if prefix is not None:
        body["prefix"] = prefix
    if statuses:
        body["status"] = sorted({s.upper() for s in statuses})
    if older_than is not None:
        body["older_than"] = older_than
    if started_before is not None:
        body["started_before"] = started_before
    if not body and not everything:
        filters = "--prefix" if statuses is None else "--prefix, --status, --older-than, --started-before"
        raise click.UsageError(f"give a filter ({filters}) or --all" + (", or an ID" if single else ""))
    if everything:
        body["all"] = True
    return body


@dataclass
class Totals:
    """The sums over the batches of a bulk run."""

    dry_run: bool
    scanned: int = 0
    matched: int = 0
    affected: int = 0
    skipped: int = 0
    batches: int = 0

    def add(self, answer: dict[str, Any]) -> None:
        self.batches += 1
        for name in ("scanned", "matched", "affected", "skipped"):
            setattr(self, name, getattr(self, name) + int(answer[name]))

    def public(self) -> dict[str, Any]:
        """The totals as ``--json`` prints them."""
        return asdict(self)


@dataclass(frozen=True)
class Operation:
    """One bulk operation as the command names it: ``verb`` ("cancel"), its past ("cancelled"),
    what it works on ("workflows"), and the route and filters of its requests."""

    verb: str
    past: str
    noun: str
    path: str
    filters: dict[str, Any]


def run_bulk(service: Service, op: Operation, *, dry_run: bool, yes: bool, batch: int | None) -> Totals:
    """Run ``op`` batch by batch until the service says nothing is left (its ``next`` is
    null) and return the totals. With neither ``dry_run`` nor ``yes``, count first and ask
    (``click.Abort`` for no; nothing to do: the count, asking nothing)."""
    size = batch or DEFAULT_BATCH
    if not dry_run and not yes:
        counted = _loop(service, op, True, size, "counting")
        if counted.affected == 0:
            counted.dry_run = False
            return counted
        question = f"{op.verb.capitalize()} {counted.affected} {op.noun} ({describe(op.filters)})?"
        click.confirm(question, abort=True, err=True)
    return _loop(service, op, dry_run, size, "")


def _loop(service: Service, op: Operation, dry_run: bool, size: int, label: str) -> Totals:
    totals = Totals(dry_run)
    after: str | None = None
    while True:
        body = {**op.filters, "dry_run": dry_run, "limit": size, "start_after": after}
        try:
            answer = service.request("POST", op.path, json_body=body)
        except Failed as exc:
            if totals.batches == 0:
                raise
            done = f"{totals.affected} {op.past}" if not dry_run else f"{totals.affected} counted"
            raise Failed(
                f"{exc.format_message()} (after {totals.batches} batches, {done}; run it again to go on)"
            ) from None
        totals.add(answer)
        if dry_run:
            line = f"{answer['affected']} to {op.verb}, {answer['skipped']} to skip"
        else:
            line = f"{answer['affected']} {op.past}, {answer['skipped']} skipped"
        head = f"{label}: batch" if label else "batch"
        click.echo(f"{head} {totals.batches}: {line} ({totals.affected} so far)", err=True)
        after = answer["next"]
        if after is None:
            return totals


def describe(filters: dict[str, Any]) -> str:
    """The filters in words, for the confirmation question."""
    parts = []
    if "prefix" in filters:
        parts.append(f"id prefix {filters['prefix']!r}")
    if "status" in filters:
        parts.append("status " + " or ".join(filters["status"]))
    if "older_than" in filters:
        parts.append(f"started over {filters['older_than']:g} s ago")
    if "started_before" in filters:
        stamp = datetime.datetime.fromtimestamp(filters["started_before"]).isoformat(timespec="seconds")
        parts.append(f"started before {stamp}")
    return ", ".join(parts) or "all of them"


def report(op: Operation, totals: Totals, as_json: bool) -> None:
    """The result of a bulk run, on standard output."""
    if as_json:
        print_json(totals.public())
        return
    counts = f"{totals.matched} matched, {totals.skipped} skipped"
    if totals.dry_run:
        click.echo(f"would {op.verb} {totals.affected} {op.noun} ({counts}; nothing changed)")
    else:
        click.echo(f"{op.past} {totals.affected} {op.noun} ({counts})")


_FLAGS = {"everything": "--all", "statuses": "--status"}


def check_single(given: dict[str, Any], what: str) -> None:
    """A usage error when bulk options (``given``: by parameter name) come with one ID."""
    used = [
        _FLAGS.get(name, f"--{name.replace('_', '-')}")
        for name, value in given.items()
        if value not in (None, False, ())
    ]
    if used:
        raise click.UsageError(f"{', '.join(used)}: options that select many {what}s go without an ID")
