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

The remote cluster is the provider admin's: a copy runs as the namespace's `default`
ServiceAccount, with no token mounted or projected, unless the provider allows the
template's one (`cluster.allowedServiceAccounts`), at the cluster's default priority unless
it allows the template's PriorityClass (`cluster.allowedPriorityClasses`), and wherever
the remote scheduler puts it, on the remote runtime; podsecurity.py checks it against the
provider's Pod Security level before it is applied. What it names but does not carry (Secrets, ConfigMaps,
claims, an allowed ServiceAccount) the pool's status lists (`references`).
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
    INSTALLATION_LABEL,
    POOL_LABEL,
    PROVIDER_LABEL,
    SOURCE_ANNOTATION,
    SOURCE_HASH_ANNOTATION,
)
from gpufleet.api.pool import ReferenceKind, ServingPoolSpec
from gpufleet.api.provider import CloudProviderSpec, ClusterAccess
from gpufleet.api.tenancy import SYSTEM_PREFIX, UNGOVERNED, NamespaceTerms
from gpufleet.planner.placement import refusal
from gpufleet.planner.types import NodePoolKey, PoolKey
from gpufleet.reconcilers.burst.contents import Tally, tally
from gpufleet.reconcilers.burst.lifecycle import Owner, created_by, owner
from gpufleet.reconcilers.cache import WorkloadEntry

MANAGED_BY = "app.kubernetes.io/managed-by"
TARGET_PREFIX = "Remote/"
# The kinds a pool's workload may have, and so its copies.
KINDS = ("Deployment", "StatefulSet")
# (kind, api group, resource) listed, metadata only, in a namespace gpufleet created before it
# deletes that namespace: the workloads and what a user adds for a copy to run or be reached.
# Not Secrets and ConfigMaps: a grant to list them reads their data; the namespace's quota
# counts them instead (contents.py).
CONTENT = (
    ("Deployment", "apps", "deployments"),
    ("StatefulSet", "apps", "statefulsets"),
    ("DaemonSet", "apps", "daemonsets"),
    ("Job", "batch", "jobs"),
    ("CronJob", "batch", "cronjobs"),
    ("Pod", "", "pods"),
    ("Service", "", "services"),
    ("PersistentVolumeClaim", "", "persistentvolumeclaims"),
    ("ServiceAccount", "", "serviceaccounts"),
)
# What the cluster itself puts in every namespace, of the kinds listed.
_CLUSTER_DEFAULTS = {("ServiceAccount", "default")}
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
ENFORCE_VERSION_LABEL = "pod-security.kubernetes.io/enforce-version"


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


class CopyRefused(Exception):
    """A copy the provider's rules for copies keep out of its cluster: its template breaks
    the Pod Security level, or its namespace exists there and is not one gpufleet may use.
    The pool's BurstActive condition says why."""

    reason = "BurstRefused"


class NamespaceRefused(CopyRefused):
    """The copy's namespace exists in the remote cluster, not created by gpufleet, and the
    provider does not list it: no copy of the pool may stay there, compliant or not."""


def refused_for(violations: Sequence[Any], access: ClusterAccess) -> CopyRefused:
    """The refusal naming the first few `violations` of the provider's level."""
    more = f" and {len(violations) - 3} more" if len(violations) > 3 else ""
    return CopyRefused(
        f"the pod template does not meet Pod Security level {access.pod_security_level.value}: "
        f"{'; '.join(map(str, violations[:3]))}{more}"
    )


class Fate(enum.Enum):
    """What becomes of a namespace gpufleet created, once a copy in it is gone."""

    DELETE = "Delete"
    WAIT = "Wait"  # a copy of ours is still being deleted there: look again next tick
    KEEP = "Keep"


def target(provider: str, namespace: str, name: str) -> str:
    return f"{TARGET_PREFIX}{provider}/{namespace}/{name}"


def source_hash(workload: WorkloadEntry, access: ClusterAccess | None = None) -> str:
    """What the copy is built from: the workload's source and, with `access`, the provider's
    rules for copies, so that changing them re-applies (or refuses) the copies. (Adding a
    rule changes every hash: copies made under the older rules are re-applied under the new.)"""
    text = workload.source
    if access is not None:
        rules = [
            access.pod_security_level.value,
            sorted(access.allowed_service_accounts),
            sorted(access.allowed_priority_classes),
        ]
        text += json.dumps(rules)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pool_label(key: PoolKey) -> str:
    return f"{key.namespace}.{key.name}"


def copy_selector(
    provider: str, key: PoolKey | None = None, installation: str | None = None
) -> str:
    """The label selector of `provider`'s copies (of the pool `key`), of `installation`'s
    only when given (None: every installation's, and those made before they were labelled)."""
    pool = f"{POOL_LABEL}={pool_label(key)}" if key else POOL_LABEL
    mine = f",{INSTALLATION_LABEL}={installation}" if installation is not None else ""
    return f"{MANAGED_BY}=gpufleet,{pool},{PROVIDER_LABEL}={provider}{mine}"


def stale(copy: Copy, workload: WorkloadEntry, access: ClusterAccess | None = None) -> bool:
    """The copy no longer matches its workload (or the provider's rules for copies): re-apply
    it at its size."""
    return (copy.kind, copy.name, copy.source_hash) != (
        workload.kind,
        workload.name,
        source_hash(workload, access),
    )


def copy_manifest(
    key: PoolKey,
    workload: WorkloadEntry,
    replicas: int,
    provider: str,
    access: ClusterAccess | None = None,
    installation: str = "",
) -> dict[str, Any]:
    """The copy of `workload` (a Deployment or StatefulSet) applied in `provider`'s cluster,
    running as `access` allows (none: as the namespace's default ServiceAccount, no token),
    labelled as `installation`'s."""
    if workload.kind not in KINDS:
        raise ValueError(f"{workload.kind} does not burst (Deployment, StatefulSet)")
    source = json.loads(workload.source or "{}")
    template = confined(source.get("template") or {}, access or ClusterAccess())
    spec: dict[str, Any] = {"replicas": replicas, "selector": source.get("selector") or {}}
    if workload.kind == "StatefulSet":
        template = scratch_volumes(template, source.get("volumeClaimNames") or ())
        for field in ("serviceName", "podManagementPolicy"):
            if source.get(field):
                spec[field] = source[field]
    spec["template"] = template
    metadata = _copy_metadata(key, workload, provider, workload.name, installation)
    metadata["annotations"][SOURCE_HASH_ANNOTATION] = source_hash(workload, access)
    return {
        "apiVersion": "apps/v1",
        "kind": workload.kind,
        "metadata": metadata,
        "spec": spec,
    }


def service_manifest(
    key: PoolKey, workload: WorkloadEntry, provider: str, installation: str = ""
) -> dict[str, Any] | None:
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
        "metadata": _copy_metadata(key, workload, provider, str(name), installation),
        "spec": {"clusterIP": "None", "selector": dict(selector)},
    }


def _copy_metadata(
    key: PoolKey, workload: WorkloadEntry, provider: str, name: str, installation: str
) -> dict[str, Any]:
    """What marks an object as `installation`'s copy on `provider` for the pool `key`, and
    its source."""
    labels = {MANAGED_BY: "gpufleet", POOL_LABEL: pool_label(key), PROVIDER_LABEL: provider}
    if installation:
        labels[INSTALLATION_LABEL] = installation
    return {
        "name": name,
        "namespace": workload.namespace,
        "labels": labels,
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


# Pod fields that pick where and how the remote cluster runs a copy, which are its admin's
# to decide: a node by name skips the scheduler and with it the nodes' taints, another
# scheduler skips the admin's, and a RuntimeClass (with the overhead it sets) may be one
# the admin keeps for their own workloads. `priority` and `preemptionPolicy` are what the
# remote admission fills in from the PriorityClass; sent along, they would contradict it.
_REMOTE_OWNED = (
    "nodeName",
    "schedulerName",
    "runtimeClassName",
    "overhead",
    "priority",
    "preemptionPolicy",
)


def confined(template: Mapping[str, Any], access: ClusterAccess) -> dict[str, Any]:
    """`template` running as `access` allows: a ServiceAccount it does not allow (the
    template's, or `default` when it names none) gives way to the namespace's `default`,
    with no token, mounted or projected; a PriorityClass it does not allow gives way to the
    cluster's default; and the remote cluster schedules it, on its own runtime."""
    pod = {k: v for k, v in (template.get("spec") or {}).items() if k not in _REMOTE_OWNED}
    account = pod.get("serviceAccountName") or pod.get("serviceAccount") or "default"
    if account not in access.allowed_service_accounts:
        pod.pop("serviceAccountName", None)
        pod.pop("serviceAccount", None)  # the deprecated alias names one all the same
        pod["automountServiceAccountToken"] = False
        pod = _without_projected_tokens(pod)
    priority_class = pod.get("priorityClassName")
    if priority_class is not None and (
        priority_class not in access.allowed_priority_classes
        or str(priority_class).startswith(SYSTEM_PREFIX)
    ):
        del pod["priorityClassName"]
    return {**template, "spec": pod}


def _without_projected_tokens(pod: Mapping[str, Any]) -> dict[str, Any]:
    """`pod` without the ServiceAccount tokens its projected volumes would have the kubelet
    mint, whatever the automount setting, for whatever audience the template names (an
    STS, a vault): a volume left with nothing to project goes, with its mounts.

    Stripped rather than refused, as the ServiceAccount itself is: the template is the
    tenant's and its own cluster may well need the token, while the remote cluster's admin
    has said, by not allowing the account, that a copy runs there without an identity. A
    refusal would keep every such pool from bursting over a field the copy cannot use."""
    removed: set[str] = set()
    volumes: list[Any] = []
    for volume in pod.get("volumes") or ():
        projected = (volume or {}).get("projected")
        if not isinstance(projected, Mapping):
            volumes.append(volume)
            continue
        sources = [
            s for s in projected.get("sources") or () if "serviceAccountToken" not in (s or {})
        ]
        if sources:
            volumes.append({**volume, "projected": {**projected, "sources": sources}})
        else:
            removed.add(volume.get("name"))
    if not removed:
        return {**pod, "volumes": volumes} if "volumes" in pod else dict(pod)
    out = {**pod, "volumes": volumes}
    for field in ("initContainers", "containers", "ephemeralContainers"):
        if field in out:
            out[field] = [_unmounted(c, removed) for c in out[field] or ()]
    return out


def _unmounted(container: Any, volumes: set[str]) -> Any:
    """`container` without its mounts of `volumes`."""
    if not isinstance(container, Mapping) or "volumeMounts" not in container:
        return container
    mounts = [m for m in container["volumeMounts"] or () if (m or {}).get("name") not in volumes]
    return {**container, "volumeMounts": mounts}


def pod_security_labels(access: ClusterAccess) -> dict[str, str]:
    """What makes the remote cluster's admission enforce `access`'s level on a namespace."""
    return {
        ENFORCE_LABEL: access.pod_security_level.value.lower(),
        ENFORCE_VERSION_LABEL: "latest",
    }


def namespace_manifest(
    name: str, access: ClusterAccess | None = None, installation: str = "", provider: str = ""
) -> dict[str, Any]:
    """A namespace gpufleet creates in a remote cluster for `provider`'s copy, marked as
    `installation`'s, whose pods the cluster holds to the provider's Pod Security level."""
    labels = {CREATED_BY_LABEL: "gpufleet", **pod_security_labels(access or ClusterAccess())}
    if installation:
        labels[INSTALLATION_LABEL] = installation
    if provider:  # which provider's deletion waits for it (reconcilers/burst/teardown.py)
        labels[PROVIDER_LABEL] = provider
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pool_references(
    key: PoolKey,
    pool: ServingPoolSpec,
    workload: WorkloadEntry,
    providers: Mapping[str, CloudProviderSpec],
    terms: NamespaceTerms = UNGOVERNED,
) -> list[tuple[ReferenceKind, str]]:
    """What the pool's copies would name but not carry, in every remote cluster it may burst
    to (its burst settings, its data policy and its namespace's terms allow the provider),
    sorted: known before a burst, so each cluster can be made ready for it."""
    if workload.kind not in KINDS:
        return []
    found: set[tuple[ReferenceKind, str]] = set()
    for name, spec in sorted(providers.items()):
        if spec.cluster.kubeconfig_secret_ref is None or refusal(
            pool, name, spec, terms, key.namespace
        ):
            continue
        found |= references(copy_manifest(key, workload, 1, name, spec.cluster))
    return sorted(found)


def references(copy: Mapping[str, Any]) -> set[tuple[ReferenceKind, str]]:
    """What the copy manifest `copy` names but does not carry, so the remote cluster must
    hold: Secrets, ConfigMaps and claims of its volumes, env and image pulls, and the
    ServiceAccount it runs as, unless the namespace's `default` and no projected token is
    minted for it (an allowed account's, which its audience must be set up to trust)."""
    pod = ((copy.get("spec") or {}).get("template") or {}).get("spec") or {}
    found: set[tuple[ReferenceKind, str]] = set()

    def add(kind: ReferenceKind, name: Any) -> None:
        if isinstance(name, str) and name:
            found.add((kind, name))

    account = pod.get("serviceAccountName") or pod.get("serviceAccount") or "default"
    tokens = any(
        "serviceAccountToken" in (source or {})
        for volume in pod.get("volumes") or ()
        for source in ((volume or {}).get("projected") or {}).get("sources") or ()
    )
    if account != "default" or tokens:
        add(ReferenceKind.SERVICE_ACCOUNT, account)
    for pull in pod.get("imagePullSecrets") or ():
        add(ReferenceKind.SECRET, (pull or {}).get("name"))
    for volume in pod.get("volumes") or ():
        volume = volume or {}
        add(ReferenceKind.SECRET, (volume.get("secret") or {}).get("secretName"))
        add(ReferenceKind.CONFIG_MAP, (volume.get("configMap") or {}).get("name"))
        claim = volume.get("persistentVolumeClaim") or {}
        add(ReferenceKind.PERSISTENT_VOLUME_CLAIM, claim.get("claimName"))
        for source in (volume.get("projected") or {}).get("sources") or ():
            add(ReferenceKind.SECRET, ((source or {}).get("secret") or {}).get("name"))
            add(ReferenceKind.CONFIG_MAP, ((source or {}).get("configMap") or {}).get("name"))
    for field in ("initContainers", "containers"):
        for container in pod.get(field) or ():
            for env in (container or {}).get("env") or ():
                value_from = (env or {}).get("valueFrom") or {}
                add(ReferenceKind.SECRET, (value_from.get("secretKeyRef") or {}).get("name"))
                add(ReferenceKind.CONFIG_MAP, (value_from.get("configMapKeyRef") or {}).get("name"))
            for env_from in (container or {}).get("envFrom") or ():
                add(ReferenceKind.SECRET, ((env_from or {}).get("secretRef") or {}).get("name"))
                add(
                    ReferenceKind.CONFIG_MAP,
                    ((env_from or {}).get("configMapRef") or {}).get("name"),
                )
    return found


def held_by_other(
    kind: str, meta: Mapping[str, Any] | None, provider: str, installation: str = ""
) -> str | None:
    """Who else holds the object of `kind` whose metadata is `meta` (another installation
    or provider that shares the cluster, or someone not gpufleet); None when absent or
    `provider`'s copy (one made before installations were labelled is taken over)."""
    if meta is None:
        return None
    labels = meta.get("labels") or {}
    if labels.get(MANAGED_BY) != "gpufleet":
        return f"a {kind} gpufleet does not manage"
    if owner(labels, installation) == Owner.OTHER:
        return f"installation {labels.get(INSTALLATION_LABEL)}"
    holder = str(labels.get(PROVIDER_LABEL, ""))
    return None if holder == provider else f"provider {holder or '(none)'}"


def namespace_fate(
    namespace: Mapping[str, Any],
    content: Mapping[str, Sequence[Mapping[str, Any]]],
    installation: str = "",
    *,
    quota: Mapping[str, Any] | None = None,
) -> tuple[Fate, str]:
    """Whether to delete a namespace of a remote cluster, from its metadata, the metadata
    of what it holds by kind (CONTENT) and its ResourceQuota `gpufleet-contents` (None:
    none), which counts its Secrets and ConfigMaps (contents.py), and why. Only a namespace
    gpufleet created (as `installation`, or before installations were labelled), holding
    nothing but what the cluster puts in every namespace, goes; while a copy of gpufleet's in
    it is still being deleted (foreground: its pods go first), or its quota has not counted
    yet, wait."""
    labels = namespace.get("labels") or {}
    if labels.get(CREATED_BY_LABEL) != "gpufleet":
        return Fate.KEEP, f"not created by gpufleet (no {CREATED_BY_LABEL} label)"
    if not created_by(namespace, installation):
        return Fate.KEEP, f"created by installation {labels.get(INSTALLATION_LABEL)}"
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
            elif (kind, name) in _CLUSTER_DEFAULTS:
                continue
            held.append(f"{kind} {name}")
    if held:
        more = f" and {len(held) - 3} more" if len(held) > 3 else ""
        return Fate.KEEP, f"holds {', '.join(held[:3])}{more}"
    counted, why = tally(quota)
    if counted != Tally.BASELINE:
        return (Fate.WAIT if counted == Tally.UNCOUNTED else Fate.KEEP), why
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
