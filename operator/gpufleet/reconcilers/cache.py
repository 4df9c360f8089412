"""What the kopf indexes keep of each watched object: small, frozen, parsed once."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpufleet.api.labels import NODE_POOL_LABEL, PROVIDER_LABEL
from gpufleet.api.parse import Parsed
from gpufleet.api.pool import ServingPoolSpec
from gpufleet.api.power import PowerBudgetSpec
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.reconcilers.selectors import Selector, from_label_selector

GPU_RESOURCE = "nvidia.com/gpu"


def _status(body: Mapping[str, Any]) -> dict[str, Any]:
    return dict(body.get("status") or {})


@dataclass(frozen=True)
class PoolEntry:
    namespace: str
    name: str
    generation: int
    parsed: Parsed[ServingPoolSpec]
    status: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderEntry:
    name: str
    generation: int
    parsed: Parsed[CloudProviderSpec]
    status: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BudgetEntry:
    name: str
    generation: int
    parsed: Parsed[PowerBudgetSpec]
    status: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeEntry:
    name: str
    provider: str
    node_pool: str
    ready: bool


@dataclass(frozen=True)
class PodEntry:
    namespace: str
    name: str
    labels: Mapping[str, str]
    node_name: str | None
    terminating: bool
    ready: bool = True  # the Ready condition: serving (a missing status counts as ready)


@dataclass(frozen=True)
class WorkloadEntry:
    namespace: str
    kind: str
    name: str
    replicas: int
    selector: Selector
    # What a burst copy carries, as JSON: the spec's `selector` and `template`; for a
    # StatefulSet also `serviceName`, `podManagementPolicy` and `volumeClaimNames` (the names
    # of its volumeClaimTemplates). reconcilers/burst/copies.py builds the copy from it.
    source: str = ""


def node_entry(name: str, body: Mapping[str, Any]) -> NodeEntry:
    labels = body.get("metadata", {}).get("labels") or {}
    return NodeEntry(
        name,
        str(labels.get(PROVIDER_LABEL, "")),
        str(labels.get(NODE_POOL_LABEL, "")),
        ready_condition(body),
    )


def requests_gpu(spec: Mapping[str, Any]) -> bool:
    for container in spec.get("containers") or ():
        resources = container.get("resources") or {}
        if GPU_RESOURCE in (resources.get("requests") or {}) or GPU_RESOURCE in (
            resources.get("limits") or {}
        ):
            return True
    return False


def pod_entry(namespace: str, name: str, body: Mapping[str, Any]) -> PodEntry:
    meta = body.get("metadata") or {}
    return PodEntry(
        namespace,
        name,
        dict(meta.get("labels") or {}),
        (body.get("spec") or {}).get("nodeName"),
        meta.get("deletionTimestamp") is not None,
        # No status to go by: never throttle on what cannot be seen.
        ready_condition(body, missing=True),
    )


def ready_condition(body: Mapping[str, Any], missing: bool = False) -> bool:
    """Whether a node's or pod's Ready condition is True; `missing` without any condition."""
    conditions = (body.get("status") or {}).get("conditions")
    if not conditions:
        return missing
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def workload_entry(kind: str, namespace: str, name: str, body: Mapping[str, Any]) -> WorkloadEntry:
    spec = body.get("spec") or {}
    replicas = spec.get("replicas")
    source: dict[str, Any] = {"selector": spec.get("selector"), "template": spec.get("template")}
    if kind == "StatefulSet":
        source["serviceName"] = spec.get("serviceName")
        source["podManagementPolicy"] = spec.get("podManagementPolicy")
        claims = (
            (c.get("metadata") or {}).get("name") for c in spec.get("volumeClaimTemplates") or ()
        )
        source["volumeClaimNames"] = sorted(str(name) for name in claims if name)
    return WorkloadEntry(
        namespace,
        kind,
        name,
        1 if replicas is None else int(replicas),
        from_label_selector(spec.get("selector")),
        json.dumps(source, sort_keys=True),
    )


@dataclass(frozen=True)
class View:
    """What the watches hold at the start of a tick."""

    pools: Sequence[PoolEntry]
    providers: Sequence[ProviderEntry]
    budgets: Sequence[BudgetEntry]
    nodes: Sequence[NodeEntry]
    pods: Mapping[str, Sequence[PodEntry]]
    workloads: Mapping[tuple[str, str, str], WorkloadEntry]
