"""GPU pods on kwok nodes: the real scheduler counts nvidia.com/gpu."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.nodes import GPU_RESOURCE, GPU_TAINT
from gpufleet_testbed.polling import until

pytestmark = pytest.mark.e2e

NODE_LABEL = "gpufleet.io/e2e-node"


def gpu_pod(name: str, node_label: str, *, gpus: int = 1, tolerate: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {
        # Pins the pod to the test's own node, whatever else the cluster has.
        "nodeSelector": {NODE_LABEL: node_label},
        "containers": [
            {
                "name": "server",
                "image": "registry.invalid/inference-server:test",
                "resources": {"limits": {GPU_RESOURCE: str(gpus)}},
            }
        ],
    }
    if tolerate:
        spec["tolerations"] = [
            {"key": GPU_TAINT.key, "operator": "Exists", "effect": GPU_TAINT.effect}
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def _pod(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    pod: dict[str, Any] = kubectl.json("get", "pod", name, "-n", namespace)
    return pod


def wait_running(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        pod = _pod(kubectl, namespace, name)
        return pod if pod.get("status", {}).get("phase") == "Running" else None

    return until(running, timeout=30, interval=0.2, what=f"pod {name} Running")


def wait_unschedulable(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    """Waits for the scheduler's verdict, a positive signal instead of a sleep."""

    def unschedulable() -> dict[str, Any] | None:
        pod = _pod(kubectl, namespace, name)
        for condition in pod.get("status", {}).get("conditions", []):
            if condition["type"] == "PodScheduled" and condition.get("reason") == "Unschedulable":
                found: dict[str, Any] = condition
                return found
        return None

    condition = until(unschedulable, timeout=30, interval=0.2, what=f"pod {name} Unschedulable")
    assert _pod(kubectl, namespace, name)["status"]["phase"] == "Pending"
    return condition


def test_gpu_pod_runs_on_kwok_gpu_node(
    kubectl: Kubectl, namespace: str, gpu_node: Callable[..., dict[str, Any]]
) -> None:
    label = uuid.uuid4().hex[:8]
    node = gpu_node(gpus=2, labels={NODE_LABEL: label})
    assert node["status"]["allocatable"][GPU_RESOURCE] == "2"
    kubectl.apply(gpu_pod("gpu-pod", label), "-n", namespace)

    pod = wait_running(kubectl, namespace, "gpu-pod")

    assert pod["spec"]["nodeName"] == node["metadata"]["name"]
    assert pod["status"]["containerStatuses"][0]["ready"] is True


def test_gpu_pod_stays_pending_without_a_free_gpu(
    kubectl: Kubectl, namespace: str, gpu_node: Callable[..., dict[str, Any]]
) -> None:
    label = uuid.uuid4().hex[:8]
    gpu_node(gpus=1, labels={NODE_LABEL: label})
    kubectl.apply(gpu_pod("takes-the-gpu", label), "-n", namespace)
    wait_running(kubectl, namespace, "takes-the-gpu")

    kubectl.apply(gpu_pod("waits-for-a-gpu", label), "-n", namespace)
    condition = wait_unschedulable(kubectl, namespace, "waits-for-a-gpu")

    assert f"Insufficient {GPU_RESOURCE}" in condition["message"]


def test_gpu_taint_keeps_pods_without_toleration_off(
    kubectl: Kubectl, namespace: str, gpu_node: Callable[..., dict[str, Any]]
) -> None:
    label = uuid.uuid4().hex[:8]
    gpu_node(gpus=1, labels={NODE_LABEL: label})
    kubectl.apply(gpu_pod("no-toleration", label, tolerate=False), "-n", namespace)

    condition = wait_unschedulable(kubectl, namespace, "no-toleration")

    assert "untolerated taint" in condition["message"]


def test_deployment_creates_running_pods(
    kubectl: Kubectl, namespace: str, gpu_node: Callable[..., dict[str, Any]]
) -> None:
    """The controller manager works: Deployment -> ReplicaSet -> Pods."""
    label = uuid.uuid4().hex[:8]
    gpu_node(gpus=4, labels={NODE_LABEL: label})
    template = gpu_pod("unused", label)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "inference"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "inference"}},
            "template": {"metadata": {"labels": {"app": "inference"}}, "spec": template["spec"]},
        },
    }
    kubectl.apply(deployment, "-n", namespace)

    def available() -> bool:
        status = kubectl.json("get", "deployment", "inference", "-n", namespace).get("status", {})
        return bool(status.get("availableReplicas") == 3)

    until(available, timeout=60, interval=0.3, what="3 available replicas")
