"""Compatibility names for Serve configs and manifests written before the Serve edge moved into
the package: ``deployments.app:build`` is :func:`actorflow.serve.app.build`, and
``python -m deployments.ingress`` is ``python -m actorflow.serve.ingress``.

Not part of the installed distribution: it serves configs run from this repository (or from an
image that copies it, see the Dockerfile). New configs name ``actorflow.serve.app:build``.
"""
