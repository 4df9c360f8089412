"""Fake GPU nodes that kwok keeps Ready.

A node is an ordinary Node object with kwok's annotation; kwok only manages
nodes that carry it, so real nodes (for a borrowed cluster) are never touched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.polling import until

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
KWOK_SELECTOR = f"{KWOK_ANNOTATION}={KWOK_ANNOTATION_VALUE}"
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"

    def as_dict(self) -> dict[str, str]:
        taint = {"key": self.key, "effect": self.effect}
        if self.value:
            taint["value"] = self.value
        return taint


# The GPU operator's device plugin setup commonly taints GPU nodes like this,
# so workloads must opt in with a toleration.
GPU_TAINT = Taint(GPU_RESOURCE, "present", "NoSchedule")


@dataclass(frozen=True)
class GpuNode:
    name: str
    gpus: int = 8
    gpu_product: str = DEFAULT_GPU_PRODUCT
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[Taint] = (GPU_TAINT,)
    cpu: str = "96"
    memory: str = "1Ti"
    pods: str = "110"
    # None: allocatable equals capacity. Set to model reserved resources.
    allocatable: Mapping[str, str] | None = None

    def capacity(self) -> dict[str, str]:
        return {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": self.pods,
            GPU_RESOURCE: str(self.gpus),
        }

    def manifest(self) -> dict[str, Any]:
        capacity = self.capacity()
        allocatable = {**capacity, **(self.allocatable or {})}
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
            # GPU feature discovery's names, which node selectors use.
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": self.gpu_product,
            "nvidia.com/gpu.count": str(self.gpus),
            **self.labels,
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE},
            },
            "spec": {"taints": [t.as_dict() for t in self.taints]},
            # Nodes accept status on create: this is how GPU capacity appears
            # without a device plugin; kwok's stage then keeps it.
            "status": {"capacity": capacity, "allocatable": allocatable},
        }


def _is_ready(node: Mapping[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def create_gpu_node(
    kubectl: Kubectl, node: GpuNode, *, wait_ready: float | None = 30.0
) -> dict[str, Any]:
    """Creates (or replaces) a fake GPU node; waits until kwok marks it Ready."""
    kubectl.run("delete", "node", node.name, "--ignore-not-found", "--wait=true")
    kubectl.run("create", "-f", "-", stdin=json.dumps(node.manifest()))
    if wait_ready is None:
        return dict(kubectl.json("get", "node", node.name))

    def ready() -> dict[str, Any] | None:
        current: dict[str, Any] = kubectl.json("get", "node", node.name)
        return current if _is_ready(current) else None

    return until(ready, timeout=wait_ready, interval=0.2, what=f"node {node.name} Ready")


def delete_node(kubectl: Kubectl, name: str) -> None:
    kubectl.run("delete", "node", name, "--ignore-not-found", "--wait=true")
