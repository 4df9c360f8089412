"""The Node a simulated launch creates: pool labels, taints and GPU capacity."""

from __future__ import annotations

from typing import Any

from gpufleet.api.provider import NodePool
from gpufleet.drivers.simulated import node_manifest
from gpufleet.drivers.simulated_state import Pending

POOL = NodePool.model_validate(
    {
        "name": "h100-fra1",
        "gpuType": "H100",
        "gpusPerNode": 8,
        "wattsPerGpu": 700,
        "idleWattsPerGpu": 90,
        "maxNodes": 4,
        "site": "fra1",
        "labels": [
            {"key": "team", "value": "chat"},
            {"key": "gpufleet.io/provider", "value": "spoofed"},
        ],
        "taints": [
            {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
            {"key": "dedicated", "effect": "NoExecute"},
        ],
    }
)


def manifest() -> dict[str, Any]:
    return node_manifest("gpu-de", POOL, Pending("gpu-de-h100-fra1-3", 0.0, "act-1"))


def test_node_carries_pool_labels_and_ours_win() -> None:
    labels = manifest()["metadata"]["labels"]
    assert labels["team"] == "chat"
    assert labels["gpufleet.io/provider"] == "gpu-de"
    assert labels["gpufleet.io/node-pool"] == "h100-fra1"
    assert labels["gpufleet.io/gpu-type"] == "H100"
    assert labels["nvidia.com/gpu.present"] == "true"
    assert labels["nvidia.com/gpu.count"] == "8"


def test_node_carries_pool_taints() -> None:
    assert manifest()["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
        {"key": "dedicated", "effect": "NoExecute"},
    ]


def test_node_has_gpu_capacity_and_is_managed_by_kwok() -> None:
    node = manifest()
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert node["metadata"]["annotations"]["gpufleet.io/ordinal"] == "3"
    assert node["metadata"]["annotations"]["gpufleet.io/action-id"] == "act-1"
