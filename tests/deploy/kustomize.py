"""Just enough of `kustomize build` for the manifests in `deploy/`, offline: resources (files and
directories), `labels` (metadata only), `images` (tags) and JSON 6902 `patches`. Anything else in a
kustomization fails loudly, so a new feature used in `deploy/` needs a line here and a test."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "labels", "images", "patches"}

Doc = dict[str, Any]


def build(directory: Path) -> list[Doc]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise NotImplementedError(f"{directory}: kustomization fields {sorted(unknown)}")
    docs: list[Doc] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            docs += build(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    _transform(kustomization, docs)
    return copy.deepcopy(docs)


def _transform(kustomization: Doc, docs: list[Doc]) -> None:
    for label in kustomization.get("labels", []):
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    for image in kustomization.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                if container["image"].split(":")[0] == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        for doc in docs:
            if doc["kind"] == target["kind"] and doc["metadata"]["name"] == target["name"]:
                for op in yaml.safe_load(patch["patch"]):
                    _apply(doc, op)


def pod_spec(doc: Doc) -> Doc:
    """The pod spec of a Deployment, a Job or a CronJob (empty for other kinds)."""
    spec = doc.get("spec", {})
    if doc.get("kind") == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    pod: Doc = spec.get("template", {}).get("spec", {})
    return pod


def _containers(doc: Doc) -> list[Doc]:
    containers: list[Doc] = pod_spec(doc).get("containers", [])
    return containers


def _apply(doc: Doc, op: Doc) -> None:
    *parents, last = [p for p in op["path"].split("/") if p]
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if op["op"] == "remove":
        del node[int(last) if isinstance(node, list) else last]
    elif op["op"] in ("add", "replace"):
        node[last] = op["value"]
    else:
        raise NotImplementedError(op["op"])


def find(docs: list[Doc], kind: str) -> Doc:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc
