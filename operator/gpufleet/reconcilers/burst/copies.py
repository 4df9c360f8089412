"""What a burst copy is: the object gpufleet applies in a remote cluster for a pool's workload,
how its replicas are attributed to node pools, and when a namespace gpufleet created for one
may go. Pure: reconcilers/burst/remote.py makes the calls.

A copy is built from scratch out of the workload's `source` (cache.WorkloadEntry), never by
stripping the source object, so nothing the source cluster owns travels: no status, uid,
resourceVersion, generation, ownerReferences, managedFields, labels or annotations. A
StatefulSet copy keeps `serviceName` and `podManagementPolicy` and drops
`volumeClaimTemplates` (with `persistentVolumeClaimRetentionPolicy`): their storage classes
and volumes belong to the source cluster, and claims would outlive the burst. Each claim
template becomes an `emptyDir` volume of the same name, so the template's volumeMounts hold.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpufleet.api.labels import (
    CREATED_BY_LABEL,
    POOL_LABEL,
    PROVIDER_LABEL,
    SOURCE_ANNOTATION,
    SOURCE_HASH_ANNOTATION,
)
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.planner.types import NodePoolKey, PoolKey
from gpufleet.reconcilers.cache import WorkloadEntry

MANAGED_BY = "app.kubernetes.io/managed-by"
TARGET_PREFIX = "Remote/"
# The kinds a pool's workload may have, and so its copies.
KINDS = ("Deployment", "StatefulSet")
# (kind, api group, resource) listed, metadata only, in a namespace gpufleet created before it
# deletes that namespace: the workloads and what a user adds for a copy to run or be reached.
CONTENT = (
    ("Deployment", "apps", "deployments"),
    ("StatefulSet", "apps", "statefulsets"),
    ("DaemonSet", "apps", "daemonsets"),
    ("Job", "batch", "jobs"),
    ("CronJob", "batch", "cronjobs"),
    ("Pod", "", "pods"),
    ("Service", "", "services"),
    ("ConfigMap", "", "configmaps"),
    ("Secret", "", "secrets"),
    ("PersistentVolumeClaim", "", "persistentvolumeclaims"),
    ("ServiceAccount", "", "serviceaccounts"),
)
# What the cluster itself puts in every namespace.
_CLUSTER_DEFAULTS = {("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")}
_SERVICE_ACCOUNT_ANNOTATION = "kubernetes.io/service-account.name"


@dataclass(frozen=True)
class Copy:
    """A burst copy observed in a remote cluster. `kind` is empty when a pool has copies of
    both kinds there (its workload changed kind): the next apply removes the stale one."""

    namespace: str
    name: str
    replicas: int
    source_hash: str
    kind: str = "Deployment"
    ready: int = 0  # the remote controller's readyReplicas: serving, model loaded


class Fate(enum.Enum):
    """What becomes of a namespace gpufleet created, once a copy in it is gone."""

    DELETE = "Delete"
    WAIT = "Wait"  # a copy of ours is still being deleted there: look again next tick
    KEEP = "Keep"


def target(provider: str, namespace: str, name: str) -> str:
    return f"{TARGET_PREFIX}{provider}/{namespace}/{name}"


def source_hash(workload: WorkloadEntry) -> str:
    return hashlib.sha256(workload.source.encode()).hexdigest()[:16]


def pool_label(key: PoolKey) -> str:
    return f"{key.namespace}.{key.name}"


def copy_selector(provider: str, key: PoolKey | None = None) -> str:
    """The label selector of `provider`'s copies (of the pool `key`)."""
    pool = f"{POOL_LABEL}={pool_label(key)}" if key else POOL_LABEL
    return f"{MANAGED_BY}=gpufleet,{pool},{PROVIDER_LABEL}={provider}"


def stale(copy: Copy, workload: WorkloadEntry) -> bool:
    """The copy no longer matches its workload: re-apply it at its size."""
    return (copy.kind, copy.name, copy.source_hash) != (
        workload.kind,
        workload.name,
        source_hash(workload),
    )


def copy_manifest(
    key: PoolKey, workload: WorkloadEntry, replicas: int, provider: str
) -> dict[str, Any]:
    """The copy of `workload` (a Deployment or StatefulSet) applied in `provider`'s cluster."""
    if workload.kind not in KINDS:
        raise ValueError(f"{workload.kind} does not burst (Deployment, StatefulSet)")
    source = json.loads(workload.source or "{}")
    template = source.get("template") or {}
    spec: dict[str, Any] = {"replicas": replicas, "selector": source.get("selector") or {}}
    if workload.kind == "StatefulSet":
        template = scratch_volumes(template, source.get("volumeClaimNames") or ())
        for field in ("serviceName", "podManagementPolicy"):
            if source.get(field):
                spec[field] = source[field]
    spec["template"] = template
    metadata = _copy_metadata(key, workload, provider, workload.name)
    metadata["annotations"][SOURCE_HASH_ANNOTATION] = source_hash(workload)
    return {
        "apiVersion": "apps/v1",
        "kind": workload.kind,
        "metadata": metadata,
        "spec": spec,
    }


def service_manifest(key: PoolKey, workload: WorkloadEntry, provider: str) -> dict[str, Any] | None:
    """The headless Service that governs a StatefulSet copy (its `serviceName`): the copy's
    pods get their DNS names (`<pod>.<service>.<namespace>`) only through it, and the remote
    cluster lacks the source's. None for a Deployment, or without a serviceName."""
    if workload.kind != "StatefulSet":
        return None
    source = json.loads(workload.source or "{}")
    name = source.get("serviceName")
    selector = (source.get("selector") or {}).get("matchLabels") or (
        (source.get("template") or {}).get("metadata") or {}
    ).get("labels")
    if not name or not selector:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _copy_metadata(key, workload, provider, str(name)),
        "spec": {"clusterIP": "None", "selector": dict(selector)},
    }


def _copy_metadata(
    key: PoolKey, workload: WorkloadEntry, provider: str, name: str
) -> dict[str, Any]:
    """What marks an object as `provider`'s copy for the pool `key`, and its source."""
    return {
        "name": name,
        "namespace": workload.namespace,
        "labels": {MANAGED_BY: "gpufleet", POOL_LABEL: pool_label(key), PROVIDER_LABEL: provider},
        "annotations": {
            SOURCE_ANNOTATION: f"{workload.namespace}/{workload.kind}/{workload.name}",
        },
    }


def scratch_volumes(template: Mapping[str, Any], claims: Sequence[str]) -> dict[str, Any]:
    """`template` with an emptyDir volume for each claim template name (replacing a volume
    of that name, as the StatefulSet controller's claims do)."""
    if not claims:
        return dict(template)
    pod = dict(template.get("spec") or {})
    kept = [v for v in pod.get("volumes") or () if v.get("name") not in set(claims)]
    pod["volumes"] = [*kept, *({"name": name, "emptyDir": {}} for name in claims)]
    return {**template, "spec": pod}


def namespace_manifest(name: str) -> dict[str, Any]:
    """A namespace gpufleet creates in a remote cluster for a copy, marked as its own."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {CREATED_BY_LABEL: "gpufleet"}},
    }


def held_by_other(kind: str, meta: Mapping[str, Any] | None, provider: str) -> str | None:
    """Who else holds the object of `kind` whose metadata is `meta` (another provider that
    shares the cluster, or someone not gpufleet); None when absent or `provider`'s copy."""
    if meta is None:
        return None
    labels = meta.get("labels") or {}
    if labels.get(MANAGED_BY) != "gpufleet":
        return f"a {kind} gpufleet does not manage"
    owner = str(labels.get(PROVIDER_LABEL, ""))
    return None if owner == provider else f"provider {owner or '(none)'}"


def namespace_fate(
    namespace: Mapping[str, Any], content: Mapping[str, Sequence[Mapping[str, Any]]]
) -> tuple[Fate, str]:
    """Whether to delete a namespace of a remote cluster, from its metadata and the metadata
    of what it holds by kind (CONTENT), and why. Only a namespace gpufleet created, holding
    nothing but what the cluster puts in every namespace, goes; while a copy of ours in it is
    still being deleted (foreground: its pods go first), wait."""
    if (namespace.get("labels") or {}).get(CREATED_BY_LABEL) != "gpufleet":
        return Fate.KEEP, f"not created by gpufleet (no {CREATED_BY_LABEL} label)"
    if namespace.get("deletionTimestamp"):
        return Fate.KEEP, "already being deleted"
    held: list[str] = []
    for kind, items in sorted(content.items()):
        for meta in items:
            name = str(meta.get("name", ""))
            labels = meta.get("labels") or {}
            if kind in KINDS and labels.get(MANAGED_BY) == "gpufleet":
                if meta.get("deletionTimestamp"):
                    return Fate.WAIT, f"copy {kind} {name} is being deleted"
            elif (kind, name) in _CLUSTER_DEFAULTS or (
                kind == "Secret"
                and (meta.get("annotations") or {}).get(_SERVICE_ACCOUNT_ANNOTATION) == "default"
            ):
                continue
            held.append(f"{kind} {name}")
    if held:
        more = f" and {len(held) - 3} more" if len(held) > 3 else ""
        return Fate.KEEP, f"holds {', '.join(held[:3])}{more}"
    return Fate.DELETE, "created by gpufleet and holds nothing else"


def attribute(
    provider: str,
    count: int,
    spec: CloudProviderSpec,
    last: Mapping[NodePoolKey, int],
    gpu_types: Any,
) -> dict[NodePoolKey, int]:
    """A copy's replicas by node pool: where the last plan put them, the rest on the first
    node pool of the provider that the last plan used, else the first of a wanted GPU type."""
    out: dict[NodePoolKey, int] = {}
    left = count
    for key, planned in sorted(last.items()):
        if key.provider == provider and left > 0 and planned > 0:
            out[key] = min(left, planned)
            left -= out[key]
    if left > 0:
        used = sorted(k for k in last if k.provider == provider)
        names = [n.name for n in spec.node_pools if n.gpu_type in set(gpu_types)] or [
            n.name for n in spec.node_pools
        ]
        key = used[0] if used else NodePoolKey(provider, names[0])
        out[key] = out.get(key, 0) + left
    return out
