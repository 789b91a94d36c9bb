"""The Ray Serve hosting edge of actorflow: HTTP API, ActorHost deployment, Serve config.

Nothing in :mod:`actorflow` imports this package; the core runs without Ray Serve.
"""
