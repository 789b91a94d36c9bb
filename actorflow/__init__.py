"""actorflow: durable virtual actors and workflows on Ray.

``from actorflow import workflow`` gives the seed's API: durable steps and workflows,
virtual actors, timers and events. Errors live in :mod:`actorflow.errors`.

``workflow`` is imported when first used, not with the package, so that the ``actorflow``
command starts without loading the runtime (and can handle Ctrl-C from its first moment).
"""

from typing import Any

from actorflow import errors

__version__ = "0.1.0"

__all__ = ["__version__", "errors", "workflow"]


def __getattr__(name: str) -> Any:
    if name == "workflow":
        import importlib

        return importlib.import_module("actorflow.workflow")
    raise AttributeError(f"module 'actorflow' has no attribute {name!r}")
