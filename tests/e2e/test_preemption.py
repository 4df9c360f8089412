"""Issue 10 on the test bed: preemption with drain. A low-priority pool fills the only node
pool; a high-priority pool surges with no node to come. The low pool's replicas on those
nodes leave through the Eviction API: while its PodDisruptionBudget allows no disruption
nothing is scaled away and the pool says why; once the budget allows it, they are evicted
and the high-priority pool gets its replicas."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.operator import OperatorProcess
from gpufleet_testbed.testbed import Testbed

pytestmark = pytest.mark.e2e

# A GPU type of its own: pools that other tests leave on the shared test bed cannot use
# these nodes, so their placements cannot change what this module measures.
GPU = "E2E-PRE-GPU"

REPO = Path(__file__).resolve().parents[2]
NS = "e2e-preemption"
PROVIDER = "e2e-pre-cloud"
PDB = "batch-budget"
QUEUE = 'sum(inference_queue_depth{{namespace="{ns}",pool="{pool}"}})'


def _objects() -> list[dict[str, Any]]:
    def pool(name: str, priority: int, minimum: int) -> dict[str, Any]:
        return {
            "apiVersion": "gpufleet.io/v1alpha1",
            "kind": "InferencePool",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "scaleTargetRef": {"name": name},
                "gpuTypes": [GPU],
                "minReplicas": minimum,
                "maxReplicas": 16,
                "priority": priority,
                "modelLoadSeconds": 1,
                "queue": {"query": QUEUE.format(ns=NS, pool=name), "targetPerReplica": 2},
                "dataPolicy": {"allowedJurisdictions": ["DE"]},
                "preemption": {"drainTimeoutSeconds": 5},
                "behavior": {
                    "scaleUp": {"policies": [{"type": "Pods", "value": 100, "periodSeconds": 1}]},
                    "scaleDown": {"stabilizationWindowSeconds": 0},
                },
            },
        }

    def deployment(name: str) -> dict[str, Any]:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "nodeSelector": {"gpufleet.io/provider": PROVIDER},
                        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                        "containers": [
                            {
                                "name": "s",
                                "image": "example.com/s:1",
                                "resources": {"limits": {"nvidia.com/gpu": 1}},
                            }
                        ],
                    },
                },
            },
        }

    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {
            "apiVersion": "gpufleet.io/v1alpha1",
            "kind": "CloudProvider",
            "metadata": {"name": PROVIDER},
            "spec": {
                "subprocessor": {
                    "legalEntity": "Pre GmbH",
                    "jurisdiction": "DE",
                    "approved": True,
                    "dataClasses": ["Internal"],
                },
                "driver": {"type": "Simulated"},
                "gpuQuota": 16,
                "nodePools": [
                    {
                        "name": "h100",
                        "gpuType": GPU,
                        "gpusPerNode": 8,
                        "wattsPerGpu": 700,
                        "idleWattsPerGpu": 90,
                        "maxNodes": 2,
                        "bootSeconds": 1,
                        "site": "pre",
                    }
                ],
            },
        },
        deployment("chat"),
        deployment("batch"),
        pool("chat", 1000, 0),
        pool("batch", 1, 1),
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": PDB, "namespace": NS},
            "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "batch"}}},
        },
    ]


@pytest.fixture(scope="module")
def fleet(testbed: Testbed, kubectl: Kubectl) -> Iterator[OperatorProcess]:
    kubectl.run("apply", "--server-side", "-f", str(REPO / "crds"))
    kubectl.run("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    kubectl.run("create", "namespace", "gpufleet-system", check=False)
    kubectl.run(
        "apply",
        "--server-side",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": _objects()}),
    )
    exporter = testbed.exporter()
    exporter.set_queue(NS, "chat", 0)
    exporter.set_queue(NS, "batch", 32)  # 16 replicas: every GPU the quota allows
    process = OperatorProcess(
        testbed, testbed.directory / "logs" / "operator-preemption.log"
    ).start()
    try:
        yield process
    finally:
        process.stop()
        kubectl.run("delete", "namespace", NS, "--wait=false", check=False)
        kubectl.run("delete", "cloudprovider", PROVIDER, "--wait=false", check=False)


def _status(kubectl: Kubectl, name: str) -> dict[str, Any]:
    return dict(kubectl.json("get", "inferencepool", "-n", NS, name).get("status") or {})


def _condition(kubectl: Kubectl, name: str, kind: str) -> dict[str, Any]:
    conditions = _status(kubectl, name).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), {})


def _deployment(kubectl: Kubectl, name: str) -> dict[str, Any]:
    return dict(kubectl.json("get", "deployment", "-n", NS, name))


def _pods(kubectl: Kubectl, app: str) -> set[str]:
    listed = kubectl.json("get", "pods", "-n", NS, "-l", f"app={app}")["items"]
    return {p["metadata"]["name"] for p in listed if not p["metadata"].get("deletionTimestamp")}


def _wait(probe: Any, timeout: float, what: str, fleet: OperatorProcess) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{fleet.tail(30)}")


def test_preempted_replicas_drain_only_as_far_as_their_disruption_budget_allows(
    fleet: OperatorProcess, testbed: Testbed, kubectl: Kubectl
) -> None:
    _wait(
        lambda: (_deployment(kubectl, "batch").get("status") or {}).get("readyReplicas") == 16,
        60,
        "batch running 16 replicas on the two nodes",
        fleet,
    )
    before = _pods(kubectl, "batch")
    testbed.exporter().set_queue(NS, "chat", 8)  # 4 replicas; no node can come (maxNodes)
    blocked = _wait(
        lambda: (
            (c := _condition(kubectl, "batch", "Preempted")).get("reason")
            == "DrainBlockedByDisruptionBudget"
            and c
        ),
        30,
        "batch's drain blocked by its disruption budget",
        fleet,
    )
    assert blocked["status"] == "True"
    assert PDB in blocked["message"]
    assert _status(kubectl, "chat").get("desiredReplicas") == 4
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:  # the budget holds: nothing is scaled away
        assert _deployment(kubectl, "batch")["spec"]["replicas"] == 16
        assert _pods(kubectl, "batch") == before
        time.sleep(1)

    kubectl.run(
        "patch", "pdb", "-n", NS, PDB, "--type", "merge", "-p", '{"spec":{"maxUnavailable":4}}'
    )
    _wait(
        lambda: _deployment(kubectl, "batch")["spec"]["replicas"] == 12,
        30,
        "batch drained by the 4 replicas chat takes",
        fleet,
    )
    _wait(
        lambda: (_deployment(kubectl, "chat").get("status") or {}).get("readyReplicas") == 4,
        30,
        "chat running its 4 replicas on the freed GPUs",
        fleet,
    )
    assert len(before - _pods(kubectl, "batch")) >= 4
    _wait(
        lambda: _condition(kubectl, "batch", "Preempted").get("reason") == "NotPreempted",
        30,
        "batch no longer preempted",
        fleet,
    )
    events = kubectl.json(
        "get", "events", "-n", NS, "--field-selector", "reason=Preempted,involvedObject.name=batch"
    )["items"]
    assert events and f"{NS}/chat" in events[0]["message"]
    assert _deployment(kubectl, "batch")["spec"]["replicas"] == 12
