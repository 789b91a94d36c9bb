"""Offline checks of the Kubernetes manifests in k8s/ and of the image they name.

There is no cluster, kubectl or Docker engine here, so every kustomization under k8s/ is rendered
with tests/_kustomize.py, and the rendered objects are what these tests check:

* core objects against the Kubernetes schemas bundled with kubernetes-validate, strictly (an
  unknown field is an error), for the oldest and the newest Kubernetes version we support;
* the RayService against KubeRay v1.7's CRD schema, read from ../shared/k8s at test time, with
  unknown fields rejected (skipped, with the reason, where that file is absent);
* serveConfigV2 with Ray Serve's ServeDeploySchema, plus a walk for the keys that Serve would
  silently ignore; then its import path is imported and built the way Serve's controller does;
* the wiring no schema sees: Secret keys, Services, probes, ports, replicas, resources;
* the NetworkPolicies, by working out which peer may connect to which port of each pod.

The last tests break a copy of the manifests on purpose and show that the checks catch it.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import functools
import importlib
import re
import shutil
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
from _kustomize import KustomizeError, render, render_text

from actorflow.serve.ingress import balance_rule

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
CRD = Path(__file__).resolve().parents[2] / "shared" / "k8s" / "rayservices.ray.io-kuberay-v1.7.0.crd.yaml"
#: Strict schemas of the oldest Kubernetes we support and of the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.30", kubernetes_validate.latest_version())
KUSTOMIZATIONS = sorted(str(p.parent.relative_to(REPO)) for p in K8S.rglob("kustomization.yaml"))

#: What actorflow.serve.app:build accepts (storage and token must come from the Secret instead).
BUILDER_ARGS = {"modules", "storage", "token", "token_file", "actor_host_replicas"}
#: The Ray image the Dockerfile starts from: the installed Ray (pyproject pins it) on Python 3.11.
RAY_BASE_IMAGE = f"rayproject/ray:{ray.__version__}-py311"

Obj = dict[str, Any]


# -- rendering and lookups -----------------------------------------------------------------------


@functools.cache
def _rendered(kustomization: str) -> tuple[Obj, ...]:
    return tuple(render(REPO / kustomization))


def objects_of(kustomization: str) -> list[Obj]:
    """A fresh copy of a rendering, safe to mutate."""
    return copy.deepcopy(list(_rendered(kustomization)))


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


def core_errors(objects: list[Obj]) -> list[str]:
    """Strict kubernetes-validate errors of every object but the RayService."""
    errors = []
    for obj in objects:
        if obj["kind"] == "RayService":
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


@functools.cache
def rayservice_validator() -> jsonschema.protocols.Validator | None:
    """KubeRay's RayService v1 schema, closed to unknown fields; None without the CRD file."""
    if not CRD.is_file():
        return None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(CRD.read_text(), Loader=loader)
    assert crd["spec"]["names"]["kind"] == "RayService"
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    _close(schema)
    # The API server checks ObjectMeta itself; the CRD only says "object".
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def require_crd() -> jsonschema.protocols.Validator:
    validator = rayservice_validator()
    if validator is None:
        pytest.skip(f"RayService CRD schema check skipped: {CRD} is absent")
    return validator


def rayservice_errors(objects: list[Obj], validator: jsonschema.protocols.Validator) -> list[str]:
    errors = []
    for obj in objects:
        if obj["kind"] == "RayService":
            for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path))):
                where = ".".join(str(p) for p in error.path)
                errors.append(f"{label(obj)} at {where}: {error.message}")
    return errors


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
    assert KUSTOMIZATIONS == ["k8s", "k8s/base", "k8s/overlays/dev"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kustomization_renders(kustomization: str) -> None:
    objects = objects_of(kustomization)
    kinds = Counter(o["kind"] for o in objects)
    assert kinds["RayService"] == 1 and kinds["StatefulSet"] == 2 and kinds["Service"] == 2, kinds
    known = {"RayService", "StatefulSet", "Service", "Secret", "Namespace", "NetworkPolicy"}
    assert set(kinds) <= known, kinds
    # One namespace for all namespaced objects: the kustomization's (none for the bare base).
    namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
    expected = yaml.safe_load((REPO / kustomization / "kustomization.yaml").read_text()).get("namespace")
    assert namespaces == {expected}
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "actorflow", label(obj)
    # The text the CLI prints (python tests/_kustomize.py DIR) is the same objects.
    assert list(yaml.safe_load_all(render_text(REPO / kustomization))) == objects


def test_dev_overlay_is_one_worker_in_its_own_namespace() -> None:
    objects = objects_of("k8s/overlays/dev")
    assert one(objects, "Namespace")["metadata"]["name"] == "actorflow-dev"
    groups = one(objects, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert sum(g["replicas"] for g in groups) == 1


# -- schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_core_objects_match_kubernetes_schemas(kustomization: str) -> None:
    assert core_errors(objects_of(kustomization)) == []


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_rayservice_matches_kuberay_crd(kustomization: str) -> None:
    assert rayservice_errors(objects_of(kustomization), require_crd()) == []


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_serve_config_matches_serve_schema(kustomization: str) -> None:
    assert serve_config_errors(objects_of(kustomization)) == []


# -- the Serve application ----------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
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
    for kustomization in KUSTOMIZATIONS:
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


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
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
        # KubeRay rejects these next to gcsFaultToleranceOptions.
        assert not {"REDIS_PASSWORD", "RAY_REDIS_ADDRESS", "REDIS_USERNAME"} & set(env), where
        assert "redis-password" not in spec["rayStartParams"], where
        assert spec["template"]["spec"]["enableServiceLinks"] is False, where
        check_resources(where, container)
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
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


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
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


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
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
#: Ports a Ray pod listens on, probed one by one: GCS, Ray client, dashboard, dashboard agent,
#: the first worker port, metrics, Serve.
RAY_PORTS = (6379, 10001, DASHBOARD_PORT, 52365, 10002, METRICS_PORT, SERVE_PORT)


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
        return {SERVE_PORT, METRICS_PORT, DASHBOARD_PORT}
    return {SERVE_PORT, METRICS_PORT}


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


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
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
    copied = tmp_path / "k8s"
    shutil.copytree(K8S, copied)
    (copied / "overlays" / "mine").mkdir()
    (copied / "overlays" / "mine" / "kustomization.yaml").write_text(overlay)
    objects = render(copied / "overlays" / "mine")
    assert core_errors(objects) == []
    head = next(p for p in pods_of(objects) if p.kind == "head")
    moved = re.search(r"value: (\S+)", overlay)
    assert moved and moved[1] != operator_namespace()
    assert may_connect(objects, Peer("moved", OPERATOR_LABELS, moved[1]), head, DASHBOARD_PORT)
    assert not may_connect(objects, Peer("old", OPERATOR_LABELS, operator_namespace()), head, DASHBOARD_PORT)


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


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    cases = {
        "namePrefix: x-\n": "not implemented",
        "patches: [{target: {kind: Service}, patch: '[]'}]\n": "selects nothing",
        "patches: [{target: {kind: ConfigMap}, patch: 'metadata: {name: d}'}]\n": "JSON 6902",
        "labels: [{pairs: {a: b}, includeSelectors: true}]\n": "metadata.labels only",
    }
    for extra, message in cases.items():
        (tmp_path / "kustomization.yaml").write_text("resources: [cm.yaml]\n" + extra)
        with pytest.raises(KustomizeError, match=message):
            render(tmp_path)


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
