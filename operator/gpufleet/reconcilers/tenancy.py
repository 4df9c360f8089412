"""What the platform grants each pool this tick, from the admin's objects only.

Pure: from the watched TenantPolicies, PriorityClasses, ResourceQuotas, workloads and pods to
each pool's priority, each namespace's terms and GPUs under quota. Nothing a tenant writes
in a ServingPool enters here except which workload it scales; the class comes from that
workload's pod template, which is what the pods really run with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gpufleet.api.pool import ServingPoolSpec
from gpufleet.api.tenancy import (
    UNGOVERNED,
    NamespaceTerms,
    PoolPriority,
    default_priority,
    merge_terms,
    resolve_priority,
)
from gpufleet.planner.types import PoolKey
from gpufleet.reconcilers.cache import PodEntry, QuotaEntry, View, WorkloadEntry


@dataclass(frozen=True)
class NamespaceQuota:
    """GPUs a namespace's pools may hold in all: the tightest quota that applies, less what
    the namespace's other GPU pods hold."""

    gpus: int
    quota: str  # the ResourceQuota that binds
    hard: int
    others: int


@dataclass(frozen=True)
class Grants:
    priorities: Mapping[PoolKey, PoolPriority] = field(default_factory=dict)
    terms: Mapping[str, NamespaceTerms] = field(default_factory=dict)
    quotas: Mapping[str, NamespaceQuota] = field(default_factory=dict)
    # ServingPools each TenantPolicy governs now (for its status).
    governed: Mapping[str, int] = field(default_factory=dict)

    @property
    def priority_values(self) -> dict[PoolKey, int]:
        return {key: p.value for key, p in self.priorities.items()}

    @property
    def namespace_gpus(self) -> dict[str, int]:
        return {namespace: q.gpus for namespace, q in self.quotas.items()}


def _namespace_quota(
    namespace: str,
    quotas: Sequence[QuotaEntry],
    classes: set[str | None],
    workloads: Sequence[WorkloadEntry],
    pods: Sequence[PodEntry],
) -> NamespaceQuota | None:
    applying = [q for q in quotas if q.classes is None or q.classes & classes]
    if not applying:
        return None
    tightest = min(applying, key=lambda q: (q.gpus, q.name))
    # The replicas of the pools' workloads (their controllers' pods, not pods that only
    # share their labels) are what the plan sizes; every other GPU pod in the namespace
    # counts against the quota as it stands, terminating ones too (quota charges them until
    # they are gone, and they are no longer replicas), finished ones not.
    others = pooled = 0
    for pod in pods:
        if pod.finished:
            continue
        if pod.terminating or not any(pod.owned_by(w) for w in workloads):
            others += pod.gpus
        else:
            pooled += pod.gpus
    # The quota's own count also holds GPU pods the operator does not watch (with
    # --pod-label-selector): what it charges beyond the pools' replicas is held by others.
    if tightest.used is not None:
        others = max(others, tightest.used - pooled)
    return NamespaceQuota(max(0, tightest.gpus - others), tightest.name, tightest.gpus, others)


def locked(terms: NamespaceTerms, policy: str) -> NamespaceTerms:
    """What a namespace keeps while a TenantPolicy naming it does not parse (a field of a
    newer release, an API server that skipped its CEL): nothing that policy might have
    withheld. No named class and no burst, approved subprocessors only; its pools keep
    running where they run, since their own data policy still holds."""
    return dataclasses.replace(
        terms,
        policies=(*terms.policies, policy),
        priority_classes=frozenset(),
        approved_subprocessors_only=True,
        burst_allowed=False,
    )


def grants(
    view: View,
    pools: Mapping[PoolKey, ServingPoolSpec],
    targets: Mapping[PoolKey, WorkloadEntry],
) -> Grants:
    """Each pool's priority, each namespace's terms and GPU quota."""
    policies = [(e.name, e.parsed.value) for e in view.tenant_policies if e.parsed.value]
    terms = merge_terms(policies)
    for entry in view.tenant_policies:
        if entry.parsed.value is None:
            for namespace in entry.namespaces:
                terms[namespace] = locked(terms.get(namespace, UNGOVERNED), entry.name)
    priorities = {
        key: resolve_priority(
            target.priority_class, view.priority_classes, terms.get(key.namespace, UNGOVERNED)
        )
        for key, target in targets.items()
        if key in pools
    }
    default_class = default_priority(view.priority_classes)[1]
    by_namespace: dict[str, list[PoolKey]] = {}
    for key in pools:
        by_namespace.setdefault(key.namespace, []).append(key)
    quotas: dict[str, NamespaceQuota] = {}
    for namespace, keys in by_namespace.items():
        entries = view.quotas.get(namespace)
        if not entries:
            continue
        workloads = [targets[k] for k in keys if k in targets]
        found = _namespace_quota(
            namespace,
            entries,
            # A pod that names no class is given the default one at admission: scoped
            # quotas see that class.
            {w.priority_class or default_class for w in workloads},
            workloads,
            view.pods.get(namespace, ()),
        )
        if found is not None:
            quotas[namespace] = found
    governed = {
        name: sum(len(by_namespace.get(ns, ())) for ns in set(spec.namespaces))
        for name, spec in policies
    }
    return Grants(priorities, terms, quotas, governed)
