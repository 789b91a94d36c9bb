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
    assert app.import_path == "deployments.app:build"
    monkeypatch.setenv("ACTORFLOW_STORAGE", f"sqlite://{tmp_path}/x.db")
    from deployments.app import build

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
