"""Offline checks of the Kubernetes manifests in k8s/ and of the image they name.

Every kustomization under k8s/ is rendered by ``kubectl kustomize`` (no cluster needed; kubectl
absent, the tests that render fail when the environment variable CI is set and skip elsewhere),
and so is k8s/kustomization.yaml with its optional components turned on as k8s/README.md says.
The rendered objects are what these tests check:

* core objects (PodDisruptionBudget and Ingress among them) against the Kubernetes schemas
  bundled with kubernetes-validate, strictly (an unknown field is an error), for the oldest and
  the newest Kubernetes version we support;
* the RayService against KubeRay v1.7's CRD schema, read from ../shared/k8s at test time, with
  unknown fields rejected (skipped, with the reason, where that file is absent);
* the PodMonitors against the Prometheus Operator's CRD schema (tests/_k8s_podmonitor_schema.py,
  vendored), with unknown fields rejected;
* serveConfigV2 with Ray Serve's ServeDeploySchema, plus a walk for the keys that Serve would
  silently ignore; then its import path is imported and built the way Serve's controller does;
* the wiring no schema sees: Secret keys, Services, probes, ports, replicas, resources, what the
  PodMonitors scrape, where the Ingress sends traffic, which pods the disruption budget covers;
* the NetworkPolicies, by working out which peer may connect to which port of each pod.

The last tests break a copy of the manifests on purpose and show that the checks catch it.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import functools
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import textwrap
import tomllib
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pydantic
import pytest
import ray
import yaml
from _k8s_podmonitor_schema import SCHEMA as PODMONITOR_SCHEMA

from actorflow.serve.ingress import USER_CODE_THREAD, balance_rule

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
CRD = Path(__file__).resolve().parents[2] / "shared" / "k8s" / "rayservices.ray.io-kuberay-v1.7.0.crd.yaml"
#: Strict schemas of the oldest Kubernetes we support and of the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.30", kubernetes_validate.latest_version())


def _kind(directory: Path) -> str:
    return str(yaml.safe_load((directory / "kustomization.yaml").read_text()).get("kind", "Kustomization"))


_DIRECTORIES = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
#: What `kubectl kustomize` builds, and the kustomize Components that those can include.
KUSTOMIZATIONS = [str(d.relative_to(REPO)) for d in _DIRECTORIES if _kind(d) == "Kustomization"]
COMPONENTS = [str(d.relative_to(REPO)) for d in _DIRECTORIES if _kind(d) == "Component"]
#: k8s/kustomization.yaml with its commented-out `components:` turned on (see components_on).
WITH_COMPONENTS = "k8s+components"
RENDERINGS = [*KUSTOMIZATIONS, WITH_COMPONENTS]
#: The renderings with PodMonitors, and those with an Ingress (test_every_kustomization_is_checked).
MONITORED = ["k8s/overlays/monitoring", WITH_COMPONENTS]
INGRESSED = ["k8s/overlays/ingress", WITH_COMPONENTS]

#: What actorflow.serve.app:build accepts (storage and token must come from the Secret instead).
BUILDER_ARGS = {"modules", "storage", "token", "token_file", "actor_host_replicas", "access_log"}
BUILDER_ARGS |= {"max_body", "body_timeout", "max_replicas_per_node"}
#: The Ray image the Dockerfile starts from: the installed Ray (pyproject pins it) on Python 3.11.
RAY_BASE_IMAGE = f"rayproject/ray:{ray.__version__}-py311"

Obj = dict[str, Any]


# -- rendering and lookups -----------------------------------------------------------------------


def kubectl() -> str:
    """The kubectl to render with. Without one the test cannot run: a failure in CI (where it must
    be installed), a skip with the reason elsewhere."""
    found = shutil.which("kubectl")
    if found is None:
        reason = "kubectl is not on PATH: the manifests are rendered with `kubectl kustomize`"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def render(directory: Path) -> list[Obj]:
    """The objects ``kubectl kustomize directory`` prints (offline: it reads files only)."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    objects = [obj for obj in yaml.load_all(done.stdout, Loader=loader) if obj is not None]
    assert objects and all(isinstance(obj, dict) for obj in objects), done.stdout[:500]
    return objects


def components_on(text: str) -> str:
    """k8s/kustomization.yaml with its commented-out ``components:`` list uncommented, as
    k8s/README.md says to turn the optional parts on."""
    uncommented = re.sub(r"^# (components:|  - components/\S+)", r"\1", text, flags=re.M)
    assert uncommented != text, "k8s/kustomization.yaml lists no optional components"
    return uncommented


def source_of(rendering: str) -> Path:
    """The kustomization file a rendering comes from (for WITH_COMPONENTS, k8s/'s)."""
    return (
        K8S / "kustomization.yaml"
        if rendering == WITH_COMPONENTS
        else REPO / rendering / "kustomization.yaml"
    )


@functools.cache
def _rendered(rendering: str) -> tuple[Obj, ...]:
    if rendering != WITH_COMPONENTS:
        return tuple(render(REPO / rendering))
    with tempfile.TemporaryDirectory() as tmp:
        copied = Path(tmp) / "k8s"
        shutil.copytree(K8S, copied)
        path = copied / "kustomization.yaml"
        path.write_text(components_on(path.read_text()))
        return tuple(render(copied))


def objects_of(rendering: str) -> list[Obj]:
    """A fresh copy of a rendering, safe to mutate."""
    return copy.deepcopy(list(_rendered(rendering)))


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def label(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def ray_containers(rayservice: Obj) -> Iterator[tuple[str, Obj, Obj]]:
    """(group, group spec, Ray container) for the head and each worker group."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    yield "head", head, head["template"]["spec"]["containers"][0]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group, group["template"]["spec"]["containers"][0]


def serve_config(rayservice: Obj) -> Obj:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def secret_refs(node: Any) -> Iterator[tuple[str, str]]:
    """Every (Secret name, key) that a secretKeyRef anywhere below ``node`` reads."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "secretKeyRef":
                yield value["name"], value["key"]
            else:
                yield from secret_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from secret_refs(item)


def env_from_secret(container: Obj, name: str) -> tuple[str, str]:
    """The (Secret, key) that env var ``name`` of ``container`` comes from."""
    entries = [e for e in container.get("env", []) if e["name"] == name]
    assert len(entries) == 1, f"{container['name']}: env {name} set {len(entries)} times"
    assert "value" not in entries[0], f"{container['name']}: {name} is written out, not read from a Secret"
    ref = entries[0]["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


_QUANTITY = {"m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_QUANTITY |= {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}


def quantity(text: str | int | float) -> float:
    """A Kubernetes resource quantity ("500m", "2", "4Gi") as a number."""
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text))
    assert match and match[2] in _QUANTITY, f"not a quantity: {text!r}"
    return float(match[1]) * _QUANTITY[match[2]]


def redis_bytes(text: str) -> int:
    """A Redis memory setting ("512mb", "1gb", "100000") in bytes, as redis.conf reads it."""
    match = re.fullmatch(r"(\d+)(b|k|kb|m|mb|g|gb)?", text.lower())
    assert match, f"not a Redis memory size: {text!r}"
    unit = {None: 1, "b": 1, "k": 10**3, "kb": 2**10, "m": 10**6, "mb": 2**20, "g": 10**9, "gb": 2**30}
    return int(match[1]) * unit[match[2]]


def backing_statefulset(objects: list[Obj], service: Obj) -> Obj:
    """The one StatefulSet whose pods ``service`` selects."""
    selector = service["spec"]["selector"].items()
    found = [
        o
        for o in objects
        if o["kind"] == "StatefulSet" and selector <= o["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert len(found) == 1, f"{label(service)} selects the pods of {len(found)} StatefulSets"
    return found[0]


def check_resources(where: str, container: Obj) -> None:
    resources = container.get("resources", {})
    for kind in ("cpu", "memory"):
        request = resources.get("requests", {}).get(kind)
        limit = resources.get("limits", {}).get(kind)
        assert request is not None and limit is not None, f"{where}: needs a {kind} request and limit"
        assert quantity(request) <= quantity(limit), f"{where}: {kind} request above its limit"


# -- the checks, as functions returning errors (the broken-copy tests reuse them) ----------------


#: Custom resources, checked against their CRDs' schemas instead (rayservice_errors, podmonitor_errors).
CUSTOM_KINDS = {("ray.io/v1", "RayService"), ("monitoring.coreos.com/v1", "PodMonitor")}


def core_errors(objects: list[Obj]) -> list[str]:
    """Strict kubernetes-validate errors of every object but the custom resources; a kind it has no
    schema for is an error too, so that no new kind goes unchecked."""
    errors = []
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                errors.append(f"{label(obj)} (Kubernetes {version}) at {where}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                errors.append(f"{label(obj)}: {exc.message}")
    return errors


def _close(schema: Obj) -> None:
    """Reject unknown fields wherever the CRD lists the known ones and allows no others."""
    properties = schema.get("properties")
    if (
        properties is not None
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    for sub in (properties or {}).values():
        _close(sub)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            _close(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        for sub in schema.get(key, []):
            _close(sub)


def closed_validator(crd_schema: Obj) -> jsonschema.protocols.Validator:
    """A validator of a CRD's openAPIV3Schema that rejects unknown fields."""
    schema = copy.deepcopy(crd_schema)
    _close(schema)
    # The API server checks ObjectMeta itself; the CRD only says "object".
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


@functools.cache
def rayservice_validator() -> jsonschema.protocols.Validator | None:
    """KubeRay's RayService v1 schema, closed to unknown fields; None without the CRD file."""
    if not CRD.is_file():
        return None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(CRD.read_text(), Loader=loader)
    assert crd["spec"]["names"]["kind"] == "RayService"
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return closed_validator(version["schema"]["openAPIV3Schema"])


def require_crd() -> jsonschema.protocols.Validator:
    validator = rayservice_validator()
    if validator is None:
        pytest.skip(f"RayService CRD schema check skipped: {CRD} is absent")
    return validator


def schema_errors(objects: list[Obj], kind: str, validator: jsonschema.protocols.Validator) -> list[str]:
    errors = []
    for obj in objects:
        if obj["kind"] == kind:
            for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path))):
                where = ".".join(str(p) for p in error.path)
                errors.append(f"{label(obj)} at {where}: {error.message}")
    return errors


def rayservice_errors(objects: list[Obj], validator: jsonschema.protocols.Validator) -> list[str]:
    return schema_errors(objects, "RayService", validator)


def podmonitor_errors(objects: list[Obj]) -> list[str]:
    """The PodMonitors against the Prometheus Operator's CRD schema (tests/_k8s_podmonitor_schema.py)."""
    return schema_errors(objects, "PodMonitor", closed_validator(PODMONITOR_SCHEMA))


def _model_in(annotation: Any) -> type[pydantic.BaseModel] | None:
    """The pydantic model that a field annotation holds (List[M], Optional[M], Union[dict, M])."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for arg in get_args(annotation):
        model = _model_in(arg)
        if model is not None:
            return model
    return None


def unknown_serve_keys(model: type[pydantic.BaseModel], data: Any, where: str) -> list[str]:
    """Keys that ``model`` does not define: Serve's schemas ignore them, so a typo would pass."""
    if not isinstance(data, dict):
        return []
    fields = dict(model.model_fields)
    fields |= {f.alias: f for f in model.model_fields.values() if f.alias}
    errors = []
    for key, value in data.items():
        if key not in fields:
            errors.append(f"{where}.{key}: not an option of {model.__name__}")
            continue
        sub = _model_in(fields[key].annotation)
        if sub is None:
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            suffix = f"[{i}]" if isinstance(value, list) else ""
            errors.extend(unknown_serve_keys(sub, item, f"{where}.{key}{suffix}"))
    return errors


def serve_config_errors(objects: list[Obj]) -> list[str]:
    from ray.serve.schema import ServeDeploySchema

    errors = []
    for obj in objects:
        if obj["kind"] != "RayService":
            continue
        config = serve_config(obj)
        try:
            ServeDeploySchema.model_validate(config)
        except pydantic.ValidationError as exc:
            errors.append(f"{label(obj)} serveConfigV2: {exc}")
        errors.extend(unknown_serve_keys(ServeDeploySchema, config, f"{label(obj)} serveConfigV2"))
    return errors


# -- rendering -----------------------------------------------------------------------------------


def test_every_kustomization_is_checked() -> None:
    assert KUSTOMIZATIONS == [
        "k8s",
        "k8s/base",
        "k8s/overlays/dev",
        "k8s/overlays/ingress",
        "k8s/overlays/monitoring",
    ]
    assert COMPONENTS == ["k8s/components/ingress", "k8s/components/monitoring"]
    # A Component is checked through what includes it: an overlay, and k8s/ with its optional
    # parts turned on, which must turn on every one.
    included: dict[str, set[str]] = {}
    for rendering in RENDERINGS:
        source = source_of(rendering)
        text = components_on(source.read_text()) if rendering == WITH_COMPONENTS else source.read_text()
        for entry in yaml.safe_load(text).get("components", []):
            component = str((source.parent / entry).resolve().relative_to(REPO))
            included.setdefault(component, set()).add(rendering)
    assert set(included) == set(COMPONENTS)
    assert all(WITH_COMPONENTS in users and len(users) == 2 for users in included.values()), included
    # The tests of PodMonitors and Ingresses run on every rendering that has them.
    kinds = {rendering: {o["kind"] for o in objects_of(rendering)} for rendering in RENDERINGS}
    assert [r for r in RENDERINGS if "PodMonitor" in kinds[r]] == MONITORED
    assert [r for r in RENDERINGS if "Ingress" in kinds[r]] == INGRESSED


@pytest.mark.parametrize("kustomization", RENDERINGS)
def test_kustomization_renders(kustomization: str) -> None:
    objects = objects_of(kustomization)
    kinds = Counter(o["kind"] for o in objects)
    assert kinds["RayService"] == 1 and kinds["StatefulSet"] == 2 and kinds["Service"] == 2, kinds
    known = {"RayService", "StatefulSet", "Service", "Secret", "Namespace", "NetworkPolicy"}
    known |= {"PodDisruptionBudget", "PodMonitor", "Ingress"}
    assert set(kinds) <= known, kinds
    # One namespace for all namespaced objects: the kustomization's (none for the bare base).
    namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
    expected = yaml.safe_load(source_of(kustomization).read_text()).get("namespace")
    assert namespaces == {expected}
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "actorflow", label(obj)


@pytest.mark.parametrize("overlay", ["k8s/overlays/ingress", "k8s/overlays/monitoring"])
def test_overlays_of_dev_add_their_component_and_change_nothing(overlay: str) -> None:
    dev, objects = objects_of("k8s/overlays/dev"), objects_of(overlay)
    assert all(obj in objects for obj in dev), "the overlay changes objects of the dev copy"
    added = {(o["kind"], o["metadata"]["name"]) for o in objects if o not in dev}
    component = render(REPO / overlay.replace("/overlays/", "/components/"))
    assert added == {(o["kind"], o["metadata"]["name"]) for o in component} != set()


def test_dev_overlay_is_one_worker_in_its_own_namespace() -> None:
    objects = objects_of("k8s/overlays/dev")
    assert one(objects, "Namespace")["metadata"]["name"] == "actorflow-dev"
    groups = one(objects, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert sum(g["replicas"] for g in groups) == 1


# -- schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", RENDERINGS)
def test_core_objects_match_kubernetes_schemas(kustomization: str) -> None:
    assert core_errors(objects_of(kustomization)) == []


@pytest.mark.parametrize("kustomization", RENDERINGS)
def test_rayservice_matches_kuberay_crd(kustomization: str) -> None:
    assert rayservice_errors(objects_of(kustomization), require_crd()) == []


@pytest.mark.parametrize("kustomization", MONITORED)
def test_podmonitors_match_prometheus_operator_crd(kustomization: str) -> None:
    objects = objects_of(kustomization)
    names = sorted(label(o) for o in objects if o["kind"] == "PodMonitor")
    assert names == ["PodMonitor/actorflow-ray", "PodMonitor/actorflow-service"]
    assert podmonitor_errors(objects) == []


@pytest.mark.parametrize("kustomization", RENDERINGS)
def test_serve_config_matches_serve_schema(kustomization: str) -> None:
    assert serve_config_errors(objects_of(kustomization)) == []


# -- the Serve application ----------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", RENDERINGS)
def test_serve_config_runs_the_application_with_its_routing(kustomization: str) -> None:
    rayservice = one(objects_of(kustomization), "RayService")
    config = serve_config(rayservice)
    [app] = config["applications"]
    assert app["import_path"] == "actorflow.serve.app:build"
    assert app["route_prefix"] == "/"
    assert set(app.get("args", {})) <= BUILDER_ARGS
    assert not {"storage", "token"} & set(app.get("args", {})), "secrets belong in the Secret"
    assert "runtime_env" not in app, "the code is in the image"

    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {"ActorHost"}  # ingress and actor owner in one deployment
    assert deployments["ActorHost"]["num_replicas"] >= 2
    assert deployments["ActorHost"]["max_ongoing_requests"] == 64
    # HAProxy routes by actor id; Serve allows no request router on the ingress in that mode.
    assert "request_router_config" not in deployments["ActorHost"]
    # The head has no CPUs, so replicas that ask for some can only run on workers.
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    for name, deployment in deployments.items():
        assert deployment["ray_actor_options"]["num_cpus"] > 0, name


def test_serve_config_import_path_builds_the_application(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Import and build the application as Serve's controller does; no Ray cluster needed.

    Fails (never skips) while deployments/app.py is missing: the image would fail the same way.
    """
    from ray import serve
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app

    # In the cluster these come from the Secret; Redis is not here, SQLite stands in.
    monkeypatch.setenv("ACTORFLOW_STORAGE", f"sqlite:///{tmp_path}/x.db")
    monkeypatch.setenv("ACTORFLOW_TOKEN", "test-token")
    configs = {}
    for kustomization in RENDERINGS:
        for app in serve_config(one(objects_of(kustomization), "RayService"))["applications"]:
            configs[yaml.safe_dump(app)] = app
    for app in configs.values():
        module_name, _, attribute = app["import_path"].partition(":")
        builder = getattr(importlib.import_module(module_name), attribute)
        application = call_user_app_builder_with_args_if_necessary(builder, dict(app.get("args", {})))
        assert isinstance(application, serve.Application)
        built = build_app(application, name=app["name"])
        names = {d.name for d in built.deployments}
        # Serve refuses a config that names a deployment the application does not have.
        missing = {d["name"] for d in app["deployments"]} - names
        assert not missing, f"serveConfigV2 configures {sorted(missing)}; the application has {sorted(names)}"
        assert built.ingress_deployment_name == "ActorHost"


# -- wiring: what the schemas cannot see ---------------------------------------------------------


@functools.cache
def serve_settings() -> set[str]:
    """The RAY_SERVE_* environment variables that the installed Ray Serve reads."""
    spec = importlib.util.find_spec("ray.serve._private.constants")
    assert spec and spec.origin
    return set(re.findall(r"[\"'](RAY_SERVE_[A-Z0-9_]+)[\"']", Path(spec.origin).read_text()))


@pytest.mark.parametrize("kustomization", RENDERINGS)
def test_ray_pods(kustomization: str) -> None:
    objects = objects_of(kustomization)
    rayservice = one(objects, "RayService")
    name = rayservice["metadata"]["name"]
    # KubeRay derives RayCluster names from it and refuses longer ones.
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 47
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    serve_port = serve_config(rayservice)["http_options"]["port"]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

    for group, spec, container in ray_containers(rayservice):
        where = f"{group}/{container['name']}"
        assert container["image"].rsplit("/", 1)[-1] == f"actorflow:{version}", where
        assert env_from_secret(container, "ACTORFLOW_STORAGE")[0] == "actorflow"
        assert env_from_secret(container, "ACTORFLOW_TOKEN")[0] == "actorflow"
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_USAGE_STATS_ENABLED"].get("value") == "0", where
        # Serve's HAProxy ingress with actorflow's routing rule, on every node.
        assert env["RAY_SERVE_ENABLE_HA_PROXY"].get("value") == "1", where
        assert env["RAY_SERVE_HAPROXY_BALANCE_ALGORITHM"].get("value") == balance_rule(10), where
        assert env[USER_CODE_THREAD].get("value") == "0", where  # as haproxy_env() sets it
        # KubeRay rejects these next to gcsFaultToleranceOptions.
        assert not {"REDIS_PASSWORD", "RAY_REDIS_ADDRESS", "REDIS_USERNAME"} & set(env), where
        assert "redis-password" not in spec["rayStartParams"], where
        assert spec["template"]["spec"]["enableServiceLinks"] is False, where
        # Every RAY_SERVE_* setting is one this Ray reads: a misspelt name would be ignored.
        assert {n for n in env if n.startswith("RAY_SERVE_")} <= serve_settings(), where
        check_resources(where, container)
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        # The ports the PodMonitors scrape by name: Ray's metrics (KubeRay's metrics-export-port)
        # and HAProxy's, on the port this container tells Serve to use.
        assert ports.get("metrics") == METRICS_PORT, where
        assert ports.get("haproxy-metrics") == int(env["RAY_SERVE_HAPROXY_METRICS_PORT"]["value"]), where
        if group == "head":
            # KubeRay builds actorflow-serve-svc from the head port named "serve", and the head
            # Service from all of them: the operator finds the dashboard there by its name.
            assert ports.get("serve") == serve_port, where
            assert ports.get("dashboard") == 8265, where
            # Nothing uses Ray client, so the head Service does not publish it.
            assert 10001 not in ports.values() and "client" not in ports, where
            continue
        assert spec["minReplicas"] <= spec["replicas"] <= spec["maxReplicas"], where
        probe = container["readinessProbe"]["httpGet"]
        assert probe["path"] == "/healthz", where
        assert ports.get(probe["port"], probe["port"]) == serve_port, where


@pytest.mark.parametrize("kustomization", RENDERINGS)
def test_redis_statefulsets(kustomization: str) -> None:
    objects = objects_of(kustomization)
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    keys = set()
    for sts in (o for o in objects if o["kind"] == "StatefulSet"):
        where = label(sts)
        spec = sts["spec"]
        pod = spec["template"]
        assert spec["replicas"] == 1, where
        # The API server rejects a selector that does not match the pods; the schema does not.
        assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(), where
        service = services[spec["serviceName"]]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items(), where
        [container] = pod["spec"]["containers"]
        container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        [port] = service["spec"]["ports"]
        assert container_ports.get(port["targetPort"], port["targetPort"]) == 6379 == port["port"], where

        args = container["args"]
        flags = dict(zip(args[::2], args[1::2], strict=True))
        assert flags["--appendonly"] == "yes", where
        assert flags["--appendfsync"] in {"always", "everysec"}, where
        assert flags["--maxmemory-policy"] == "noeviction", where
        password = re.fullmatch(r"\$\((\w+)\)", flags["--requirepass"])
        assert password, f"{where}: the password must come from an env var"
        key = env_from_secret(container, password[1])
        keys.add(key)
        if key == ("actorflow", "redis-password"):
            # The application's Redis: an acknowledged call must survive a node crash.
            assert flags["--appendfsync"] == "always", where
        # Half the memory limit at most: an AOF rewrite forks the whole dataset.
        limit = quantity(container["resources"]["limits"]["memory"])
        assert redis_bytes(flags["--maxmemory"]) <= limit / 2, where
        check_resources(where, container)

        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        claims = {c["metadata"]["name"]: c for c in spec["volumeClaimTemplates"]}
        claim = claims[mounts[flags["--dir"]]]
        assert quantity(claim["spec"]["resources"]["requests"]["storage"]) >= 2**30, where
        assert spec["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain", where

        # Ready when Redis answers (not while loading the AOF); alive while it accepts connections.
        assert "redis-cli ping" in " ".join(container["readinessProbe"]["exec"]["command"]), where
        assert container["livenessProbe"]["tcpSocket"]["port"] in (6379, "redis"), where

    # Two Redis, each with a password of its own: the application's and the GCS's.
    rayservice = one(objects, "RayService")
    gcs = rayservice["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    gcs_ref = gcs["redisPassword"]["valueFrom"]["secretKeyRef"]
    assert keys == {("actorflow", "redis-password"), (gcs_ref["name"], gcs_ref["key"])}
    gcs_host, _, gcs_port = gcs["redisAddress"].partition(":")
    assert int(gcs_port) == services[gcs_host]["spec"]["ports"][0]["port"]
    gcs_redis = backing_statefulset(objects, services[gcs_host])["spec"]["template"]["spec"]["containers"][0]
    assert env_from_secret(gcs_redis, "REDISCLI_AUTH") == (gcs_ref["name"], gcs_ref["key"])


@pytest.mark.parametrize("kustomization", RENDERINGS)
def test_secrets(kustomization: str) -> None:
    objects = objects_of(kustomization)
    refs = {ref for obj in objects for ref in secret_refs(obj)}
    assert refs == {
        ("actorflow", "storage-url"),
        ("actorflow", "token"),
        ("actorflow", "redis-password"),
        ("actorflow", "gcs-redis-password"),
    }
    for obj in objects:
        if obj["kind"] != "Secret":
            assert "redis://" not in yaml.safe_dump(obj), f"{label(obj)} writes out a storage URL"
    secrets = [o for o in objects if o["kind"] == "Secret"]
    if not secrets:
        # Production: the operator creates the Secret, with the command in k8s/README.md.
        readme = (K8S / "README.md").read_text()
        for _, key in refs:
            assert f"--from-literal={key}=" in readme, key
        return

    data = one(objects, "Secret", "actorflow")["stringData"]
    assert {key for _, key in refs} <= set(data)
    url = urlsplit(data["storage-url"])
    from actorflow.storage import parse_storage_url

    assert parse_storage_url(data["storage-url"])[0] == "redis"
    # The application's Redis, with the password that Redis is started with.
    app_redis = one(objects, "Service", url.hostname)
    assert url.port == app_redis["spec"]["ports"][0]["port"]
    redis = backing_statefulset(objects, app_redis)["spec"]["template"]["spec"]["containers"][0]
    assert env_from_secret(redis, "REDISCLI_AUTH") == ("actorflow", "redis-password")
    assert url.password == data["redis-password"]
    assert data["gcs-redis-password"] != data["redis-password"]


# -- network policies: who may connect to what ---------------------------------------------------
#
# The policies are checked by their effect rather than their text: for each pod the manifests
# create, with the labels KubeRay gives it, and for each kind of peer, which ports a connection
# may reach, following Kubernetes' rules (a pod no policy selects takes everything; a selected
# pod takes what any selecting policy's rule allows; policies never deny).


@functools.cache
def operator_namespace() -> str:
    """Where k8s/README.md installs the KubeRay operator (its helm command names the namespace)."""
    match = re.search(
        r"helm install kuberay-operator \S+ .*--namespace (\S+)", (K8S / "README.md").read_text()
    )
    assert match, "k8s/README.md must install the operator into a namespace it names"
    return match[1]


#: The pod labels of the operator's Helm chart (kuberay-operator v1.7.0, without nameOverride).
OPERATOR_LABELS = {
    "app.kubernetes.io/name": "kuberay-operator",
    "app.kubernetes.io/instance": "kuberay-operator",
    "app.kubernetes.io/component": "kuberay-operator",
}
SERVE_PORT, METRICS_PORT, DASHBOARD_PORT, REDIS_PORT = 8000, 8080, 8265, 6379
#: HAProxy's Prometheus metrics (RAY_SERVE_HAPROXY_METRICS_PORT in base/rayservice.yaml).
HAPROXY_METRICS_PORT = 9101
#: Ports a Ray pod listens on, probed one by one: GCS, Ray client, dashboard, dashboard agent,
#: the first worker port, metrics, HAProxy's metrics and statistics page (8404), Serve.
RAY_PORTS = (6379, 10001, DASHBOARD_PORT, 52365, 10002, METRICS_PORT, HAPROXY_METRICS_PORT, 8404, SERVE_PORT)


@dataclasses.dataclass(frozen=True)
class Peer:
    """Something that opens a connection: a pod (``namespace`` set) or a client outside the
    cluster's pod network (``namespace`` None)."""

    name: str
    labels: Mapping[str, str]
    namespace: str | None
    ray: bool = False  # a pod of this RayService
    operator: bool = False  # the KubeRay operator, where k8s/README.md installs it


@dataclasses.dataclass(frozen=True)
class Pod:
    name: str
    labels: Mapping[str, str]
    namespace: str
    ports: Mapping[str, int]  # named container ports, for policies that name a port
    kind: str  # "head", "worker", "redis"


def kuberay_pod_labels(template: Obj, node_type: str, group: str, cluster: str) -> dict[str, str]:
    """The labels KubeRay v1.7 puts on a Ray pod: its own, overridden by the template's except for
    ray.io/cluster, ray.io/node-type and ray.io/group (labelPod, ray-operator/.../common/pod.go)."""
    own = {
        "ray.io/is-ray-node": "yes",
        "ray.io/cluster": cluster,
        "ray.io/node-type": node_type,
        "ray.io/group": group,
        "ray.io/identifier": f"{cluster}-{node_type}",
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }
    fixed = {"ray.io/cluster", "ray.io/node-type", "ray.io/group"}
    overrides = template["metadata"].get("labels", {})
    return own | {k: v for k, v in overrides.items() if k not in fixed}


def app_namespace(objects: list[Obj]) -> str:
    """The namespace of the rendering; the bare base has none, so it stands for any one."""
    return one(objects, "RayService")["metadata"].get("namespace") or "default"


def pods_of(objects: list[Obj]) -> list[Pod]:
    """The pods the manifests make: the Ray head, one per worker group, one per StatefulSet."""
    namespace = app_namespace(objects)
    cluster = one(objects, "RayService")["spec"]["rayClusterConfig"]
    rc = "actorflow-x7k2q"  # KubeRay names the RayCluster after the RayService, plus a suffix
    pods = []
    for group, spec, container in ray_containers(one(objects, "RayService")):
        is_head = spec is cluster["headGroupSpec"]
        node_type, group_label = ("head", "headgroup") if is_head else ("worker", group)
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
        ports.setdefault("metrics", METRICS_PORT)  # KubeRay adds it when missing
        labels = kuberay_pod_labels(spec["template"], node_type, group_label, rc)
        pods.append(Pod(f"{group} pod", labels, namespace, ports, node_type))
    for sts in (o for o in objects if o["kind"] == "StatefulSet"):
        template = sts["spec"]["template"]
        ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c["ports"]}
        labels = dict(template["metadata"]["labels"])
        pods.append(Pod(f"{sts['metadata']['name']}-0", labels, namespace, ports, "redis"))
    return pods


def peers_of(objects: list[Obj]) -> list[Peer]:
    """The Ray pods as clients (with an upgrade's second cluster and KubeRay's Redis cleanup Job),
    the operator, and everything that must get nothing but the service's port."""
    namespace = app_namespace(objects)
    rayservice = one(objects, "RayService")
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    peers = []
    for pod in pods_of(objects):
        peers.append(Peer(pod.name, pod.labels, namespace, ray=pod.kind != "redis"))
    upgrade = kuberay_pod_labels(head, "head", "headgroup", "actorflow-n3w9c")
    peers.append(Peer("the head of the next cluster (upgrade)", upgrade, namespace, ray=True))
    cleanup = kuberay_pod_labels(head, "redis-cleanup", "headgroup", "actorflow-x7k2q")
    peers.append(Peer("KubeRay's Redis cleanup Job", cleanup, namespace, ray=True))
    other = {"app.kubernetes.io/name": "something-else"}
    peers += [
        Peer("the KubeRay operator", OPERATOR_LABELS, operator_namespace(), operator=True),
        Peer("an operator look-alike in another namespace", OPERATOR_LABELS, "tenant"),
        Peer("an operator look-alike in this namespace", OPERATOR_LABELS, namespace),
        Peer("another pod in this namespace", other, namespace),
        Peer("a pod in another namespace", other, "tenant"),
        Peer("a Ray pod of another RayCluster", {"ray.io/node-type": "worker"}, "tenant"),
        Peer("a client outside the cluster", {}, None),
    ]
    return peers


def selects(selector: Obj, labels: Mapping[str, str]) -> bool:
    """Whether a label selector matches ``labels`` (an empty selector matches everything)."""
    if set(selector) - {"matchLabels", "matchExpressions"}:
        raise AssertionError(f"not a label selector: {selector}")
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not ok:
            return False
    return True


def _peer_matches(entries: list[Obj] | None, peer: Peer, policy_namespace: str) -> bool:
    if not entries:
        return True  # no `from`: every source, outside the cluster too
    for entry in entries:
        if "ipBlock" in entry:
            raise AssertionError("ipBlock peers are not modelled here; add them to the model first")
        if peer.namespace is None:
            continue  # pod and namespace selectors match pods only
        namespace_selector = entry.get("namespaceSelector")
        if namespace_selector is None:
            in_namespace = peer.namespace == policy_namespace
        else:
            in_namespace = selects(namespace_selector, {"kubernetes.io/metadata.name": peer.namespace})
        if in_namespace and selects(entry.get("podSelector", {}), peer.labels):
            return True
    return False


def _port_matches(ports: list[Obj] | None, port: int, pod: Pod) -> bool:
    if not ports:
        return True  # no `ports`: every port
    for entry in ports:
        if entry.get("protocol", "TCP") != "TCP":
            continue
        wanted = entry.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            wanted = pod.ports.get(wanted)  # a named port means the pod's container port
            if wanted is None:
                continue
        if wanted <= port <= entry.get("endPort", wanted):
            return True
    return False


def may_connect(objects: list[Obj], peer: Peer, pod: Pod, port: int) -> bool:
    """Whether Kubernetes lets ``peer`` open a TCP connection to ``port`` of ``pod``."""
    isolating = [
        o
        for o in objects
        if o["kind"] == "NetworkPolicy"
        and (o["metadata"].get("namespace") or "default") == pod.namespace
        and "Ingress" in o["spec"].get("policyTypes", ["Ingress"])
        and selects(o["spec"]["podSelector"], pod.labels)
    ]
    if not isolating:
        return True
    return any(
        _port_matches(rule.get("ports"), port, pod) and _peer_matches(rule.get("from"), peer, pod.namespace)
        for policy in isolating
        for rule in policy["spec"].get("ingress", [])
    )


def expected_ports(peer: Peer, pod: Pod) -> set[int]:
    """What must be open, of the ports probed: the promise of k8s/README.md's table."""
    if pod.kind == "redis":
        return {REDIS_PORT} if peer.ray else set()
    if peer.ray:
        return set(RAY_PORTS)
    if peer.namespace is None:
        return {SERVE_PORT}
    if pod.kind == "head" and peer.operator:
        return {SERVE_PORT, METRICS_PORT, HAPROXY_METRICS_PORT, DASHBOARD_PORT}
    return {SERVE_PORT, METRICS_PORT, HAPROXY_METRICS_PORT}


def network_errors(objects: list[Obj]) -> list[str]:
    """Each (pod, port, peer) where the policies admit what they must not, or refuse what they must
    admit."""
    errors = []
    for pod in pods_of(objects):
        probed = (REDIS_PORT,) if pod.kind == "redis" else RAY_PORTS
        for peer in peers_of(objects):
            if peer.name == pod.name:
                continue  # a pod cannot block itself
            expected = expected_ports(peer, pod)
            for port in probed:
                allowed = may_connect(objects, peer, pod, port)
                if allowed != (port in expected):
                    state = "open" if allowed else "closed"
                    errors.append(f"{pod.name}:{port} is {state} to {peer.name}")
    return errors


@pytest.mark.parametrize("kustomization", RENDERINGS)
def test_network_policies(kustomization: str) -> None:
    objects = objects_of(kustomization)
    assert network_errors(objects) == []
    # Every Ray and Redis pod is isolated, so nothing reaches it unless a rule says so.
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    for pod in pods_of(objects):
        assert any(selects(p["spec"]["podSelector"], pod.labels) for p in policies), pod.name
    # Ingress only: Ray pods must still reach Redis, DNS, the image registry.
    for policy in policies:
        assert policy["spec"]["policyTypes"] == ["Ingress"], label(policy)


def test_network_model_sees_kuberay_labels() -> None:
    """The model gives Ray pods KubeRay's labels, so a template without ours would not match."""
    objects = objects_of("k8s")
    head = next(p for p in pods_of(objects) if p.kind == "head")
    assert head.labels["ray.io/node-type"] == "head" and head.labels["ray.io/is-ray-node"] == "yes"
    assert head.labels["app.kubernetes.io/name"] == "actorflow"  # the template's wins
    outsider = Peer("x", {}, None)
    assert may_connect(objects, outsider, head, SERVE_PORT)
    assert not may_connect(objects, outsider, head, DASHBOARD_PORT)
    # Without any policy, everything is open: the model agrees with Kubernetes' default.
    bare = [o for o in objects if o["kind"] != "NetworkPolicy"]
    assert may_connect(bare, outsider, head, 10001)


def test_operator_namespace_can_be_changed_as_the_readme_shows(tmp_path: Path) -> None:
    readme = (K8S / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.S)
    [overlay] = [textwrap.dedent(b) for b in blocks if "kind: NetworkPolicy" in b]
    # The overlay lives beside k8s/, where the README puts it: kustomize refuses one inside k8s/
    # that builds on k8s/ itself.
    where = re.match(r"# ([\w.-]+)/kustomization.yaml", overlay)
    assert where, "the README's overlay must say which directory it goes in"
    shutil.copytree(K8S, tmp_path / "k8s")
    (tmp_path / where[1]).mkdir()
    (tmp_path / where[1] / "kustomization.yaml").write_text(overlay)
    objects = render(tmp_path / where[1])
    assert core_errors(objects) == []
    head = next(p for p in pods_of(objects) if p.kind == "head")
    moved = re.search(r"value: (\S+)", overlay)
    assert moved and moved[1] != operator_namespace()
    assert may_connect(objects, Peer("moved", OPERATOR_LABELS, moved[1]), head, DASHBOARD_PORT)
    assert not may_connect(objects, Peer("old", OPERATOR_LABELS, operator_namespace()), head, DASHBOARD_PORT)


# -- monitoring, Ingress and disruption budget: what they point at -------------------------------

#: Prometheus, in a namespace of its own (as kube-prometheus-stack installs it).
PROMETHEUS = Peer(
    "Prometheus in namespace monitoring", {"app.kubernetes.io/name": "prometheus"}, "monitoring"
)
#: An ingress controller, in a namespace of its own.
CONTROLLER = Peer("an ingress controller", {"app.kubernetes.io/name": "ingress-nginx"}, "ingress-nginx")


def monitoring_errors(objects: list[Obj]) -> list[str]:
    """What the PodMonitors would scrape, against what the pods serve and the policies admit: Ray's
    and HAProxy's metrics of every Ray pod, and the application's /metrics once per cluster, from
    the head, with the bearer token."""
    namespace = app_namespace(objects)
    head = one(objects, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]
    token = env_from_secret(head["template"]["spec"]["containers"][0], "ACTORFLOW_TOKEN")
    errors, scraped = [], set()
    for monitor in (o for o in objects if o["kind"] == "PodMonitor"):
        where, spec = label(monitor), monitor["spec"]
        if "namespaceSelector" in spec or (monitor["metadata"].get("namespace") or "default") != namespace:
            errors.append(f"{where}: must watch its own namespace, which must be the RayService's")
        pods = [pod for pod in pods_of(objects) if selects(spec["selector"], pod.labels)]
        if not pods or any(pod.kind == "redis" for pod in pods):
            errors.append(f"{where} selects {[pod.name for pod in pods]}: Ray pods only, at least one")
        for endpoint in spec["podMetricsEndpoints"]:
            if endpoint.get("path") != "/metrics":
                errors.append(f"{where}: {endpoint.get('path')} is not where the metrics are (/metrics)")
            for pod in pods:
                port = pod.ports.get(endpoint.get("port", ""))
                if port is None:
                    errors.append(f"{where}: {pod.name} has no container port named {endpoint.get('port')}")
                    continue
                scraped.add((pod.name, port))
                if not may_connect(objects, PROMETHEUS, pod, port):
                    errors.append(f"{where}: {pod.name}:{port} is closed to {PROMETHEUS.name}")
                auth = endpoint.get("authorization", {})
                credentials = auth.get("credentials", {})
                if port == SERVE_PORT and (
                    auth.get("type", "Bearer") != "Bearer"
                    or (credentials.get("name"), credentials.get("key")) != token
                ):
                    errors.append(
                        f"{where}: {pod.name}:{port}/metrics needs the bearer token {'/'.join(token)}"
                    )
    ray_pods = [pod for pod in pods_of(objects) if pod.kind != "redis"]
    expected = {(pod.name, port) for pod in ray_pods for port in (METRICS_PORT, HAPROXY_METRICS_PORT)}
    expected.add(("head pod", SERVE_PORT))
    if scraped != expected:
        errors.append(f"the PodMonitors scrape {sorted(scraped)}, not {sorted(expected)}")
    return errors


def ingress_errors(objects: list[Obj]) -> list[str]:
    """Every Ingress: TLS for each host, every path to KubeRay's Serve Service, which an ingress
    controller in another namespace may reach; and no TLS key among the manifests."""
    rayservice = one(objects, "RayService")
    service = f"{rayservice['metadata']['name']}-serve-svc"  # the name KubeRay gives it
    port = serve_config(rayservice)["http_options"]["port"]
    errors = []
    for ingress in (o for o in objects if o["kind"] == "Ingress"):
        where, spec = label(ingress), ingress["spec"]
        if not spec.get("ingressClassName"):
            errors.append(f"{where}: no ingressClassName, so which controller serves it is left to chance")
        certified = {
            host for tls in spec.get("tls", []) if tls.get("secretName") for host in tls.get("hosts", [])
        }
        backends = [spec["defaultBackend"]] if "defaultBackend" in spec else []
        for rule in spec.get("rules", []):
            if rule.get("host") not in certified:
                errors.append(f"{where}: host {rule.get('host')} has no TLS certificate")
            paths = rule.get("http", {}).get("paths", [])
            if not any(p["path"] == "/" and p["pathType"] == "Prefix" for p in paths):
                errors.append(f"{where}: host {rule.get('host')} does not send every path (Prefix /)")
            backends += [p["backend"] for p in paths]
        for backend in backends:
            target = backend.get("service", {})
            if target.get("name") != service or target.get("port") not in (
                {"number": port},
                {"name": "serve"},
            ):
                errors.append(f"{where}: backend {target} is not {service}:{port}")
        for pod in (p for p in pods_of(objects) if p.kind == "worker"):
            if not may_connect(objects, CONTROLLER, pod, port):
                errors.append(f"{where}: {pod.name}:{port} is closed to {CONTROLLER.name}")
    for secret in (o for o in objects if o["kind"] == "Secret"):
        if "tls.key" in {**secret.get("data", {}), **secret.get("stringData", {})}:
            errors.append(f"{label(secret)}: a TLS key does not belong in the manifests")
    return errors


def disruption_errors(objects: list[Obj]) -> list[str]:
    """The disruption budgets: one over the Ray workers where there is more than one, none over a
    single pod (it would block every drain), and in the one form Kubernetes can count for pods
    of a RayCluster, which has no scale subresource: an integer minAvailable."""
    groups = one(objects, "RayService")["spec"]["rayClusterConfig"].get("workerGroupSpecs", [])
    workers = sum(group["replicas"] for group in groups)
    errors, covered = [], set()
    for budget in (o for o in objects if o["kind"] == "PodDisruptionBudget"):
        where, spec = label(budget), budget["spec"]
        pods = [pod for pod in pods_of(objects) if selects(spec["selector"], pod.labels)]
        covered |= {pod.name for pod in pods}
        if not pods or any(pod.kind != "worker" for pod in pods):
            errors.append(f"{where} selects {[pod.name for pod in pods]}: the Ray workers only")
        minimum = spec.get("minAvailable")
        if "maxUnavailable" in spec or not isinstance(minimum, int):
            errors.append(
                f"{where}: a RayCluster has no scale subresource; only an integer minAvailable works"
            )
        elif not 1 <= minimum < workers:
            evicted = "none" if minimum >= workers else "all"
            errors.append(
                f"{where}: minAvailable {minimum} with {workers} workers: a drain may evict {evicted}"
            )
        if spec.get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
            errors.append(f"{where}: a worker that is not Ready would hold up drains")
    expected = {pod.name for pod in pods_of(objects) if pod.kind == "worker"} if workers > 1 else set()
    if covered != expected:
        errors.append(f"the disruption budgets cover {sorted(covered)}, not {sorted(expected)}")
    return errors


@pytest.mark.parametrize("kustomization", MONITORED)
def test_podmonitors_scrape_what_the_pods_serve(kustomization: str) -> None:
    assert monitoring_errors(objects_of(kustomization)) == []


@pytest.mark.parametrize("kustomization", INGRESSED)
def test_ingress_sends_tls_traffic_to_the_serve_service(kustomization: str) -> None:
    objects = objects_of(kustomization)
    assert ingress_errors(objects) == []
    # Host, Secret and class are placeholders, under names that k8s/README.md tells you to replace;
    # the host is in a domain reserved for examples (RFC 2606), so it can never be someone's site.
    spec = one(objects, "Ingress")["spec"]
    [rule], [tls] = spec["rules"], spec["tls"]
    assert rule["host"].endswith(".example.com")
    readme = (K8S / "README.md").read_text()
    for placeholder in (rule["host"], tls["secretName"], spec["ingressClassName"]):
        assert f"`{placeholder}`" in readme, placeholder


@pytest.mark.parametrize("kustomization", RENDERINGS)
def test_disruption_budget_covers_the_workers(kustomization: str) -> None:
    objects = objects_of(kustomization)
    assert disruption_errors(objects) == []
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    workers = sum(
        g["replicas"] for g in one(objects, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    )
    assert len(budgets) == (1 if workers > 1 else 0), (workers, budgets)


def test_site_patches_of_the_readme_apply(tmp_path: Path) -> None:
    """The patches k8s/README.md has you append to k8s/kustomization.yaml select what they must and
    leave the placeholders replaced: the PodMonitors labelled, the Ingress on the new host with its
    certificate."""
    blocks = re.findall(r"```yaml\n(.*?)```", (K8S / "README.md").read_text(), flags=re.S)
    [patches] = [b for b in blocks if "kind: PodMonitor" in b and "kind: Ingress" in b]
    copied = components_turned_on(shutil.copytree(K8S, tmp_path / "k8s"))
    path = copied / "kustomization.yaml"
    path.write_text(path.read_text() + patches)
    objects = render(copied)
    assert core_errors(objects) == [] and podmonitor_errors(objects) == []
    assert monitoring_errors(objects) == [] and ingress_errors(objects) == []
    monitors = [o for o in objects if o["kind"] == "PodMonitor"]
    assert len(monitors) == 2 and all("release" in o["metadata"]["labels"] for o in monitors)
    placeholders = one(objects_of(WITH_COMPONENTS), "Ingress")["spec"]
    spec = one(objects, "Ingress")["spec"]
    assert spec["rules"][0]["host"] != placeholders["rules"][0]["host"]
    assert spec["tls"][0]["secretName"] != placeholders["tls"][0]["secretName"]
    assert spec["ingressClassName"] != placeholders["ingressClassName"]


# -- the image ----------------------------------------------------------------------------------


def test_dockerfile_builds_what_the_manifests_run() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"ARG RAY_IMAGE={RAY_BASE_IMAGE}\n" in dockerfile
    assert [line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM ")] == [
        "${RAY_IMAGE}",
        "${RAY_IMAGE}",
    ]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert any(dep.startswith("ray[serve]") for dep in pyproject["project"]["dependencies"])

    # Every file the build copies exists and is let through by .dockerignore (an allow-list).
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"
    sources = []
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources.extend(w for w in line.split()[1:-1] if not w.startswith("--"))
    assert {"actorflow", "deployments", "examples"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), f"Dockerfile copies {source}, which does not exist"
        assert f"!{source}" in patterns, f".dockerignore keeps {source} out of the build"

    # The wheel ships actorflow alone; the modules serveConfigV2 names beside it (examples, the
    # deployments shim) are copied into a directory on PYTHONPATH.
    found = pyproject["tool"]["setuptools"]["packages"]["find"]
    for package in ("actorflow", "actorflow.serve", "deployments", "examples", "bench", "tests"):
        packaged = any(fnmatch.fnmatch(package, p) for p in found.get("include", ["*"]))
        assert packaged == package.startswith("actorflow"), package
    assert "ENV PYTHONPATH=/home/ray/app" in dockerfile
    copied = [line.split()[-1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert {"./examples", "./deployments"} <= set(copied)


# -- broken copies are caught --------------------------------------------------------------------


def broken_copy(tmp_path: Path, file: str, good: str, bad: str) -> Path:
    """A copy of k8s/ with ``good`` replaced by ``bad`` (once) in ``file``."""
    copied = tmp_path / "k8s"
    shutil.copytree(K8S, copied)
    path = copied / file
    text = path.read_text()
    assert text.count(good) == 1, f"{good!r} must occur once in {file}"
    path.write_text(text.replace(good, bad))
    return copied


def components_turned_on(copied: Path) -> Path:
    """``copied`` (a copy of k8s/) with its optional components on, as k8s/README.md says."""
    path = copied / "kustomization.yaml"
    path.write_text(components_on(path.read_text()))
    return copied


@pytest.mark.parametrize(
    ("good", "bad", "misspelt"),
    [
        ("- groupName: workers", "- groupNme: workers", "groupNme"),  # a RayService field
        ("                readinessProbe:", "                readinesProbe:", "readinesProbe"),  # in a pod
    ],
    ids=["groupName", "worker-readinessProbe"],
)
def test_misspelt_rayservice_key_is_reported(tmp_path: Path, good: str, bad: str, misspelt: str) -> None:
    validator = require_crd()
    copied = broken_copy(tmp_path, "base/rayservice.yaml", good, bad)
    for directory in (copied, copied / "overlays" / "dev"):
        errors = rayservice_errors(render(directory), validator)
        assert errors and all("RayService/actorflow" in e for e in errors), errors
        assert any(repr(misspelt) in e for e in errors), errors


@pytest.mark.parametrize(
    ("good", "bad", "misspelt"),
    [
        ("  serviceName: actorflow-redis", "  servicName: actorflow-redis", "servicName"),
        ("          readinessProbe:", "          readinesProbe:", "readinesProbe"),
    ],
    ids=["serviceName", "container-readinessProbe"],
)
def test_misspelt_statefulset_key_is_reported(tmp_path: Path, good: str, bad: str, misspelt: str) -> None:
    copied = broken_copy(tmp_path, "base/redis.yaml", good, bad)
    for directory in (copied, copied / "overlays" / "dev"):
        errors = core_errors(render(directory))
        assert errors and all("StatefulSet/actorflow-redis" in e for e in errors), errors
        assert any(repr(misspelt) in e for e in errors), errors


def test_misspelt_serve_config_key_is_reported(tmp_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    copied = broken_copy(
        tmp_path, "base/rayservice.yaml", "max_ongoing_requests: 64", "max_ongoing_request: 64"
    )
    objects = render(copied)
    # Serve's own schema ignores unknown keys: the typo would silently drop the setting.
    ServeDeploySchema.model_validate(serve_config(one(objects, "RayService")))
    errors = serve_config_errors(objects)
    assert len(errors) == 1 and "deployments[0].max_ongoing_request" in errors[0], errors


@pytest.mark.parametrize(
    ("file", "good", "bad", "misspelt"),
    [
        ("components/monitoring/podmonitors.yaml", "        type: Bearer", "        typ: Bearer", "typ"),
        (
            "components/ingress/ingress.yaml",
            "      secretName: actorflow-tls",
            "      secretNme: x",
            "secretNme",
        ),
        ("base/pdb.yaml", "  minAvailable: 1", "  minAvailabel: 1", "minAvailabel"),
    ],
    ids=["PodMonitor", "Ingress", "PodDisruptionBudget"],
)
def test_misspelt_key_of_a_new_object_is_reported(
    tmp_path: Path, file: str, good: str, bad: str, misspelt: str
) -> None:
    copied = components_turned_on(broken_copy(tmp_path, file, good, bad))
    objects = render(copied)
    errors = core_errors(objects) + podmonitor_errors(objects)
    assert errors and any(repr(misspelt) in e for e in errors), errors


@pytest.mark.parametrize(
    ("file", "good", "bad", "expected"),
    [
        # HAProxy's metrics looked for under a name no container port has.
        (
            "components/monitoring/podmonitors.yaml",
            "    - port: haproxy-metrics\n",
            "    - port: haproxy-metric\n",
            "PodMonitor/actorflow-ray: head pod has no container port named haproxy-metric",
        ),
        # The metrics policy without HAProxy's port: Prometheus could not reach it.
        (
            "base/networkpolicy.yaml",
            "        - protocol: TCP\n          port: 9101\n",
            "",
            "PodMonitor/actorflow-ray: workers pod:9101 is closed to Prometheus in namespace monitoring",
        ),
        # The application's /metrics scraped with another key of the Secret than the token.
        (
            "components/monitoring/podmonitors.yaml",
            "          key: token\n",
            "          key: storage-url\n",
            "PodMonitor/actorflow-service: head pod:8000/metrics needs the bearer token actorflow/token",
        ),
        # /metrics scraped on every worker instead of the head: a copy of the same answer each.
        (
            "components/monitoring/podmonitors.yaml",
            "      app.kubernetes.io/component: ray-head\n",
            "      app.kubernetes.io/component: ray-worker\n",
            "the PodMonitors scrape [('head pod', 8080), ('head pod', 9101), ('workers pod', 8000), "
            "('workers pod', 8080), ('workers pod', 9101)], not [('head pod', 8000), ('head pod', 8080), "
            "('head pod', 9101), ('workers pod', 8080), ('workers pod', 9101)]",
        ),
        # The Ingress sends traffic to Ray's metrics port instead of Serve's.
        (
            "components/ingress/ingress.yaml",
            "                  number: 8000",
            "                  number: 8080",
            "Ingress/actorflow: backend {'name': 'actorflow-serve-svc', 'port': {'number': 8080}} "
            "is not actorflow-serve-svc:8000",
        ),
        # The certificate names another host than the rule.
        (
            "components/ingress/ingress.yaml",
            "        - actorflow.example.com\n",
            "        - www.example.com\n",
            "Ingress/actorflow: host actorflow.example.com has no TLS certificate",
        ),
        # A percentage, which Kubernetes cannot count for the pods of a RayCluster.
        (
            "base/pdb.yaml",
            "  minAvailable: 1\n",
            "  minAvailable: 50%\n",
            "PodDisruptionBudget/actorflow-ray-workers: a RayCluster has no scale subresource; only an "
            "integer minAvailable works",
        ),
        # As many as there are workers: no drain could ever evict one.
        (
            "base/pdb.yaml",
            "  minAvailable: 1\n",
            "  minAvailable: 2\n",
            "PodDisruptionBudget/actorflow-ray-workers: minAvailable 2 with 2 workers: a drain may "
            "evict none",
        ),
        # Widened to the head, a single pod: every drain of its node would wait forever.
        (
            "base/pdb.yaml",
            "      app.kubernetes.io/component: ray-worker\n",
            "",
            "PodDisruptionBudget/actorflow-ray-workers selects ['head pod', 'workers pod']: the Ray "
            "workers only",
        ),
    ],
    ids=[
        "podmonitor-port-name",
        "haproxy-metrics-closed",
        "metrics-without-token",
        "metrics-from-every-worker",
        "ingress-backend-port",
        "ingress-tls-host",
        "budget-percentage",
        "budget-blocks-drains",
        "budget-on-the-head",
    ],
)
def test_broken_monitoring_ingress_or_budget_is_reported(
    tmp_path: Path, file: str, good: str, bad: str, expected: str
) -> None:
    objects = render(components_turned_on(broken_copy(tmp_path, file, good, bad)))
    errors = monitoring_errors(objects) + ingress_errors(objects) + disruption_errors(objects)
    assert expected in errors, errors


def test_without_kubectl_the_tests_fail_in_ci_and_skip_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a directory without kubectl
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="kubectl is not on PATH"):
        render(K8S)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="kubectl is not on PATH"):
        render(K8S)


@pytest.mark.parametrize(
    ("file", "good", "bad", "expected"),
    [
        # The policies left out: every port of the head is open to every pod.
        (
            "base/kustomization.yaml",
            "  - networkpolicy.yaml\n",
            "",
            "head pod:10001 is open to a pod in another namespace",
        ),
        # The operator looked for in the wrong namespace: serveConfigV2 would never be deployed.
        (
            "base/networkpolicy.yaml",
            "kubernetes.io/metadata.name: kuberay-system",
            "kubernetes.io/metadata.name: default",
            "head pod:8265 is closed to the KubeRay operator",
        ),
        # The operator rule widened to any namespace: a pod with the operator's label gets in.
        (
            "base/networkpolicy.yaml",
            "        - namespaceSelector:\n            matchLabels:\n"
            "              kubernetes.io/metadata.name: kuberay-system\n",
            "        - namespaceSelector: {}\n",
            "head pod:8265 is open to an operator look-alike in another namespace",
        ),
        # A worker label that drifted from the policies' selectors: the workers are unprotected.
        (
            "base/rayservice.yaml",
            "app.kubernetes.io/component: ray-worker",
            "app.kubernetes.io/component: worker",
            "workers pod:10001 is open to a client outside the cluster",
        ),
    ],
    ids=["policies-left-out", "operator-namespace", "operator-any-namespace", "worker-label"],
)
def test_broken_network_policy_is_reported(
    tmp_path: Path, file: str, good: str, bad: str, expected: str
) -> None:
    copied = broken_copy(tmp_path, file, good, bad)
    for directory in (copied, copied / "overlays" / "dev"):
        errors = network_errors(render(directory))
        assert expected in errors, errors
