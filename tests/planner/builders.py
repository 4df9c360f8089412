"""Small fleets for planner tests, built from the same models users write."""

from __future__ import annotations

from typing import Any

from gpufleet.api import parse_budget, parse_pool, parse_provider
from gpufleet.api.pool import ServingPoolSpec
from gpufleet.api.power import PowerBudgetSpec
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.planner import (
    Fleet,
    NodePoolKey,
    NodePoolObservation,
    PlannerState,
    PoolKey,
    PoolObservation,
    Snapshot,
)
from gpufleet.planner.types import frozen_map

NS = "inference"


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def pool(**overrides: Any) -> ServingPoolSpec:
    base: dict[str, Any] = {
        "scaleTargetRef": {"name": "model"},
        "gpuTypes": ["H100"],
        "queue": {"query": "q", "targetPerReplica": 10},
        "minReplicas": 1,
        "maxReplicas": 100,
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
        "dataPolicy": {"allowedJurisdictions": ["EU"], "dataClass": "Internal"},
    }
    parsed = parse_pool(merge(base, overrides))
    assert parsed.value is not None, parsed.errors
    return parsed.value


def node_pool(name: str = "h100", **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "gpuType": "H100",
        "gpusPerNode": 8,
        "wattsPerGpu": 700,
        "idleWattsPerGpu": 100,
        "nodeOverheadWatts": 1000,
        "hourlyPriceCents": 9800,
        "maxNodes": 10,
        "bootSeconds": 300,
        "site": "fra1",
    }
    return merge(base, overrides)


def provider(
    role: str = "Primary",
    jurisdiction: str = "DE",
    approved: bool = True,
    node_pools: list[dict[str, Any]] | None = None,
    **overrides: Any,
) -> CloudProviderSpec:
    base: dict[str, Any] = {
        "role": role,
        "subprocessor": {
            "legalEntity": "Cloud GmbH",
            "jurisdiction": jurisdiction,
            "approved": approved,
            "dataClasses": ["Public", "Internal"],
        },
        "driver": {"type": "Simulated"},
        "nodePools": node_pools or [node_pool()],
    }
    parsed = parse_provider(merge(base, overrides))
    assert parsed.value is not None, parsed.errors
    return parsed.value


def budget(cap_kilowatts: int, **overrides: Any) -> PowerBudgetSpec:
    parsed = parse_budget(merge({"capKilowatts": cap_kilowatts, "headroomPercent": 0}, overrides))
    assert parsed.value is not None, parsed.errors
    return parsed.value


def key(name: str = "chat") -> PoolKey:
    return PoolKey(NS, name)


def fleet(
    pools: dict[str, ServingPoolSpec],
    providers: dict[str, CloudProviderSpec],
    budgets: dict[str, PowerBudgetSpec] | None = None,
    priorities: dict[str, int] | None = None,
) -> Fleet:
    """`priorities`: by pool name, as the platform's PriorityClasses give them (absent: 0)."""
    return Fleet(
        pools=frozen_map({key(n): p for n, p in pools.items()}),
        providers=frozen_map(providers),
        budgets=frozen_map(budgets or {}),
        priorities=frozen_map({key(n): v for n, v in (priorities or {}).items()}),
    )


def observe(
    queues: dict[str, float | None],
    replicas: dict[str, dict[tuple[str, str], int]] | None = None,
    nodes: dict[tuple[str, str], NodePoolObservation] | None = None,
    arrivals: dict[str, float] | None = None,
    budget_watts: dict[str, float | None] | None = None,
    unreachable: frozenset[str] = frozenset(),
    watts: dict[str, dict[str, float]] | None = None,
) -> Snapshot:
    """`watts`: per pool, the measured draw of one busy GPU by GPU type."""
    replicas = replicas or {}
    arrivals = arrivals or {}
    watts = watts or {}
    return Snapshot(
        pools=frozen_map(
            {
                key(name): PoolObservation(
                    queue_depth=queue,
                    arrival_rate=arrivals.get(name),
                    replicas=frozen_map(
                        {NodePoolKey(*k): v for k, v in replicas.get(name, {}).items()}
                    ),
                    watts_per_gpu=frozen_map(watts.get(name, {})),
                )
                for name, queue in queues.items()
            }
        ),
        node_pools=frozen_map({NodePoolKey(*k): v for k, v in (nodes or {}).items()}),
        budget_watts=frozen_map(budget_watts or {}),
        unreachable_providers=unreachable,
    )


EMPTY = PlannerState()
