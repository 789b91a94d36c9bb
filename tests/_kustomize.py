"""Render a kustomization in pure Python, for the few kustomize fields that ``k8s/`` uses.

There is no ``kubectl`` where the tests run, so ``tests/test_k8s.py`` renders ``k8s/`` with
``render(directory)`` and validates the objects it returns. Fields, with kustomize's meaning and
applied in kustomize's order (each ``resources`` entry fully rendered first):

* ``resources``: YAML files inside the kustomization's directory (one or more documents each),
  and directories holding a ``kustomization.yaml``, anywhere (``../../base``);
* ``patches``: JSON 6902 patches, each a list of operations given inline (``patch:``) or in a
  file (``path:``), applied to the objects its ``target`` selects by ``kind`` and ``name`` (and
  ``group``, ``version``, ``namespace`` if given); operations ``add``, ``remove``, ``replace``,
  ``test``;
* ``namespace``: set on every object but cluster-scoped kinds;
* ``labels``: each entry's ``pairs`` added to every object's ``metadata.labels``;
* ``images``: ``newName``, ``newTag`` or ``digest`` for each matching ``image`` of a list called
  ``containers`` or ``initContainers``, wherever it sits, custom resources included.

Anything else raises ``KustomizeError`` rather than being ignored: a field kustomize would act
on must not pass here unnoticed. Deliberate differences from kustomize: objects keep the order
of ``resources`` (kustomize sorts them by kind), targets match names literally (kustomize reads
them as regular expressions), a target that selects nothing is an error, and ``labels`` never
reach selectors or templates (``includeSelectors``/``includeTemplates`` must stay false).

``python tests/_kustomize.py k8s/overlays/dev`` prints a rendering as ``kubectl kustomize`` does.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KustomizeError", "render", "render_text"]

Obj = dict[str, Any]

_FIELDS = {"apiVersion", "kind", "resources", "patches", "namespace", "labels", "images"}
_CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "PriorityClass",
    "StorageClass",
}


class KustomizeError(Exception):
    """The kustomization is wrong, or uses something this renderer does not implement."""


def render(directory: str | Path) -> list[Obj]:
    """The objects that ``kubectl kustomize directory`` would print, as dicts."""
    return _render(Path(directory).resolve(), ())


def render_text(directory: str | Path) -> str:
    """The rendering of ``directory`` as one multi-document YAML text."""
    return yaml.dump_all(render(directory), Dumper=_Dumper, sort_keys=False)


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (serveConfigV2) as literal blocks, as they were written."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _represent_str)


def _render(root: Path, seen: tuple[Path, ...]) -> list[Obj]:
    if root in seen:
        raise KustomizeError(f"{root}: kustomizations include each other")
    path = root / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{root}: no kustomization.yaml")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - _FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields not implemented here: {sorted(unknown)}")
    if spec.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{path}: kind must be Kustomization")

    objects: list[Obj] = []
    for entry in spec.get("resources", []):
        target = (root / entry).resolve()
        if target.is_dir():
            objects.extend(_render(target, (*seen, root)))
        elif target.is_file():
            if not target.is_relative_to(root):
                raise KustomizeError(f"{path}: file {entry} lies outside {root}")
            objects.extend(_load_documents(target))
        else:
            raise KustomizeError(f"{path}: resource {entry} does not exist")

    for patch in spec.get("patches", []):
        _apply_patch(root, path, patch, objects)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in _CLUSTER_SCOPED:
                meta = obj["metadata"]
                meta.pop("namespace", None)
                obj["metadata"] = {"name": meta.pop("name"), "namespace": spec["namespace"], **meta}
    for entry in spec.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise KustomizeError(f"{path}: labels reach metadata.labels only here")
        if set(entry) - {"pairs", "includeSelectors", "includeTemplates"}:
            raise KustomizeError(f"{path}: labels entry {entry} not implemented here")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(entry["pairs"])
    for image in spec.get("images", []):
        if set(image) - {"name", "newName", "newTag", "digest"}:
            raise KustomizeError(f"{path}: images entry {image} not implemented here")
        for obj in objects:
            _set_images(obj, image)

    ids = [_identity(obj) for obj in objects]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise KustomizeError(f"{path}: the same object twice: {duplicates}")
    return objects


def _load_documents(path: Path) -> list[Obj]:
    objects = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for obj in objects:
        if not isinstance(obj, dict) or not {"apiVersion", "kind", "metadata"} <= set(obj):
            raise KustomizeError(f"{path}: every document needs apiVersion, kind and metadata")
        if "name" not in obj["metadata"]:
            raise KustomizeError(f"{path}: a {obj['kind']} has no metadata.name")
    return objects


def _identity(obj: Obj) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]


# -- patches -------------------------------------------------------------------------------------


def _apply_patch(root: Path, path: Path, patch: Obj, objects: list[Obj]) -> None:
    if set(patch) - {"target", "patch", "path"} or ("patch" in patch) == ("path" in patch):
        raise KustomizeError(f"{path}: a patch needs a target and exactly one of patch or path")
    target = patch.get("target") or {}
    if not target.get("kind") or set(target) - {"group", "version", "kind", "name", "namespace"}:
        raise KustomizeError(f"{path}: patch target {target} not implemented here")
    text = patch["patch"] if "patch" in patch else (root / patch["path"]).read_text()
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise KustomizeError(f"{path}: only JSON 6902 patches (a list of operations) are implemented")
    chosen = [obj for obj in objects if _selected(obj, target)]
    if not chosen:
        raise KustomizeError(f"{path}: patch target {target} selects nothing")
    for obj in chosen:
        for operation in operations:
            try:
                _apply_operation(obj, operation)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise KustomizeError(f"{path}: {operation} on {target}: {exc!r}") from exc


def _selected(obj: Obj, target: Obj) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    actual = {
        "group": group,
        "version": version,
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "namespace": obj["metadata"].get("namespace", ""),
    }
    return all(actual[key] == value for key, value in target.items())


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"JSON pointer {path!r} must start with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list[Any], token: str, *, insert: bool = False) -> int:
    if token == "-" and insert:
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise ValueError(f"{token!r} is not a list index")
    index = int(token)
    if index > len(container) or (index == len(container) and not insert):
        raise IndexError(f"index {index} past the end of a list of {len(container)}")
    return index


def _apply_operation(obj: Obj, operation: Obj) -> None:
    op = operation["op"]
    *parents, last = _pointer(operation["path"])
    node: Any = obj
    for token in parents:
        node = node[_index(node, token)] if isinstance(node, list) else node[token]
    if op == "add":
        value = copy.deepcopy(operation["value"])
        if isinstance(node, list):
            node.insert(_index(node, last, insert=True), value)
        else:
            node[last] = value
    elif op == "replace":
        value = copy.deepcopy(operation["value"])
        if isinstance(node, list):
            node[_index(node, last)] = value
        elif last in node:
            node[last] = value
        else:
            raise KeyError(f"{operation['path']} does not exist")
    elif op == "remove":
        del node[_index(node, last) if isinstance(node, list) else last]
    elif op == "test":
        current = node[_index(node, last)] if isinstance(node, list) else node[last]
        if current != operation["value"]:
            raise ValueError(f"{operation['path']} is {current!r}")
    else:
        raise ValueError(f"operation {op!r} not implemented here")


# -- images --------------------------------------------------------------------------------------


def _split_image(image: str) -> tuple[str, str]:
    """``("repo/name", ":tag" or "@sha256:..." or "")``; a registry port is not a tag."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def _set_images(node: Any, rule: Obj) -> None:
    if isinstance(node, list):
        for item in node:
            _set_images(item, rule)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in ("containers", "initContainers") and isinstance(value, list):
            for container in value:
                if isinstance(container, dict) and isinstance(container.get("image"), str):
                    container["image"] = _new_image(container["image"], rule)
        _set_images(value, rule)


def _new_image(image: str, rule: Obj) -> str:
    name, suffix = _split_image(image)
    if name != rule["name"]:
        return image
    if "digest" in rule:
        suffix = "@" + str(rule["digest"])
    elif "newTag" in rule:
        suffix = ":" + str(rule["newTag"])
    return str(rule.get("newName", name)) + suffix


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/_kustomize.py DIRECTORY")
    try:
        sys.stdout.write(render_text(sys.argv[1]))
    except KustomizeError as exc:
        sys.exit(f"error: {exc}")
