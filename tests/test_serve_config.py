"""deployments/serve_config.yaml: valid for Ray's schema, and its import path builds the app."""

from __future__ import annotations

import os
import pathlib

import pytest
import yaml

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "deployments" / "serve_config.yaml"


def test_serve_config_validates_and_builds(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ray import serve
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(config)
    [app] = schema.applications
    assert app.import_path == "actorflow.serve.app:build"
    monkeypatch.setenv("ACTORFLOW_STORAGE", f"sqlite://{tmp_path}/x.db")
    from actorflow.serve.app import build

    application = call_user_app_builder_with_args_if_necessary(build, dict(app.args))
    assert isinstance(application, serve.Application)
    built = build_app(application, name=app.name)
    assert {d.name for d in built.deployments} == {
        d["name"] for d in config["applications"][0]["deployments"]
    }
    host = config["applications"][0]["deployments"][0]
    assert "request_router_config" not in host  # the code adds it in classic mode only
    [built_host] = built.deployments
    haproxy = os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
    router = built_host._deployment_config.request_router_config.request_router_class
    assert ("ConsistentHash" in str(router)) != haproxy, router


def test_the_old_import_paths_still_work(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Configs and manifests written before the edge moved into the package name
    ``deployments.app:build`` and run ``python -m deployments.ingress``."""
    import importlib
    import subprocess
    import sys

    from ray.serve._private.build_app import build_app

    from actorflow.serve import app as current

    monkeypatch.setenv("ACTORFLOW_STORAGE", f"sqlite://{tmp_path}/x.db")
    old = importlib.import_module("deployments.app")
    assert old.build is current.build
    built = build_app(old.build({"modules": ["examples.bank"]}), name="actorflow")
    assert built.ingress_deployment_name == "ActorHost"
    root = CONFIG.parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "deployments.ingress", "--classic"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.strip() == "export RAY_SERVE_ENABLE_HA_PROXY=0"


def test_the_service_refuses_storage_its_replicas_cannot_share() -> None:
    from actorflow.errors import ConfigError
    from actorflow.serve.settings import settings_from

    with pytest.raises(ConfigError, match="lives in one process"):
        settings_from({"storage": "memory://shared"})
