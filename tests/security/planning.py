"""Small fleets for the planner-level tenancy tests: pools in several namespaces, written as
users write them; priorities, terms and quotas given as the platform's objects give them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpufleet.api import parse_pool, parse_provider
from gpufleet.api.pool import ServingPoolSpec
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.api.tenancy import NamespaceTerms
from gpufleet.planner import (
    Fleet,
    NodePoolKey,
    NodePoolObservation,
    PoolKey,
    PoolObservation,
    Snapshot,
)
from gpufleet.planner.types import frozen_map

FAST = {
    "scaleUp": {"policies": [{"type": "Pods", "value": 1000, "periodSeconds": 15}]},
    "scaleDown": {"stabilizationWindowSeconds": 0},
}


def pool(**fields: Any) -> ServingPoolSpec:
    """An H100 pool sized at one replica per 10 queued requests, scaling at once."""
    spec: dict[str, Any] = {
        "scaleTargetRef": {"name": "model"},
        "gpuTypes": ["H100"],
        "queue": {"query": "q", "targetPerReplica": 10},
        "minReplicas": 0,
        "maxReplicas": 100,
        "behavior": FAST,
        **fields,
    }
    parsed = parse_pool(spec)
    assert parsed.value is not None, parsed.errors
    return parsed.value


def provider(
    *,
    max_nodes: int = 2,
    role: str = "Primary",
    legal_entity: str = "Cloud GmbH",
    jurisdiction: str = "DE",
    approved: bool = True,
    data_classes: tuple[str, ...] = ("Public", "Internal", "Confidential"),
    **fields: Any,
) -> CloudProviderSpec:
    """A cloud with one node pool of 8-GPU H100 nodes."""
    spec: dict[str, Any] = {
        "role": role,
        "subprocessor": {
            "legalEntity": legal_entity,
            "jurisdiction": jurisdiction,
            "approved": approved,
            "dataClasses": list(data_classes),
        },
        "driver": {"type": "Simulated"},
        "nodePools": [
            {
                "name": "h100",
                "gpuType": "H100",
                "gpusPerNode": 8,
                "wattsPerGpu": 700,
                "idleWattsPerGpu": 100,
                "hourlyPriceCents": 2000,
                "maxNodes": max_nodes,
                "bootSeconds": 300,
                "site": "fra1",
            }
        ],
        **fields,
    }
    parsed = parse_provider(spec)
    assert parsed.value is not None, parsed.errors
    return parsed.value


def fleet(
    pools: Mapping[PoolKey, ServingPoolSpec],
    providers: Mapping[str, CloudProviderSpec],
    *,
    priorities: Mapping[PoolKey, int] | None = None,
    terms: Mapping[str, NamespaceTerms] | None = None,
    namespace_gpus: Mapping[str, int] | None = None,
) -> Fleet:
    return Fleet(
        pools=frozen_map(dict(pools)),
        providers=frozen_map(dict(providers)),
        priorities=frozen_map(dict(priorities or {})),
        terms=frozen_map(dict(terms or {})),
        namespace_gpus=frozen_map(dict(namespace_gpus or {})),
    )


def snapshot(
    queues: Mapping[PoolKey, float],
    replicas: Mapping[PoolKey, Mapping[NodePoolKey, int]] | None = None,
    nodes: Mapping[NodePoolKey, int] | None = None,
) -> Snapshot:
    """Queues per pool, replicas running per pool and node pool, ready nodes per node pool."""
    replicas = replicas or {}
    return Snapshot(
        pools=frozen_map(
            {
                k: PoolObservation(queue_depth=q, replicas=frozen_map(dict(replicas.get(k, {}))))
                for k, q in queues.items()
            }
        ),
        node_pools=frozen_map(
            {
                k: NodePoolObservation(ready_nodes=n, target_nodes=n)
                for k, n in (nodes or {}).items()
            }
        ),
    )
