"""Fleet documents the simulator tests share, written as users write them."""

from __future__ import annotations

from typing import Any


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
