"""Generate CustomResourceDefinitions from the pydantic models.

pydantic's JSON Schema is close to, but not, a structural OpenAPI v3 schema: the API server
rejects `$ref`, `anyOf` with null, `additionalProperties: false` beside `properties`, and
`const`. This module rewrites the one into the other so the models stay the single source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from gpufleet.api.common import GROUP, VERSION
from gpufleet.api.names import POOL_RULES, PROVIDER_RULES
from gpufleet.api.pool import ServingPoolSpec, ServingPoolStatus
from gpufleet.api.power import PowerBudgetSpec, PowerBudgetStatus
from gpufleet.api.provider import CloudProviderSpec, CloudProviderStatus
from gpufleet.api.tenancy import TenantPolicySpec, TenantPolicyStatus

CATEGORY = "gpufleet"
_DROP = {"title", "additionalProperties", "$defs"}


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    description: str
    priority: int = 0


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    namespaced: bool
    description: str
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: tuple[PrinterColumn, ...]
    # CEL on the whole object, for what the spec's rules cannot see (`metadata.name`).
    rules: tuple[dict[str, str], ...] = ()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _ready(kind: str) -> PrinterColumn:
    return PrinterColumn(
        "Ready",
        "string",
        '.status.conditions[?(@.type=="Ready")].status',
        f"Whether the {kind} is Ready.",
    )


_AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since creation.")

# The kind is ServingPool, not InferencePool, and its short names avoid "ip"/"infpool": the
# Gateway API Inference Extension has a kind named InferencePool, and kubectl resolves kinds and
# short names across groups, so a shared name made `kubectl get inferencepools` ambiguous.
KINDS: tuple[Kind, ...] = (
    Kind(
        kind="ServingPool",
        plural="servingpools",
        singular="servingpool",
        short_names=("gfpool", "gfpools"),
        namespaced=True,
        description="A served model: the workload gpufleet scales from its queue depth, "
        "the GPUs it needs, and where its data may be processed.",
        spec=ServingPoolSpec,
        status=ServingPoolStatus,
        columns=(
            PrinterColumn(
                "Desired", "integer", ".status.desiredReplicas", "Replicas the plan wants."
            ),
            PrinterColumn("Current", "integer", ".status.currentReplicas", "Replicas observed."),
            PrinterColumn("Queue", "integer", ".status.queueDepth", "Last queue depth read."),
            PrinterColumn("Watts", "integer", ".status.powerWatts", "Estimated power of the pool."),
            PrinterColumn(
                "Burst%", "integer", ".status.burstPercent", "Share of replicas on burst."
            ),
            PrinterColumn("Mode", "string", ".spec.mode", "Active or DryRun.", priority=1),
            _ready("pool"),
            _AGE,
        ),
        rules=POOL_RULES,
    ),
    Kind(
        kind="CloudProvider",
        plural="cloudproviders",
        singular="cloudprovider",
        short_names=("gfprovider", "gfproviders"),
        namespaced=False,
        description="A cloud or cluster that supplies GPU nodes: its role, subprocessor facts, "
        "driver, quota and node pools.",
        spec=CloudProviderSpec,
        status=CloudProviderStatus,
        columns=(
            PrinterColumn("Role", "string", ".spec.role", "Primary or Secondary."),
            PrinterColumn("Driver", "string", ".spec.driver.type", "How node pools are resized."),
            PrinterColumn(
                "Jurisdiction",
                "string",
                ".spec.subprocessor.jurisdiction",
                "Where data is processed.",
            ),
            PrinterColumn("Nodes", "integer", ".status.readyNodes", "Ready GPU nodes."),
            PrinterColumn("GPUs", "integer", ".status.gpusInUse", "GPUs the plan keeps."),
            PrinterColumn("Quota", "integer", ".spec.gpuQuota", "GPU quota.", priority=1),
            _ready("provider"),
            _AGE,
        ),
        rules=PROVIDER_RULES,
    ),
    Kind(
        kind="TenantPolicy",
        plural="tenantpolicies",
        singular="tenantpolicy",
        short_names=("gftenant", "gftenants"),
        namespaced=False,
        description="What the platform grants the ServingPools of some namespaces: the "
        "PriorityClasses their workloads may run with, the floor under their data policies and "
        "where they may burst. Cluster-scoped, so no tenant can write it.",
        spec=TenantPolicySpec,
        status=TenantPolicyStatus,
        columns=(
            PrinterColumn("Pools", "integer", ".status.pools", "ServingPools it governs."),
            _ready("policy"),
            _AGE,
        ),
    ),
    Kind(
        kind="PowerBudget",
        plural="powerbudgets",
        singular="powerbudget",
        short_names=("gfpower",),
        namespaced=False,
        description="A cap in kilowatts on the power drawn by the GPU node pools in its scope.",
        spec=PowerBudgetSpec,
        status=PowerBudgetStatus,
        columns=(
            PrinterColumn("CapKW", "integer", ".spec.capKilowatts", "Cap outside windows, kW."),
            PrinterColumn("DrawnW", "integer", ".status.drawnWatts", "Power drawn, W."),
            PrinterColumn(
                "AllowedW", "integer", ".status.allowedWatts", "Cap in force less headroom, W."
            ),
            PrinterColumn(
                "Window", "string", ".status.activeWindow", "Window in force.", priority=1
            ),
            PrinterColumn(
                "CapReached",
                "string",
                '.status.conditions[?(@.type=="CapReached")].status',
                "Whether the plan is held back by the cap.",
            ),
            _ready("budget"),
            _AGE,
        ),
    ),
)


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Resolve $ref, collapse Optional, and drop what structural schemas forbid."""
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = {**_inline(target, defs), **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline(merged, defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        only = node.pop("allOf")[0]
        return _inline({**only, **node}, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            return _inline({**options[0], **rest}, defs)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("default", 0) is None:
        del node["default"]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _inline(sub, defs) for name, sub in value.items()}
        elif key in ("x-kubernetes-validations", "x-kubernetes-list-map-keys", "enum", "required"):
            out[key] = value
        else:
            out[key] = _inline(value, defs)
    if out.get("format") == "date-time":
        out["type"] = "string"
    # type and description first: the generated YAML is read by people in review.
    head = {k: out.pop(k) for k in ("type", "description") if k in out}
    return {**head, **out}


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return dict(_inline(raw, raw.get("$defs", {})))


def crd(kind: Kind) -> dict[str, Any]:
    spec = structural_schema(kind.spec)
    status = structural_schema(kind.status)
    status["description"] = f"Observed state of the {kind.kind}, written by gpufleet only."
    spec["description"] = f"Desired state of the {kind.kind}, written by its user only."
    columns = [
        {
            "name": c.name,
            "type": c.type,
            "jsonPath": c.json_path,
            "description": c.description,
            **({"priority": c.priority} if c.priority else {}),
        }
        for c in kind.columns
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name,
            "labels": {"app.kubernetes.io/part-of": "gpufleet"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": [CATEGORY],
            },
            "scope": "Namespaced" if kind.namespaced else "Cluster",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": kind.description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": "API version: gpufleet.io/v1alpha1.",
                                },
                                "kind": {"type": "string", "description": f"Kind: {kind.kind}."},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                            **(
                                {"x-kubernetes-validations": list(kind.rules)} if kind.rules else {}
                            ),
                        }
                    },
                }
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Plain YAML: the same enum list twice must not become an anchor and an alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_HEADER = "# Generated by `gpufleet crds` from operator/gpufleet/api; do not edit.\n"


def render(kind: Kind) -> str:
    return _HEADER + yaml.dump(
        crd(kind), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True
    )


def file_name(kind: Kind) -> str:
    return f"{GROUP}_{kind.plural}.yaml"


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in KINDS:
        path = directory / file_name(kind)
        path.write_text(render(kind), encoding="utf-8")
        written.append(path)
    return written


def drift(directory: Path) -> list[str]:
    """Names of CRD files that differ from what the models generate."""
    stale = []
    for kind in KINDS:
        path = directory / file_name(kind)
        if not path.exists() or path.read_text(encoding="utf-8") != render(kind):
            stale.append(path.name)
    expected = {file_name(k) for k in KINDS}
    stale += sorted(p.name for p in directory.glob("*.yaml") if p.name not in expected)
    return stale
