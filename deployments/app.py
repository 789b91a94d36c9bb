"""``deployments.app:build``, the import path of older Serve configs: see :mod:`actorflow.serve.app`."""

from actorflow.serve.app import APP_NAME, ActorHost, build, settings_from

__all__ = ["APP_NAME", "ActorHost", "build", "settings_from"]
