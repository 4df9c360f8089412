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
from gpufleet.api.tenancy import PriorityClassInfo, TenantPolicySpec
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
    # metadata.creationTimestamp (RFC 3339, as the API server writes it) and uid: the oldest
    # of the pools that name one workload keeps it (reconcilers/targets.py). "" if unknown.
    created: str = ""
    uid: str = ""


@dataclass(frozen=True)
class ProviderEntry:
    name: str
    generation: int
    parsed: Parsed[CloudProviderSpec]
    status: Mapping[str, Any] = field(default_factory=dict)
    # metadata.deletionTimestamp ("": not being deleted), finalizers and resourceVersion, for
    # its finalizer's step (reconcilers/burst/teardown.py); uid names it in Events.
    deleting: str = ""
    finalizers: tuple[str, ...] = ()
    resource_version: str = ""
    uid: str = ""


@dataclass(frozen=True)
class BudgetEntry:
    name: str
    generation: int
    parsed: Parsed[PowerBudgetSpec]
    status: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TenantPolicyEntry:
    name: str
    generation: int
    parsed: Parsed[TenantPolicySpec]
    status: Mapping[str, Any] = field(default_factory=dict)
    # The namespaces it names, read even when the rest does not parse: those stay locked.
    namespaces: tuple[str, ...] = ()


def named_namespaces(spec: Any) -> tuple[str, ...]:
    names = (spec or {}).get("namespaces") if isinstance(spec, Mapping) else None
    return tuple(n for n in names if isinstance(n, str)) if isinstance(names, list) else ()


@dataclass(frozen=True)
class QuotaEntry:
    """A ResourceQuota's hard GPU limit (`requests.nvidia.com/gpu`), and the PriorityClasses
    it is scoped to: None applies to every pod; a set, to pods of those classes only."""

    namespace: str
    name: str
    gpus: int
    classes: frozenset[str] | None = None
    # What the quota charges now (`status.used`, the API server's count): None before the
    # quota controller first counts. It sees the pods the operator may not watch.
    used: int | None = None


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
    gpus: int = 0  # GPUs the pod requests (what a ResourceQuota on GPUs counts)
    # Its controller, `Kind/name` ("" for none): whose pod it is, which labels cannot fake.
    owner: str = ""
    finished: bool = False  # Succeeded or Failed: quota no longer charges it

    def owned_by(self, workload: WorkloadEntry) -> bool:
        """Whether the workload's controller made this pod: a Deployment's pods belong to
        its ReplicaSets (`<name>-<hash>`), a StatefulSet's to itself."""
        kind, _, name = self.owner.partition("/")
        if workload.kind == "StatefulSet":
            return kind == "StatefulSet" and name == workload.name
        prefix = f"{workload.name}-"
        return kind == "ReplicaSet" and name.startswith(prefix) and "-" not in name[len(prefix) :]


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
    # The PriorityClass its pods run with (`template.spec.priorityClassName`); None: none.
    priority_class: str | None = None
    # The pod template's labels, sorted: what its new pods carry (an InferencePool's
    # selector must match them, reconcilers/inference_pools.py).
    template_labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class InferencePoolEntry:
    """A Gateway API Inference Extension InferencePool: which pods it routes to. Its
    selector is `matchLabels` only (GIE api/v1 LabelSelector, at least one label)."""

    namespace: str
    name: str
    match_labels: tuple[tuple[str, str], ...]

    @property
    def selector(self) -> Selector:
        return from_label_selector({"matchLabels": dict(self.match_labels)})


def inference_pool_entry(namespace: str, name: str, body: Mapping[str, Any]) -> InferencePoolEntry:
    selector = ((body.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    labels = selector if isinstance(selector, Mapping) else {}
    return InferencePoolEntry(
        namespace, name, tuple(sorted((str(k), str(v)) for k, v in labels.items()))
    )


def node_entry(name: str, body: Mapping[str, Any]) -> NodeEntry:
    labels = body.get("metadata", {}).get("labels") or {}
    return NodeEntry(
        name,
        str(labels.get(PROVIDER_LABEL, "")),
        str(labels.get(NODE_POOL_LABEL, "")),
        ready_condition(body),
    )


def requests_gpu(spec: Mapping[str, Any]) -> bool:
    """Whether any container asks for GPUs, init containers and sidecars included (quota
    charges them all)."""
    for container in (*(spec.get("containers") or ()), *(spec.get("initContainers") or ())):
        resources = container.get("resources") or {}
        if GPU_RESOURCE in (resources.get("requests") or {}) or GPU_RESOURCE in (
            resources.get("limits") or {}
        ):
            return True
    return False


def pod_entry(namespace: str, name: str, body: Mapping[str, Any]) -> PodEntry:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    return PodEntry(
        namespace,
        name,
        dict(meta.get("labels") or {}),
        spec.get("nodeName"),
        meta.get("deletionTimestamp") is not None,
        # No status to go by: never throttle on what cannot be seen.
        ready_condition(body, missing=True),
        gpus_requested(spec),
        _controller(meta),
        (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
    )


def _controller(meta: Mapping[str, Any]) -> str:
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller"):
            return f"{ref.get('kind', '')}/{ref.get('name', '')}"
    return ""


def _count(value: Any) -> int:
    try:
        return max(0, int(str(value)))
    except ValueError:
        return 0


def _gpus(value: Any) -> int | None:
    return None if value is None else _count(value)


def _container_gpus(container: Mapping[str, Any]) -> int:
    resources = container.get("resources") or {}
    value = (resources.get("requests") or {}).get(GPU_RESOURCE)
    if value is None:
        value = (resources.get("limits") or {}).get(GPU_RESOURCE)
    return _count(value) if value is not None else 0


def gpus_requested(spec: Mapping[str, Any]) -> int:
    """GPUs the pod requests, as quota counts them: an extended resource's request equals
    its limit, and a limit alone implies the request; the pod's request is the larger of
    its containers plus sidecars (init containers that keep running) and its largest other
    init container, as the scheduler and quota reckon it."""
    inits = spec.get("initContainers") or ()
    sidecars = [c for c in inits if c.get("restartPolicy") == "Always"]
    running = sum(_container_gpus(c) for c in (*(spec.get("containers") or ()), *sidecars))
    first = max((_container_gpus(c) for c in inits if c not in sidecars), default=0)
    return max(running, first)


QUOTA_RESOURCE = f"requests.{GPU_RESOURCE}"


def quota_entry(namespace: str, name: str, body: Mapping[str, Any]) -> QuotaEntry | None:
    """The quota's GPU limit, or None when it sets none or only limits pods gpufleet never
    makes (BestEffort, Terminating scopes)."""
    spec = body.get("spec") or {}
    hard = (spec.get("hard") or {}).get(QUOTA_RESOURCE)
    if hard is None:
        return None
    scopes = set(spec.get("scopes") or ())
    classes: frozenset[str] | None = None
    for expression in (spec.get("scopeSelector") or {}).get("matchExpressions") or ():
        scopes.add(str(expression.get("scopeName")))
        if expression.get("scopeName") == "PriorityClass" and expression.get("operator") == "In":
            named = frozenset(str(v) for v in expression.get("values") or ())
            classes = named if classes is None else classes & named
    if scopes & {"BestEffort", "Terminating"}:
        return None
    # Other PriorityClass operators (NotIn, Exists, DoesNotExist) are taken as applying to
    # every pod: that can only make the plan ask for fewer GPUs than the quota allows.
    used = ((body.get("status") or {}).get("used") or {}).get(QUOTA_RESOURCE)
    return QuotaEntry(namespace, name, _count(hard), classes, _gpus(used))


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
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    return WorkloadEntry(
        namespace,
        kind,
        name,
        1 if replicas is None else int(replicas),
        from_label_selector(spec.get("selector")),
        json.dumps(source, sort_keys=True),
        (template.get("spec") or {}).get("priorityClassName") or None,
        tuple(sorted((str(k), str(v)) for k, v in labels.items())),
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
    # The platform's objects (api/tenancy.py): empty where the cluster has none.
    tenant_policies: Sequence[TenantPolicyEntry] = ()
    priority_classes: Mapping[str, PriorityClassInfo] = field(default_factory=dict)
    quotas: Mapping[str, Sequence[QuotaEntry]] = field(default_factory=dict)
    # GIE InferencePools by (namespace, name): empty where GIE is not installed.
    inference_pools: Mapping[tuple[str, str], InferencePoolEntry] = field(default_factory=dict)
