"""The settings of the actorflow service, resolved and checked before anything starts.

The bearer token is best given as ``$ACTORFLOW_TOKEN`` or in a file (``token_file``, or
``$ACTORFLOW_TOKEN_FILE``): a token on a command line sits in the process table, where other
users of the machine can read it. Nothing here logs or prints the token. No Ray here: the CLI
and the client use these before Ray starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from actorflow.engine import canonical_url
from actorflow.errors import ConfigError
from actorflow.storage import default_storage_url, parse_storage_url

#: Largest request body accepted, in bytes (413 above it).
DEFAULT_MAX_BODY = 1024 * 1024
#: Seconds a request body may take to arrive (408 after it).
DEFAULT_BODY_TIMEOUT = 10.0

TOKEN_ENV = "ACTORFLOW_TOKEN"
TOKEN_FILE_ENV = "ACTORFLOW_TOKEN_FILE"
ACCESS_LOG_ENV = "ACTORFLOW_ACCESS_LOG"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def read_token_file(path: str) -> str:
    """The token in file ``path``: its text with surrounding whitespace stripped.

    Raises :class:`ConfigError` naming the path, never the content, for a file that cannot be
    read, is not UTF-8 text, is empty, or holds more than one line (no HTTP header carries that).
    """
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        # The decoder's message quotes a byte of the file, which is part of the secret.
        raise ConfigError(f"token file {path} is not UTF-8 text") from None
    if not token:
        raise ConfigError(f"token file {path} is empty")
    if any(ch in "\r\n\0" for ch in token):
        raise ConfigError(f"token file {path} must hold the token alone, on one line")
    return token


def resolve_token(
    token: str | None, token_file: str | None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The bearer token from an explicit value or file, else from the environment; None: no auth.

    An explicit ``token`` or ``token_file`` wins over ``$ACTORFLOW_TOKEN`` and
    ``$ACTORFLOW_TOKEN_FILE``. Giving both of a pair (both arguments, or both variables) is a
    :class:`ConfigError`, as is a token file that :func:`read_token_file` refuses. Empty values
    count as not given.
    """
    env = os.environ if environ is None else environ
    if token and token_file:
        raise ConfigError("give the token or a token file, not both")
    if token:
        return token
    if token_file:
        return read_token_file(token_file)
    env_token, env_file = env.get(TOKEN_ENV), env.get(TOKEN_FILE_ENV)
    if env_token and env_file:
        raise ConfigError(f"${TOKEN_ENV} and ${TOKEN_FILE_ENV} are both set; set one")
    if env_file:
        return read_token_file(env_file)
    return env_token or None


def settings_from(args: dict[str, Any]) -> dict[str, Any]:
    """Resolve builder arguments against the environment and validate them."""
    storage = args.get("storage") or os.environ.get("ACTORFLOW_STORAGE") or default_storage_url()
    kind, _ = parse_storage_url(storage)
    if kind == "memory":
        raise ConfigError(
            f"storage {storage!r} lives in one process and is lost with it; the service needs "
            "storage its replicas share: sqlite:///path/file.db or redis://host:port/db"
        )

    modules = args.get("modules")
    if modules is None:
        modules = [m for m in os.environ.get("ACTORFLOW_MODULES", "").split(",") if m.strip()]
    if isinstance(modules, str):
        modules = [modules]
    return {
        "access_log": _flag("access_log", args.get("access_log"), ACCESS_LOG_ENV),
        "storage": canonical_url(storage),
        "token": resolve_token(args.get("token"), args.get("token_file")),
        "modules": [m.strip() for m in modules],
        "replicas": int(args.get("actor_host_replicas", 2)),
        "max_body": int(args.get("max_body", DEFAULT_MAX_BODY)),
        "body_timeout": float(args.get("body_timeout", DEFAULT_BODY_TIMEOUT)),
        "max_replicas_per_node": (
            int(args["max_replicas_per_node"]) if args.get("max_replicas_per_node") is not None else None
        ),
    }


def _flag(name: str, given: object, env: str) -> bool:
    """A yes/no setting: the argument if given, else the variable (``1/true/yes/on`` or
    ``0/false/no/off``, any case; unset is no). Anything else is a :class:`ConfigError`."""
    if given is not None and not isinstance(given, str):
        return bool(given)
    text = (os.environ.get(env, "") if given is None else given).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name}: {text!r} is neither yes nor no (${env}: 1/true/yes/on or 0/false/no/off)")
