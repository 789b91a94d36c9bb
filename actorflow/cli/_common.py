"""What the ``actorflow`` subcommands share: the token and address options, the client of a
running service, JSON and table output, and the two kinds of failure (exit status 1 for one
at run time, 2 for a usage error)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import click

from actorflow.serve.settings import TOKEN_ENV, TOKEN_FILE_ENV, resolve_token

F = TypeVar("F", bound=Callable[..., Any])

ADDRESS_ENV = "ACTORFLOW_ADDRESS"
DEFAULT_ADDRESS = "http://127.0.0.1:8000"
#: Seconds a command waits for the service to answer one request.
REQUEST_TIMEOUT = 60.0


class Failed(click.ClickException):
    """A command that ran and failed (the service is down, said no, ...): exit status 1."""

    exit_code = 1


def token_options(what: str) -> Callable[[F], F]:
    """``--token`` and ``--token-file``. Their variables are read by
    :func:`~actorflow.serve.settings.resolve_token` rather than by click, so that a flag wins
    over either variable and two sources of one kind are refused."""

    def decorate(f: F) -> F:
        f = click.option(
            "--token-file",
            metavar="PATH",
            default=None,
            help=f"Read the token from PATH, surrounding whitespace stripped "
            f"[env var: {TOKEN_FILE_ENV}, else {TOKEN_ENV}; neither set: no token]",
        )(f)
        f = click.option(
            "--token",
            metavar="TOKEN",
            default=None,
            help=f"The {what}. Other users can read it in the process table, so prefer "
            f"${TOKEN_ENV} or --token-file.",
        )(f)
        return f

    return decorate


def _check_address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise click.BadParameter(f"{value!r} is not an http:// or https:// URL", ctx, param)
    return value.rstrip("/")


def service_options(f: F) -> F:
    """``--address`` and the token options of a command that talks to a running service."""
    f = token_options("bearer token to send to the service")(f)
    return click.option(
        "--address",
        metavar="URL",
        default=DEFAULT_ADDRESS,
        envvar=ADDRESS_ENV,
        show_envvar=True,
        show_default=True,
        callback=_check_address,
        help="The service's URL.",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(f)


class Service:
    """The HTTP API of a running service (DESIGN §5), one request at a time.

    Every failure is a :class:`Failed` with one line that says what went wrong and, where it
    can, what to do: the service cannot be reached, did not answer in time, or answered with an
    error (its status, error code and message)."""

    def __init__(self, address: str, token: str | None, token_file: str | None) -> None:
        import httpx

        headers = {"accept": "application/json"}
        bearer = resolve_token(token, token_file)  # ConfigError (status 2) for a bad file
        if bearer:
            headers["authorization"] = f"Bearer {bearer}"
        self.address = address
        self.authenticated = bool(bearer)
        self._http = httpx.Client(base_url=address, headers=headers, timeout=REQUEST_TIMEOUT)

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """The decoded JSON answer of one request (None for an empty one)."""
        import httpx

        try:
            resp = self._http.request(method, path, json=json_body, params=params, headers=headers)
        except httpx.ConnectError as exc:
            raise Failed(
                f"cannot reach the service at {self.address} ({_reason(exc)}): is `actorflow serve` "
                f"running? Point at it with --address or ${ADDRESS_ENV}"
            ) from None
        except httpx.TimeoutException:
            raise Failed(
                f"the service at {self.address} did not answer within {REQUEST_TIMEOUT:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise Failed(f"talking to the service at {self.address}: {_reason(exc)}") from None
        body: Any = None
        if resp.content:
            try:
                body = resp.json()
            except ValueError:
                body = None
        if resp.status_code >= 400:
            raise Failed(self._explain(resp.status_code, body, resp.text))
        return body

    def _explain(self, status: int, body: Any, text: str) -> str:
        if not isinstance(body, dict) or "error" not in body:
            return f"HTTP {status} from {self.address}: {text.strip()[:200] or 'no body'}"
        kind = f" {body['type']}:" if body.get("type") else ""
        line = f"HTTP {status} {body['error']}:{kind} {body.get('message', '')}".rstrip()
        if status == 401:
            line += (
                f" (give the service's token with --token-file or ${TOKEN_FILE_ENV} / ${TOKEN_ENV})"
                if not self.authenticated
                else " (the token given is not the service's)"
            )
        return line


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.split("] ", 1)[-1] if text else type(exc).__name__


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def print_table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    """Columns padded to their widest cell, under their header; ``(none)`` for no rows."""
    table = [[str(c) for c in header]] + [["" if c is None else str(c) for c in row] for row in rows]
    if len(table) == 1:
        click.echo("(none)")
        return
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def when(epoch: float | None, now: float | None = None) -> str:
    """An epoch time as local ISO time to the second, with how far off it is (``in 5s``)."""
    if epoch is None:
        return "-"
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
    delta = epoch - now
    span = _span(abs(delta))
    return f"{stamp} ({'in ' + span if delta >= 0 else span + ' ago'})"


def _span(seconds: float) -> str:
    """``42s``, ``5m07s``, ``3h05m``, ``2d04h``: the two largest units, truncated."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def err(message: str) -> None:
    """One line on standard error, prefixed like every message of the command."""
    print(f"actorflow: {message}", file=sys.stderr, flush=True)
