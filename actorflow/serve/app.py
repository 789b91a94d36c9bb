"""The Ray Serve application: ``actorflow.serve.app:build`` (``deployments.app:build`` before).

One deployment, ``ActorHost``, is both the HTTP ingress (the FastAPI app of
:mod:`actorflow.serve.api`) and the owner of actors, so a call reaches its actor in one hop.
By default Serve runs in HAProxy mode (:mod:`actorflow.serve.ingress`): HAProxy sends every request
for one actor id (the path up to ``/v1/actors/{type}/{id}``) to one replica, whoever the client
is, and the replica serves it directly. In Serve's classic mode a consistent-hash router on the
``x-session-id`` header does the same for clients that send it (the Python client does), and
other requests run on whichever replica gets them; they are not forwarded, because a Serve
handle call between replicas of one deployment was seen to hang now and then (Ray 2.60).

Routing gives affinity only: correctness never depends on it. Every commit is a compare-and-set
on the actor's version in storage, so during a replica crash, a scale change or a KubeRay
upgrade (two clusters side by side) an actor touched by two replicas loses no update.

Builder arguments (all optional), each falling back to an environment variable:

=======================  ========================  ==========================================
arg                      env                       meaning
=======================  ========================  ==========================================
``storage``              ``ACTORFLOW_STORAGE``     storage URL (default: per-user SQLite file)
``token``                ``ACTORFLOW_TOKEN``       bearer token for every route but /healthz
``token_file``           ``ACTORFLOW_TOKEN_FILE``  file holding that token (whitespace stripped)
``modules``              ``ACTORFLOW_MODULES``     modules defining actor types (comma list)
``actor_host_replicas``                            replicas of ActorHost (default 2)
``access_log``           ``ACTORFLOW_ACCESS_LOG``  a log line per request (default: off)
``max_body``                                       request body limit in bytes (default 1 MiB)
``body_timeout``                                   seconds a request body may take (default 10)
``max_replicas_per_node``                          spread replicas over nodes (default: no limit)
=======================  ========================  ==========================================

``token`` and ``token_file`` exclude each other, as do their two variables, and either argument
wins over both variables. A token file that cannot be read, is empty or holds more than one line
is a :class:`~actorflow.errors.ConfigError` when the application is built, so a bad mount fails
the deployment rather than serving without authentication. The file is read at build time, not
on each request: a changed file takes effect with the next build.
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve
from ray.serve import Application
from starlette.requests import Request

from actorflow import _metrics, _wire
from actorflow.serve.api import ApiSettings, create_api, encode_result
from actorflow.serve.backend import LocalBackend, load_modules
from actorflow.serve.ingress import haproxy_enabled
from actorflow.serve.settings import DEFAULT_BODY_TIMEOUT, settings_from

APP_NAME = "actorflow"
ROUTER_CONFIG = {
    "request_router_class": "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter",
    "request_router_kwargs": {"num_fallback_replicas": 0},
}


@serve.deployment(
    name="ActorHost",
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=64,
    graceful_shutdown_wait_loop_s=0.5,
    graceful_shutdown_timeout_s=10,
)
@serve.ingress()
class ActorHost:
    """HTTP ingress and actor owner. Handle methods (``invoke``, ...) serve in-cluster callers."""

    async def __init__(  # type: ignore[misc]
        self,
        storage: str,
        modules: list[str],
        token: str | None,
        max_body: int,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
    ) -> None:
        from actorflow.engine import WorkflowRuntime

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        load_modules(modules)
        # The runtime shares the replica's event loop: a call reaches its actor with no thread hop.
        self.workflows = await WorkflowRuntime.attach(storage)
        self.workflows.start_recovery()  # abandoned workflows resume within seconds
        self.backend = LocalBackend(self.workflows)
        replica = serve.get_replica_context().replica_id.unique_id
        self.settings = ApiSettings(
            token=token, max_body=max_body, body_timeout=body_timeout, replica=replica
        )
        self.classic = not haproxy_enabled()

    def __serve_build_asgi_app__(self) -> Any:
        # Behind HAProxy every request is routed by its path; the classic proxy routes only
        # those that carry the session header, and the rest are counted.
        return create_api(self.backend, self.settings, call=self._route_call if self.classic else None)

    async def _route_call(
        self,
        type_name: str,
        actor_id: str,
        method: str,
        args: list[Any],
        kwargs: dict[str, Any],
        key: str | None,
        request: Request,
    ) -> Any:
        if request.headers.get(_wire.SESSION_HEADER) != f"{type_name}/{actor_id}":
            _metrics.inc("actorflow_unrouted_calls")  # ran here, perhaps not on the owner
        encoded: bytes = await self.backend.call(
            type_name, actor_id, method, args, kwargs, key, encode=encode_result
        )
        return encoded

    # ---------------------------------------------------------------- handle entry points
    async def invoke(
        self,
        type_name: str,
        actor_id: str,
        method: str,
        args: list[Any],
        kwargs: dict[str, Any],
        idempotency_key: str | None,
    ) -> Any:
        """Call an actor method on this replica (route here with ``session_id={type}/{id}``)."""
        return await self.backend.call(type_name, actor_id, method, args, kwargs, idempotency_key)

    async def create(self, type_name: str, actor_id: str, args: list[Any], kwargs: dict[str, Any]) -> bool:
        return await self.backend.create(type_name, actor_id, args, kwargs)

    async def exists(self, type_name: str, actor_id: str) -> bool:
        from actorflow.errors import ActorNotFoundError

        try:
            await self.backend.describe(type_name, actor_id)
            return True
        except ActorNotFoundError:
            return False

    async def delete(self, type_name: str, actor_id: str) -> None:
        await self.backend.delete(type_name, actor_id)

    async def list_ids(self, type_name: str, start_after: str | None, limit: int) -> list[str]:
        return await self.backend.list_ids(type_name, start_after, limit)


def build(args: dict[str, Any] | None = None) -> Application:
    """The application for ``serve run`` / ``serveConfigV2`` (import path ``actorflow.serve.app:build``).

    In HAProxy mode (see :mod:`actorflow.serve.ingress`) HAProxy routes by actor id and Serve
    allows no request router on the ingress; in classic mode ActorHost gets Serve's
    consistent-hash router on the session header. Decided by this process's environment,
    which must match the cluster's (the same variables before ``ray.init`` or ``ray start``).
    """
    s = settings_from(args or {})
    load_modules(s["modules"])  # fail here, with the module's error, rather than in every replica
    host: Any = ActorHost  # a Serve Deployment once decorated
    options: dict[str, Any] = {
        "num_replicas": s["replicas"],
        # On the deployment, so it reaches every replica (Serve's own processes take theirs from
        # serve.start). Serve writes its access log at INFO: off means warnings only.
        "logging_config": {
            "enable_access_log": s["access_log"],
            "log_level": "INFO" if s["access_log"] else "WARNING",
        },
    }
    if s["max_replicas_per_node"] is not None:
        options["max_replicas_per_node"] = s["max_replicas_per_node"]
    if not haproxy_enabled():
        options["request_router_config"] = ROUTER_CONFIG
    return host.options(**options).bind(
        s["storage"], s["modules"], s["token"], s["max_body"], s["body_timeout"]
    )
