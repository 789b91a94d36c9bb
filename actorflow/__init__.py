"""actorflow: durable virtual actors and workflows on Ray.

``from actorflow import workflow`` gives the seed's API: durable steps and workflows,
virtual actors, timers and events. Errors live in :mod:`actorflow.errors`.

``workflow`` and ``errors`` are imported when first used, not with the package, so that the
``actorflow`` command starts without loading them (and handles Ctrl-C from its first moment:
the package itself imports nothing).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "errors", "workflow"]


def __getattr__(name: str) -> object:
    if name in ("workflow", "errors"):
        import importlib

        return importlib.import_module(f"actorflow.{name}")
    raise AttributeError(f"module 'actorflow' has no attribute {name!r}")
