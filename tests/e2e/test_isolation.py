"""Issue 10 on the test bed: a surge in a low-priority pool never takes what the
high-priority pool needs, and the short pool publishes the rate it can carry, by tier."""

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
GPU = "E2E-ISO-GPU"

REPO = Path(__file__).resolve().parents[2]
NS = "e2e-isolation"
PROVIDER = "e2e-iso-cloud"
GATEWAY = "e2e-isolation-throttle"  # the gateway ConfigMap (--gateway-config-map)


def _objects() -> list[dict[str, Any]]:
    behavior = {
        "scaleUp": {"policies": [{"type": "Pods", "value": 100, "periodSeconds": 1}]},
        "scaleDown": {"stabilizationWindowSeconds": 5},
    }

    def pool(name: str, priority: int, **extra: Any) -> dict[str, Any]:
        return {
            "apiVersion": "gpufleet.io/v1alpha1",
            "kind": "InferencePool",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "scaleTargetRef": {"name": name},
                "gpuTypes": [GPU],
                "minReplicas": 1,
                "maxReplicas": 64,
                "priority": priority,
                "modelLoadSeconds": 1,
                "dataPolicy": {"allowedJurisdictions": ["DE"]},
                "behavior": behavior,
                **extra,
            },
        }

    def deployment(name: str) -> dict[str, Any]:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "replicas": 1,
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

    queue = 'sum(inference_queue_depth{{namespace="{ns}",pool="{pool}"}})'
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {
            "apiVersion": "gpufleet.io/v1alpha1",
            "kind": "CloudProvider",
            "metadata": {"name": PROVIDER},
            "spec": {
                "subprocessor": {
                    "legalEntity": "Iso GmbH",
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
                        "maxNodes": 8,
                        "bootSeconds": 1,
                        "site": "iso",
                    }
                ],
            },
        },
        deployment("chat"),
        deployment("image"),
        pool(
            "chat", 1000, queue={"query": queue.format(ns=NS, pool="chat"), "targetPerReplica": 2}
        ),
        pool(
            "image",
            1,
            queue={
                "query": queue.format(ns=NS, pool="image"),
                "targetPerReplica": 2,
                "arrivalRateQuery": "vector(20)",
            },
            slo={"queueWaitSeconds": 10},
            serviceRates=[{"gpuType": GPU, "requestsPerMinute": 60}],
            tiers=[{"name": "paid", "sharePercent": 25}, {"name": "free", "sharePercent": 75}],
        ),
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
    exporter.set_queue(NS, "chat", 12)  # 6 replicas
    exporter.set_queue(NS, "image", 0)
    process = OperatorProcess(
        testbed,
        testbed.directory / "logs" / "operator-isolation.log",
        extra_args=("--gateway-config-map", GATEWAY),
    ).start()
    try:
        yield process
    finally:
        process.stop()
        kubectl.run("delete", "namespace", NS, "--wait=false", check=False)
        kubectl.run("delete", "cloudprovider", PROVIDER, "--wait=false", check=False)
        kubectl.run("delete", "configmap", "-n", "gpufleet-system", GATEWAY, check=False)


def _status(kubectl: Kubectl, name: str) -> dict[str, Any]:
    return dict(kubectl.json("get", "inferencepool", "-n", NS, name).get("status") or {})


def _wait(probe: Any, timeout: float, what: str, fleet: OperatorProcess) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{fleet.tail(30)}")


def test_a_low_priority_surge_never_takes_the_high_priority_pools_replicas(
    fleet: OperatorProcess, testbed: Testbed, kubectl: Kubectl
) -> None:
    _wait(
        lambda: _status(kubectl, "chat").get("desiredReplicas") == 6,
        30,
        "chat at 6 replicas",
        fleet,
    )
    testbed.exporter().set_queue(NS, "image", 400)  # wants 200 replicas; 16 GPUs exist
    throttle = _wait(lambda: _status(kubectl, "image").get("throttle"), 30, "image throttle", fleet)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # through the surge, chat keeps all it needs
        assert _status(kubectl, "chat").get("desiredReplicas") == 6
        assert kubectl.json("get", "deployment", "-n", NS, "chat")["spec"]["replicas"] == 6
        time.sleep(1)
    image = _status(kubectl, "image")
    throttle = image["throttle"]  # with the replicas serving (while they start it is lower)
    assert image["desiredReplicas"] == 10  # 16 GPUs less chat's 6
    assert throttle["demandRequestsPerMinute"] == 1200
    assert 0 < throttle["sustainableRequestsPerMinute"] < 600
    paid, free = throttle["tiers"]
    assert (paid["name"], free["name"]) == ("paid", "free")
    assert paid["allowedRequestsPerMinute"] == paid["demandRequestsPerMinute"] == 300
    assert free["allowedRequestsPerMinute"] < free["demandRequestsPerMinute"]
    condition = next(c for c in image["conditions"] if c["type"] == "Throttled")
    assert condition["status"] == "True"
    assert "tiers cut: free" in condition["message"]
    # The gateway ConfigMap carries the same figures, and is not rewritten while they hold.
    gateway = kubectl.json("get", "configmap", "-n", "gpufleet-system", GATEWAY)
    published = json.loads(gateway["data"][f"{NS}.image.json"])
    assert published["throttled"] is True and published["message"] == condition["message"]
    status = _status(kubectl, "image")["throttle"]
    for key in ("sustainableRequestsPerMinute", "demandRequestsPerMinute", "tiers"):
        assert published[key] == status[key]
    assert json.loads(gateway["data"][f"{NS}.chat.json"])["throttled"] is False
    assert gateway["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gpufleet"
    version = gateway["metadata"]["resourceVersion"]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # three ticks with the same plan: no write
        again = kubectl.json("get", "configmap", "-n", "gpufleet-system", GATEWAY)
        assert again["metadata"]["resourceVersion"] == version
        time.sleep(0.5)
