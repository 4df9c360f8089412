"""Specs the reconciler tests share."""

from __future__ import annotations

from gpufleet.api import ServingPoolSpec, parse_pool


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
