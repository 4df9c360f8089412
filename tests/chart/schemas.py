"""JSON schemas for kubeconform, offline: Kubernetes' from the swagger.json in the pinned
k8s.io/kubernetes module (e2e/tools/kubernetes), ours from crds/. Strict like kubeconform's
own: objects with declared properties take no others."""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from .helm import REPO

TOOLS = REPO / "e2e" / "tools" / "kubernetes"
# kubeconform's -schema-location template; core kinds have Group == version ("v1").
LOCATION = "{{ .Group }}-{{ .ResourceKind }}-{{ .ResourceAPIVersion }}.json"
INT_OR_STRING = {"type": ["string", "integer"]}
QUANTITY = {"type": ["string", "number"]}


def _file_name(group: str, kind: str, version: str) -> str:
    return f"{group or version}-{kind.lower()}-{version}.json"


@functools.cache
def swagger() -> dict[str, Any]:
    env = {**os.environ, "PATH": f"{os.environ.get('PATH', '')}:/usr/local/go/bin"}
    out = subprocess.run(
        ["go", "mod", "download", "-json", "k8s.io/kubernetes"],
        cwd=TOOLS,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    directory = Path(json.loads(out)["Dir"])
    return dict(json.loads((directory / "api" / "openapi-spec" / "swagger.json").read_text()))


def _strict(schema: Any) -> Any:
    """The schema with `additionalProperties: false` where properties are declared, walked by
    keyword (a property may be named `properties` or `x-kubernetes-int-or-string`)."""
    if not isinstance(schema, dict):
        return schema
    if schema.get("x-kubernetes-int-or-string") is True:
        return INT_OR_STRING
    out = dict(schema)
    for keyword in ("properties", "patternProperties", "definitions"):
        if isinstance(out.get(keyword), dict):
            out[keyword] = {k: _strict(v) for k, v in out[keyword].items()}
    for keyword in ("items", "additionalProperties", "not"):
        if isinstance(out.get(keyword), dict):
            out[keyword] = _strict(out[keyword])
    for keyword in ("allOf", "anyOf", "oneOf"):
        if isinstance(out.get(keyword), list):
            out[keyword] = [_strict(v) for v in out[keyword]]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and out.get("x-kubernetes-preserve-unknown-fields") is not True
    ):
        out["additionalProperties"] = False
    return out


def _refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref.rsplit("/", 1)[-1]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def kubernetes_schema(definition: str) -> dict[str, Any]:
    """One kind's schema with every definition it reaches inlined under `definitions`."""
    definitions = swagger()["definitions"]
    wanted, todo = set(), [definition]
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(_refs(definitions[name]))
    inlined = {name: _strict(definitions[name]) for name in wanted}
    inlined["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = INT_OR_STRING
    inlined["io.k8s.apimachinery.pkg.api.resource.Quantity"] = QUANTITY
    return {"$ref": f"#/definitions/{definition}", "definitions": inlined}


def write_kubernetes_schemas(directory: Path, kinds: Iterable[tuple[str, str, str]]) -> None:
    """Schemas for (group, version, kind) from swagger.json."""
    by_gvk = {
        (g["group"], g["version"], g["kind"]): name
        for name, d in swagger()["definitions"].items()
        for g in d.get("x-kubernetes-group-version-kind", [])
    }
    for group, version, kind in kinds:
        schema = kubernetes_schema(by_gvk[(group, version, kind)])
        (directory / _file_name(group, kind, version)).write_text(json.dumps(schema))


def write_crd_schemas(directory: Path, crds: Path = REPO / "crds") -> None:
    for path in sorted(crds.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            (directory / _file_name(group, kind, version["name"])).write_text(json.dumps(schema))
