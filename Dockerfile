# syntax=docker/dockerfile:1
# The image that k8s/ runs: Ray 2.60 on Python 3.11, with the actorflow wheel (whose Serve
# application is actorflow.serve.app:build) and, on PYTHONPATH in /home/ray/app, the example
# actor modules (examples.*) and the deployments.app:build shim of older manifests, from this
# repository. Build it from the repository root with the tag that k8s/kustomization.yaml names:
#
#     docker build -t actorflow:0.1.0 .
#
# Keep RAY_IMAGE at the Ray version of pyproject.toml and of rayVersion in
# k8s/base/rayservice.yaml; tests/test_k8s.py checks that the three agree.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311

# Build the wheel in a stage of its own, so that no source tree is left in the final image.
FROM ${RAY_IMAGE} AS wheel
WORKDIR /home/ray/src
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users actorflow ./actorflow
RUN pip wheel --no-deps --no-cache-dir --wheel-dir /home/ray/wheels .

FROM ${RAY_IMAGE}
ENV RAY_USAGE_STATS_ENABLED=0
# Ray itself comes from the base image (pyproject pins the same minor version); pip adds only
# what it lacks.
RUN --mount=type=bind,from=wheel,source=/home/ray/wheels,target=/tmp/wheels \
    pip install --no-cache-dir /tmp/wheels/*.whl
# Fail the build, not the first deploy, when the wheel lacks a package that serveConfigV2 imports.
# The actor modules a serveConfigV2 names: every Ray process finds them through PYTHONPATH.
# (Your own image copies your modules here the same way.)
WORKDIR /home/ray/app
COPY --chown=ray:users examples ./examples
COPY --chown=ray:users deployments ./deployments
ENV PYTHONPATH=/home/ray/app
RUN python -c "import actorflow.serve.app, deployments.app, examples.bank"
