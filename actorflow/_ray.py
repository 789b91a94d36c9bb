"""Ray, started on first need: this process's Ray (or the cluster ``RAY_ADDRESS`` names).

Most of actorflow works without Ray (actor calls, storage, the HTTP layer); workflow steps and
the Serve edge need it. Nothing here imports Ray at module import time.
"""

from __future__ import annotations

import logging
import os
import threading

_init_lock = threading.Lock()


def ensure_ray() -> None:
    """Start (or connect to, when ``RAY_ADDRESS`` is set) Ray if this process has not yet.

    Thread-safe; cheap once Ray is up. A process that started Ray itself gets no dashboard
    and Ray's usage reporting off.
    """
    import ray

    if ray.is_initialized():
        return
    with _init_lock:
        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if os.environ.get("RAY_ADDRESS"):
            ray.init(ignore_reinit_error=True, logging_level=logging.WARNING)
        else:
            ray.init(ignore_reinit_error=True, include_dashboard=False, logging_level=logging.WARNING)
