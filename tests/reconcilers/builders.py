"""Specs the reconciler tests share."""

from __future__ import annotations

from gpufleet.api import CloudProviderSpec, ServingPoolSpec, parse_pool, parse_provider
from gpufleet_testbed import fleets


def minimal_pool(target: str = "chat") -> ServingPoolSpec:
    """A pool with only the required fields: one H100 replica per 4 queued, at most 10."""
    parsed = parse_pool(
        {
            "scaleTargetRef": {"name": target},
            "gpuTypes": ["H100"],
            "queue": {"query": "q", "targetPerReplica": 4},
            "maxReplicas": 10,
        }
    )
    assert parsed.value is not None, parsed.errors
    return parsed.value


def simulated_provider(name: str = "a", max_nodes: int = 2) -> CloudProviderSpec:
    """A simulated cloud with one pool of 8-H100 nodes at site fra1 (300 s to boot)."""
    h100 = fleets.node_pool(
        "h100",
        gpu_type="H100",
        site="fra1",
        max_nodes=max_nodes,
        watts_per_gpu=700,
        idle_watts_per_gpu=100,
        boot_seconds=300,  # the API's default
    )
    parsed = parse_provider(
        fleets.cloud_provider(name, legal_entity="Cloud GmbH", node_pools=[h100])["spec"]
    )
    assert parsed.value is not None, parsed.errors
    return parsed.value
