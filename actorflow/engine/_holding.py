"""Records of finished steps that no step waits for, held back briefly to share one commit.

In a wide fan-out every step's completion reaches the runner on its own, and a commit per
completion costs the runner (and the storage's disk) more than the step itself. When no step
could start on them yet, the runner holds the records of a few completions back, for at most
:data:`HOLD_FOR` or :data:`HOLD_MAX` records, and commits them together. A step that consumes
them still starts only after they are committed: the hold ends at once when a completion would
make a step ready (or is the workflow's output, or returned more steps, or failed), and when
nothing else is in flight. What is held is not yet durable: a runner that dies meanwhile loses
those records, and a resume runs those steps again, as it would steps still running.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

from actorflow.storage import Batch

#: Longest a finished step's record is held back, in seconds.
HOLD_FOR = 0.02
#: Most records held back at once.
HOLD_MAX = 256


class Held:
    """What the runner has not committed yet: ``batch`` and the ``finished`` steps it stores."""

    def __init__(
        self,
        enabled: bool,
        dependents: dict[str, list[str]],
        missing: dict[str, int],
        active: set[str],
        awaited: Callable[[str], bool],
    ) -> None:
        self.enabled = enabled
        self._dependents = dependents
        self._missing = missing
        self._active = active
        self._awaited = awaited  # the workflow's output, or a sub-graph's a parent waits for
        self.batch = Batch()
        self.finished: list[tuple[str, Any]] = []
        self._since: float | None = None
        self._given: collections.Counter[str] = collections.Counter()  # held inputs per step

    def keep(self, finished: list[tuple[str, Any]], urgent: bool) -> bool:
        """Add ``finished`` (whose records are in :attr:`batch`); whether to hold on (``True``)
        rather than commit what is held now."""
        self.finished.extend(finished)
        if not self.finished and not self.batch:
            return True  # nothing to commit
        if urgent or not self.enabled or len(self.finished) >= HOLD_MAX:
            return False
        if any(self._unblocks(sid) for sid, _ in finished):
            return False
        now = time.monotonic()
        if self._since is None:
            self._since = now
        return now < self._since + HOLD_FOR

    def _unblocks(self, sid: str) -> bool:
        """Whether finishing ``sid`` (with what is held) would let a step start or end the run."""
        if self._awaited(sid):
            return True
        for d in self._dependents.get(sid, ()):
            if d in self._active:
                self._given[d] += 1
                if self._given[d] >= self._missing[d]:
                    return True
        return False

    def due(self) -> float | None:
        """When what is held must be committed (``time.monotonic``), if anything is held."""
        return None if self._since is None else self._since + HOLD_FOR

    def take(self) -> tuple[Batch, list[tuple[str, Any]]]:
        """What is held, to commit now; nothing is held after."""
        taken = self.batch, self.finished
        self.batch, self.finished, self._since = Batch(), [], None
        self._given.clear()
        return taken


__all__ = ["HOLD_FOR", "HOLD_MAX", "Held"]
