"""The Ray Serve edge of actorflow: the HTTP API, the ``ActorHost`` deployment, HAProxy ingress.

* :mod:`actorflow.serve.settings`: the application's settings (storage, token, limits), checked
  before anything starts; no Ray.
* :mod:`actorflow.serve.backend`: what the HTTP API calls into, on this process's runtimes.
* :mod:`actorflow.serve.api`: the FastAPI application (routes, errors, limits).
* :mod:`actorflow.serve.ingress`: Serve's HAProxy mode, routing by actor id.
* :mod:`actorflow.serve.app`: the Serve application, ``actorflow.serve.app:build``.

The core (:mod:`actorflow.actor`, :mod:`actorflow.engine`) never imports this package.
"""
