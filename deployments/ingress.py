"""``python -m deployments.ingress``, as older instructions say: see :mod:`actorflow.serve.ingress`."""

from actorflow.serve.ingress import main

if __name__ == "__main__":
    raise SystemExit(main())
