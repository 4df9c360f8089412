"""Fleet documents the simulator tests share, written as users write them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpufleet_testbed import fleets


def h100_node_pool(**fields: Any) -> dict[str, Any]:
    """A node pool of 1-GPU H100 nodes at site s1; `fields` add or replace fields."""
    return {
        "name": "h100",
        "gpuType": "H100",
        "gpusPerNode": 1,
        "wattsPerGpu": 700,
        "idleWattsPerGpu": 90,
        "site": "s1",
        **fields,
    }


def provider_doc(node_pools: list[dict[str, Any]]) -> dict[str, Any]:
    """CloudProvider `c`: a simulated, approved German cloud with these node pools."""
    return {
        "apiVersion": "gpufleet.io/v1alpha1",
        "kind": "CloudProvider",
        "metadata": {"name": "c"},
        "spec": {
            "subprocessor": {
                "legalEntity": "E",
                "jurisdiction": "DE",
                "approved": True,
                "dataClasses": ["Internal"],
            },
            "driver": {"type": "Simulated"},
            "nodePools": node_pools,
        },
    }


def priorities(namespace: str, values: Mapping[str, int]) -> list[dict[str, Any]]:
    """What gives the pools named in `values` their priorities, as on a cluster: a
    PriorityClass each, a TenantPolicy letting `namespace` use them, and each pool's
    Deployment (its scaleTargetRef, the pool's name) running its pods with its class."""
    return [
        *fleets.priority_ladder(namespace, values),
        *(
            fleets.deployment(namespace, pool, priority_class=fleets.ladder_class(namespace, pool))
            for pool in values
        ),
    ]
