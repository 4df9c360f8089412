"""Read the users' manifests (YAML files or API objects) into the planner's Fleet.

As the operator does, a pool's priority comes from the platform's objects, never its spec:
the PriorityClass (scheduling.k8s.io/v1) its workload's pod template names, if a
TenantPolicy allows that class in the pool's namespace (api/tenancy.py); its namespace's
TenantPolicy terms and the GPUs its ResourceQuotas (`requests.nvidia.com/gpu`) allow.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gpufleet.api import parse_budget, parse_pool, parse_provider
from gpufleet.api.parse import SpecError, parse_tenant_policy
from gpufleet.api.pool import ServingPoolSpec
from gpufleet.api.power import PowerBudgetSpec
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.api.tenancy import (
    UNGOVERNED,
    PriorityClassInfo,
    TenantPolicySpec,
    merge_terms,
    resolve_priority,
)
from gpufleet.planner.types import Fleet, PoolKey, frozen_map


@dataclass(frozen=True)
class Rejected:
    """An object of ours that cannot be planned, and why: the basis of SpecValid=False."""

    kind: str
    namespace: str | None
    name: str
    errors: tuple[SpecError, ...]

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where}: " + "; ".join(map(str, self.errors))


def read_documents(path: Path) -> list[dict[str, Any]]:
    """Every YAML document in a file, or in the *.yaml/*.yml files of a directory (sorted)."""
    files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
    docs: list[dict[str, Any]] = []
    for file in files:
        docs.extend(
            d for d in yaml.safe_load_all(file.read_text(encoding="utf-8")) if isinstance(d, dict)
        )
    return docs


_WORKLOAD_KINDS = ("Deployment", "StatefulSet")
_GPU_QUOTA = "requests.nvidia.com/gpu"


def _gpus(value: Any) -> int | None:
    """A ResourceQuota's GPU figure (a count: GPUs are not divisible), or None if not one."""
    try:
        return int(str(value))
    except ValueError:
        return None


def build_fleet(
    objects: Iterable[dict[str, Any]], default_namespace: str = "default"
) -> tuple[Fleet, list[Rejected]]:
    """The valid objects of our kinds as a Fleet; the invalid ones as values, never raised."""
    pools: dict[PoolKey, ServingPoolSpec] = {}
    providers: dict[str, CloudProviderSpec] = {}
    budgets: dict[str, PowerBudgetSpec] = {}
    policies: list[tuple[str, TenantPolicySpec]] = []
    classes: dict[str, PriorityClassInfo] = {}
    pod_classes: dict[tuple[str, str, str], str | None] = {}  # (kind, namespace, name)
    namespace_gpus: dict[str, int] = {}
    rejected: list[Rejected] = []
    for obj in objects:
        kind = str(obj.get("kind", ""))
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        spec = obj.get("spec") or {}
        namespace = str(meta.get("namespace") or default_namespace)
        if kind == "ServingPool":
            parsed_pool = parse_pool(spec)
            if parsed_pool.value is None:
                rejected.append(Rejected(kind, namespace, name, parsed_pool.errors))
            else:
                pools[PoolKey(namespace, name)] = parsed_pool.value
        elif kind == "CloudProvider":
            parsed_provider = parse_provider(spec)
            if parsed_provider.value is None:
                rejected.append(Rejected(kind, None, name, parsed_provider.errors))
            else:
                providers[name] = parsed_provider.value
        elif kind == "PowerBudget":
            parsed_budget = parse_budget(spec)
            if parsed_budget.value is None:
                rejected.append(Rejected(kind, None, name, parsed_budget.errors))
            else:
                budgets[name] = parsed_budget.value
        elif kind == "TenantPolicy":
            parsed_policy = parse_tenant_policy(spec)
            if parsed_policy.value is None:
                rejected.append(Rejected(kind, None, name, parsed_policy.errors))
            else:
                policies.append((name, parsed_policy.value))
        elif kind == "PriorityClass":
            classes[name] = PriorityClassInfo(
                name, int(obj.get("value", 0)), bool(obj.get("globalDefault", False))
            )
        elif kind in _WORKLOAD_KINDS:
            template = (spec.get("template") or {}).get("spec") or {}
            pod_classes[(kind, namespace, name)] = template.get("priorityClassName") or None
        elif kind == "ResourceQuota":
            gpus = _gpus((spec.get("hard") or {}).get(_GPU_QUOTA))
            if gpus is not None:  # the tightest quota binds
                namespace_gpus[namespace] = min(gpus, namespace_gpus.get(namespace, gpus))
    terms = merge_terms(policies)
    priorities = {
        key: resolve_priority(
            pod_classes.get(
                (spec.scale_target_ref.kind.value, key.namespace, spec.scale_target_ref.name)
            ),
            classes,
            terms.get(key.namespace, UNGOVERNED),
        ).value
        for key, spec in pools.items()
    }
    fleet = Fleet(
        frozen_map(pools),
        frozen_map(providers),
        frozen_map(budgets),
        priorities=frozen_map(priorities),
        terms=frozen_map(terms),
        namespace_gpus=frozen_map(namespace_gpus),
    )
    return fleet, rejected
