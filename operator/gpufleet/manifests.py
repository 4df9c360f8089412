"""Read the users' manifests (YAML files or API objects) into the planner's Fleet."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gpufleet.api import parse_budget, parse_pool, parse_provider
from gpufleet.api.parse import SpecError
from gpufleet.api.pool import ServingPoolSpec
from gpufleet.api.power import PowerBudgetSpec
from gpufleet.api.provider import CloudProviderSpec
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


def build_fleet(
    objects: Iterable[dict[str, Any]], default_namespace: str = "default"
) -> tuple[Fleet, list[Rejected]]:
    """The valid objects of our kinds as a Fleet; the invalid ones as values, never raised."""
    pools: dict[PoolKey, ServingPoolSpec] = {}
    providers: dict[str, CloudProviderSpec] = {}
    budgets: dict[str, PowerBudgetSpec] = {}
    rejected: list[Rejected] = []
    for obj in objects:
        kind = str(obj.get("kind", ""))
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        spec = obj.get("spec") or {}
        if kind == "ServingPool":
            namespace = str(meta.get("namespace") or default_namespace)
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
    return Fleet(frozen_map(pools), frozen_map(providers), frozen_map(budgets)), rejected
