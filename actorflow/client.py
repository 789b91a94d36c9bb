"""Remote actor handles: the same ``Cls.get_or_create(id).method.run()`` over a running service.

After ``workflow.init(address="http://host:8000", token=...)`` handles talk JSON over HTTP to
the service; with ``address="serve://actorflow"`` code inside the Ray cluster goes through a
Serve handle instead. Semantics match embedded mode: writer calls from one client to one actor
are sent one at a time in submission order (read-only calls are not held back), and errors come
back as the same exception types.

Failures of the service itself (it cannot be reached, a replica died under the call and the
proxy answered with a bare 500 or a 502/503/504, storage is unavailable) are told apart from
answers: a call with an idempotency key, and every request that changes nothing or is
idempotent by nature (create, read, list, delete), is retried through them with backoff for up
to ``retry_timeout`` seconds (30 by default; a replaced replica takes about 20 s here), without
risk of a second effect. (Create and delete are idempotent as HTTP's PUT and DELETE are: a
retry leaves the state the first attempt did, unless another client changed the actor in
between, so a retried delete can remove an actor that another client re-created meanwhile,
and a retried create whose first attempt applied reports ``False``.) A call without a key is
not retried (it might have been applied) and raises :class:`~actorflow.errors.RemoteError`
with the HTTP status.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import quote

from actorflow import _wire, errors
from actorflow._wire import error_from_json, is_service_failure
from actorflow.actor._class import VirtualActorClass
from actorflow.actor._context import Invoker

T = TypeVar("T")
SESSION_HEADER = _wire.SESSION_HEADER


def _json_or_none(resp: Any) -> Any:
    """The response's JSON body, or ``None`` when it has none or it is not JSON (a proxy's
    plain-text error page, say)."""
    if not resp.content:
        return None
    try:
        return resp.json()
    except ValueError:
        return None


class _LoopThread:
    """A private event loop in a daemon thread, for the blocking facade."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self.submit(coro).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


class _OrderedInvoker:
    """Shared ordering: writer calls to one actor go one at a time, in submission order."""

    def __init__(self, name: str) -> None:
        self._lt = _LoopThread(name)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def submit(
        self,
        ac: VirtualActorClass,
        actor_id: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        idempotency_key: str | None,
    ) -> concurrent.futures.Future[Any]:
        readonly = ac.method(method).readonly
        key = f"{ac.type_name}/{actor_id}"

        async def go() -> Any:
            if readonly:
                return await self._invoke(ac.type_name, actor_id, method, list(args), kwargs, idempotency_key)
            async with self._lock(key):
                return await self._invoke(ac.type_name, actor_id, method, list(args), kwargs, idempotency_key)

        return self._lt.submit(go())

    async def _invoke(
        self, t: str, i: str, method: str, args: list[Any], kwargs: dict[str, Any], key: str | None
    ) -> Any:
        raise NotImplementedError

    def require(self, ac: VirtualActorClass, actor_id: str) -> None:
        if not self.exists(ac, actor_id):
            raise errors.ActorNotFoundError(ac.type_name, actor_id)

    def exists(self, ac: VirtualActorClass, actor_id: str) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        self._lt.stop()


class HttpInvoker(_OrderedInvoker):
    """Handles over the HTTP API of a running actorflow service."""

    def __init__(
        self, address: str, token: str | None = None, timeout: float = 60.0, retry_timeout: float = 30.0
    ) -> None:
        import httpx

        super().__init__("actorflow-http")
        self.address = address.rstrip("/")
        self.retry_timeout = retry_timeout
        headers = {"authorization": f"Bearer {token}"} if token else {}

        async def make() -> httpx.AsyncClient:
            return httpx.AsyncClient(base_url=self.address, headers=headers, timeout=timeout)

        self._client = self._lt.run(make())

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        retry: bool = False,
    ) -> tuple[int, Any]:
        import httpx

        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.retry_timeout if retry else 0.0)
        delay = 0.1
        while True:
            try:
                resp = await self._client.request(method, path, json=body, headers=headers, params=params)
            except httpx.TransportError as exc:
                failure: errors.ActorflowError = errors.RemoteError(f"cannot reach {self.address}: {exc}")
            else:
                data = _json_or_none(resp)
                if resp.status_code < 400 and (data is not None or not resp.content):
                    return resp.status_code, data
                if resp.status_code < 400:
                    failure = errors.RemoteError(
                        f"HTTP {resp.status_code} from {self.address} is not JSON: {resp.text[:200]!r}",
                        resp.status_code,
                    )
                elif data is None:
                    failure = errors.RemoteError(
                        f"HTTP {resp.status_code} from {self.address} (the service failed, not the "
                        f"method): {resp.text[:200]!r}",
                        resp.status_code,
                    )
                else:
                    failure = error_from_json(resp.status_code, data)
                if not is_service_failure(resp.status_code, data):
                    raise failure
            if loop.time() + delay > deadline:
                raise failure
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    @staticmethod
    def _path(t: str, i: str, *rest: str) -> str:
        # Ids may hold ':' and '@', which a path needs no escape for: left as they are, the path
        # is the one curl sends, and HAProxy (which hashes the raw path) routes both alike.
        return "/v1/actors/" + "/".join(quote(p, safe=":@") for p in (t, i, *rest))

    @classmethod
    def call_request(
        cls, t: str, i: str, method: str, args: list[Any], kwargs: dict[str, Any], key: str | None
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        """How a call is sent: ``(path, headers, JSON body)``. The session header routes it in
        Serve's classic mode; HAProxy routes by the path alone."""
        headers = {SESSION_HEADER: f"{t}/{i}"}
        if key is not None:
            headers[_wire.IDEMPOTENCY_HEADER] = key
        body: dict[str, Any] = {}
        if args:
            body["args"] = args
        if kwargs:
            body["kwargs"] = kwargs
        return cls._path(t, i, method), headers, body

    async def _invoke(
        self, t: str, i: str, method: str, args: list[Any], kwargs: dict[str, Any], key: str | None
    ) -> Any:
        path, headers, body = self.call_request(t, i, method, args, kwargs, key)
        _, data = await self._request("POST", path, body, headers, retry=key is not None)
        return data["result"]

    def create(
        self, ac: VirtualActorClass, actor_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bool:
        status, _ = self._lt.run(
            self._request(
                "POST", self._path(ac.type_name, actor_id), {"args": list(args), "kwargs": kwargs}, retry=True
            )
        )
        return status == 201

    def exists(self, ac: VirtualActorClass, actor_id: str) -> bool:
        try:
            self._lt.run(self._request("GET", self._path(ac.type_name, actor_id), retry=True))
            return True
        except errors.ActorNotFoundError:
            return False

    def describe(self, ac: VirtualActorClass, actor_id: str) -> dict[str, Any]:
        _, data = self._lt.run(self._request("GET", self._path(ac.type_name, actor_id), retry=True))
        return dict(data)

    def list_ids(self, type_name: str, *, start_after: str | None, limit: int | None) -> list[str]:
        out: list[str] = []
        after = start_after
        while True:
            page = min(1000, limit - len(out)) if limit is not None else 1000
            if page <= 0:
                return out
            params: dict[str, Any] = {"limit": page}
            if after is not None:
                params["start_after"] = after
            _, data = self._lt.run(
                self._request("GET", "/v1/actors/" + quote(type_name, safe=""), params=params, retry=True)
            )
            out += data["ids"]
            if data.get("next") is None:
                return out
            after = data["next"]

    def delete(self, ac: VirtualActorClass, actor_id: str) -> None:
        self._lt.run(self._request("DELETE", self._path(ac.type_name, actor_id), retry=True))

    def close(self) -> None:
        try:
            self._lt.run(self._client.aclose(), timeout=5)
        finally:
            super().close()


class ServeInvoker(_OrderedInvoker):
    """Handles through a Serve handle to the ``ActorHost`` deployment (code inside the cluster)."""

    def __init__(self, app_name: str = "actorflow") -> None:
        from ray import serve

        super().__init__("actorflow-serve")
        self._host = serve.get_deployment_handle("ActorHost", app_name=app_name)

    def _to(self, t: str, i: str) -> Any:
        return self._host.options(session_id=f"{t}/{i}")

    async def _invoke(
        self, t: str, i: str, method: str, args: list[Any], kwargs: dict[str, Any], key: str | None
    ) -> Any:
        try:
            return await self._to(t, i).invoke.remote(t, i, method, args, kwargs, key)
        except Exception as exc:
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, BaseException) else exc) from None

    def create(
        self, ac: VirtualActorClass, actor_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bool:
        resp = self._to(ac.type_name, actor_id).create.remote(ac.type_name, actor_id, list(args), kwargs)
        return bool(resp.result())

    def exists(self, ac: VirtualActorClass, actor_id: str) -> bool:
        return bool(self._to(ac.type_name, actor_id).exists.remote(ac.type_name, actor_id).result())

    def list_ids(self, type_name: str, *, start_after: str | None, limit: int | None) -> list[str]:
        return list(self._host.list_ids.remote(type_name, start_after, limit or 100_000).result())

    def delete(self, ac: VirtualActorClass, actor_id: str) -> None:
        self._to(ac.type_name, actor_id).delete.remote(ac.type_name, actor_id).result()


def _local_ingress() -> str:
    """The HTTP address of this node's Serve ingress (code running inside the Ray cluster)."""
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        raise errors.ConfigError("serve:// needs Ray Serve running in this Ray cluster")
    return f"http://127.0.0.1:{client.http_config.port}"


def connect(address: str, token: str | None = None) -> Invoker:
    """An invoker for ``http(s)://host:port`` or ``serve://app_name``.

    ``serve://`` is for code inside the Ray cluster. With Serve in HAProxy mode it speaks HTTP
    to this node's ingress, whose HAProxy routes each call to its actor's owner (Serve's own
    handles could not: its request routers are not allowed on the ingress in that mode); in
    classic mode it uses Serve handles, routed by the consistent-hash router.
    """
    if address.startswith(("http://", "https://")):
        return HttpInvoker(address, token)
    if address.startswith("serve://"):
        if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
            return HttpInvoker(_local_ingress(), token)
        return ServeInvoker(address[len("serve://") :] or "actorflow")
    raise errors.ConfigError(f"unknown service address {address!r}; use http(s)://host:port or serve://app")
