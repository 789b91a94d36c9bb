"""actorflow: durable virtual actors and workflows on Ray.

``from actorflow import workflow`` gives the seed's API: durable steps and workflows,
virtual actors, timers and events. Errors live in :mod:`actorflow.errors`.
"""

from actorflow import errors, workflow

__version__ = "0.1.0"

__all__ = ["__version__", "errors", "workflow"]
