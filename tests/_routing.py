"""Where a Serve ingress routes requests: each answer names its replica (``x-actorflow-replica``)."""

from __future__ import annotations

import time
from collections import defaultdict

import httpx


def steady(url: str, replicas: int, timeout: float = 60.0) -> set[str]:
    """Wait until requests reach ``replicas`` distinct replicas; return their names.

    Right after a deploy HAProxy's server list is still being filled in (each change is a
    reload of it), so where an actor's requests go may still move; once every replica has
    answered, and a moment later, the list is whole.
    """
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    with httpx.Client(base_url=url, timeout=30) as http:
        i = 0
        while len(seen) < replicas:
            assert time.monotonic() < deadline, f"requests reached only {sorted(seen)}"
            r = http.post(f"/v1/actors/Tally/probe-{i}/value")  # a 404 is fine: who answers counts
            seen.add(r.headers.get("x-actorflow-replica", "?"))
            i += 1
    time.sleep(1.0)
    return seen


def owners(url: str, actors: list[str], rounds: int = 5) -> dict[str, set[str]]:
    """The replicas that answered plain requests (no routing header) for each actor, each
    request on a new connection, as independent clients would send them."""
    seen: dict[str, set[str]] = defaultdict(set)
    for _ in range(rounds):
        for a in actors:
            r = httpx.post(f"{url}/v1/actors/Tally/{a}/value", timeout=30)
            seen[a].add(r.headers["x-actorflow-replica"])
    return seen
