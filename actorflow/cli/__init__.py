"""The ``actorflow`` command.

``serve`` runs the HTTP service on a local Ray; ``call``, ``actors``, ``timers`` and
``workflows`` work on a running service through its HTTP API (``--address``, ``--token-file``,
or ``$ACTORFLOW_ADDRESS``, ``$ACTORFLOW_TOKEN_FILE``); ``demo`` runs a short durable workflow
on a storage of its own; ``storage migrate`` moves a Redis's data to the current layout.

Every option goes after its subcommand and most have an environment variable, shown in
``--help``. The exit status is 0 on success, 1 when the command ran and failed (the service
is down or answered with an error), 2 for a usage or configuration error; errors are one line
on standard error. The bearer token is best given as ``$ACTORFLOW_TOKEN`` or in a file
(``--token-file PATH`` or ``$ACTORFLOW_TOKEN_FILE``): ``--token T`` puts it in the process
table, where other users of the machine can read it. Nothing here prints the token.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

import click

from actorflow.cli._common import err
from actorflow.cli._local import demo, storage
from actorflow.cli._remote import actors, call, timers, workflows
from actorflow.cli._serve import serve
from actorflow.errors import ActorflowError, ConfigError

#: Exit statuses.
OK, FAILED, USAGE = 0, 1, 2


def _versions() -> str:
    def of(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "unknown"

    return f"actorflow {of('actorflow')} (Ray {of('ray')})"


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(_versions())
        ctx.exit(OK)


_EPILOG = """\b
Environment (each command's --help says which it reads):
  ACTORFLOW_ADDRESS     the service's URL, for call, actors, timers, workflows
  ACTORFLOW_TOKEN       the bearer token (or ACTORFLOW_TOKEN_FILE: a file holding it)
  ACTORFLOW_STORAGE     the storage URL of serve and storage migrate
  ACTORFLOW_MODULES     serve's modules when none are given (comma-separated)
  ACTORFLOW_HOST, ACTORFLOW_PORT, ACTORFLOW_REPLICAS, ACTORFLOW_PROXY,
  ACTORFLOW_ACCESS_LOG, ACTORFLOW_NUM_CPUS   serve's options of those names

Exit status: 0 done, 1 the command failed, 2 a usage or configuration error.
"""


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=_EPILOG
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print the versions of actorflow and Ray, and exit.",
)
def cli() -> None:
    """Durable virtual actors and workflows on Ray Serve."""


for command in (serve, call, actors, timers, workflows, demo, storage):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``actorflow`` command with ``argv`` (default: the process's arguments); return
    its exit status (see the module docstring)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        cli.main(args=None if argv is None else list(argv), prog_name="actorflow", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.UsageError as exc:  # bad options or arguments: click's usage line and message
        exc.show()
        return USAGE
    except click.Abort as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):  # Ctrl-C once click runs the command
            err("interrupted")
            return 130
        err("aborted")  # a confirmation answered no
        return FAILED
    except click.ClickException as exc:  # Failed: the command ran and could not do its job
        err(exc.format_message())
        return exc.exit_code
    except ConfigError as exc:  # a setting to fix: a token file, a port, a storage URL...
        err(str(exc))
        return USAGE
    except ActorflowError as exc:
        err(str(exc))
        return FAILED
    except KeyboardInterrupt:  # Ctrl-C in a command other than serve
        err("interrupted")
        return 130
    return OK


__all__ = ["cli", "main"]
