"""A property test: random create / call / keyed call / delete / re-create / read sequences,
each step run by one of two runtimes on one storage, checked against a reference model.

The two runtimes share nothing but the storage (each has its own loop, connection and actor
cache), so every way a cache can go stale (a delete and re-create elsewhere, records of a
deleted actor, a version number seen before) is exercised. Ids include ``:`` so that one id
can be a prefix of another's sub-workflow and key names. Hypothesis shrinks any divergence to
a short sequence. Rules that roll the storage back to an earlier checkpoint (with the model)
stand for a crash that loses the last writes, or a restore from a backup.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import _rollback
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from actorflow import workflow
from actorflow.actor import ActorRuntime, actor_runtime, lookup
from actorflow.engine import WorkflowRuntime
from actorflow.errors import ActorNotFoundError, IdempotencyKeyReusedError


@workflow.virtual_actor(name="PropCounter")
class PropCounter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, by: int) -> int:
        self.n += by
        return self.n

    @workflow.virtual_actor.readonly
    def value(self) -> int:
        return self.n


AC = lookup("PropCounter")
IDS = ["a", "a:b", "a:b:c"]
KEYS = ["k1", "k2", "k3"]
_examples = itertools.count()


@pytest.fixture
def runtimes(storage_url: str) -> Iterator[list[ActorRuntime]]:
    pair = [WorkflowRuntime(storage_url), WorkflowRuntime(storage_url)]
    try:
        yield [actor_runtime(w) for w in pair]
    finally:
        for w in pair:
            w.close()


def run_machine(runtimes: list[ActorRuntime], url: str, steps: int, examples: int) -> int:
    done = [0]

    class TwoRuntimes(RuleBasedStateMachine):
        """The model: id -> (count, {key: (by, result)}), or absent."""

        @initialize()
        def fresh_ids(self) -> None:
            # Each example gets ids of its own; the runtimes (and their caches) live on.
            self.prefix = f"e{next(_examples)}-"
            self.model: dict[str, tuple[int, dict[str, tuple[int, int]]]] = {}
            # Ids whose actor was deleted: a call there is refused, where a call on an id that
            # was never created activates the actor.
            self.deleted: set[str] = set()
            self.saved: Any = None

        def _call(self, p: int, actor: str, method: str, args: tuple[Any, ...], key: str | None) -> Any:
            done[0] += 1
            return runtimes[p].submit(AC, self.prefix + actor, method, args, {}, key).result(timeout=60)

        @rule(p=st.integers(0, 1), actor=st.sampled_from(IDS))
        def create(self, p: int, actor: str) -> None:
            done[0] += 1
            created = runtimes[p].create(AC, self.prefix + actor, (), {})
            assert created == (actor not in self.model)
            self.model.setdefault(actor, (0, {}))
            self.deleted.discard(actor)

        def _absent(self, actor: str) -> bool:
            """Whether a call on ``actor`` must be refused; activates it in the model if not."""
            if actor in self.model:
                return False
            if actor in self.deleted:
                return True
            self.model[actor] = (0, {})  # the call activates it
            return False

        @rule(p=st.integers(0, 1), actor=st.sampled_from(IDS), by=st.integers(1, 3))
        def call(self, p: int, actor: str, by: int) -> None:
            if self._absent(actor):
                with pytest.raises(ActorNotFoundError):
                    self._call(p, actor, "add", (by,), None)
                return
            n, keys = self.model[actor]
            assert self._call(p, actor, "add", (by,), None) == n + by
            self.model[actor] = (n + by, keys)

        @rule(
            p=st.integers(0, 1), actor=st.sampled_from(IDS), key=st.sampled_from(KEYS), by=st.integers(1, 2)
        )
        def keyed_call(self, p: int, actor: str, key: str, by: int) -> None:
            if self._absent(actor):
                with pytest.raises(ActorNotFoundError):
                    self._call(p, actor, "add", (by,), key)
                return
            n, keys = self.model[actor]
            if key in keys:
                recorded_by, result = keys[key]
                if recorded_by != by:
                    with pytest.raises(IdempotencyKeyReusedError):
                        self._call(p, actor, "add", (by,), key)
                else:
                    assert self._call(p, actor, "add", (by,), key) == result
                return
            assert self._call(p, actor, "add", (by,), key) == n + by
            self.model[actor] = (n + by, {**keys, key: (by, n + by)})

        @rule(p=st.integers(0, 1), actor=st.sampled_from(IDS))
        def delete(self, p: int, actor: str) -> None:
            done[0] += 1
            runtimes[p].delete(AC, self.prefix + actor)
            if self.model.pop(actor, None) is not None:
                self.deleted.add(actor)

        @rule(p=st.integers(0, 1), actor=st.sampled_from(IDS), times=st.integers(1, 6))
        def burst(self, p: int, actor: str, times: int) -> None:
            """Several calls in a row on one runtime: its cache moves ahead of the other's."""
            for _ in range(times):
                self.call(p, actor, 1)

        @rule(p=st.integers(0, 1), actor=st.sampled_from(IDS))
        def recreate(self, p: int, actor: str) -> None:
            """Delete and create again on one runtime, while the other may hold it cached."""
            self.delete(p, actor)
            self.create(p, actor)

        @rule()
        def checkpoint(self) -> None:
            """Note the storage and the model as they are now (see ``rollback``)."""
            model = {a: (n, dict(k)) for a, (n, k) in self.model.items()}
            self.saved = (_rollback.save(url), model, set(self.deleted))

        @rule()
        def rollback(self) -> None:
            """The storage goes back to the last checkpoint (a crash that lost its last writes,
            a restore): the model goes back with it, the runtimes' caches do not."""
            if getattr(self, "saved", None) is None:
                return
            stored, model, deleted = self.saved
            _rollback.restore(url, stored)
            self.model = {a: (n, dict(k)) for a, (n, k) in model.items()}
            self.deleted = set(deleted)

        @rule(p=st.integers(0, 1), actor=st.sampled_from(IDS))
        def read(self, p: int, actor: str) -> None:
            if actor not in self.model:
                if actor in self.deleted:
                    with pytest.raises(ActorNotFoundError):
                        self._call(p, actor, "value", (), None)
                else:  # a read-only call sees the initial state and stores nothing
                    assert self._call(p, actor, "value", (), None) == 0
                assert not runtimes[p].exists(AC, self.prefix + actor)
                return
            assert self._call(p, actor, "value", (), None) == self.model[actor][0]

        @rule(p=st.integers(0, 1))
        def listing(self, p: int) -> None:
            done[0] += 1
            listed = runtimes[p].list_ids("PropCounter", start_after=self.prefix[:-1] + ",")
            mine = sorted(i[len(self.prefix) :] for i in listed if i.startswith(self.prefix))
            assert mine == sorted(self.model)

    run_state_machine_as_test(
        TwoRuntimes,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    return done[0]


#: Sequences per backend: many on SQLite, where an operation costs least, fewer on the Redis
#: backends, whose operations (and rollbacks) cost several times more; the sequences and the
#: storage code they reach are the same.
EXAMPLES = {"sqlite": 100, "redis": 50, "redis-cluster": 30}


def test_two_runtimes_never_diverge_from_the_model(
    runtimes: list[ActorRuntime], storage_url: str, request: pytest.FixtureRequest
) -> None:
    examples = EXAMPLES[request.node.callspec.params["storage_url"]]
    steps = run_machine(runtimes, storage_url, steps=40, examples=examples)
    print(f"{steps} operations")
    assert steps >= 20 * examples, steps  # about a thousand operations or more per backend
