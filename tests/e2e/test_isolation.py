"""Issue 10 on the test bed: a surge in a low-priority pool never takes what the
high-priority pool needs, and the short pool publishes the rate it can carry, by tier."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gpufleet_testbed import fleets
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.operator import OperatorProcess, wait_for
from gpufleet_testbed.testbed import Testbed

pytestmark = pytest.mark.e2e

# A GPU type of its own: pools that other tests leave on the shared test bed cannot use
# these nodes, so their placements cannot change what this module measures.
GPU = "E2E-ISO-GPU"

NS = "e2e-isolation"
PROVIDER = "e2e-iso-cloud"
GATEWAY = "e2e-isolation-throttle"  # the gateway ConfigMap (--gateway-config-map)


def _objects() -> list[dict[str, Any]]:
    def pool(name: str, **extra: Any) -> dict[str, Any]:
        return fleets.serving_pool(
            NS,
            name,
            gpu_types=[GPU],
            max_replicas=64,
            behavior=fleets.behavior(scale_down_window_seconds=5),
            **extra,
        )

    def deployment(name: str) -> dict[str, Any]:
        return fleets.deployment(
            NS,
            name,
            node_selector={fleets.PROVIDER_LABEL: PROVIDER},
            container="s",
            image="example.com/s:1",
            priority_class=fleets.ladder_class(NS, name),
        )

    h100 = fleets.node_pool(
        "h100", gpu_type=GPU, site="iso", max_nodes=8, watts_per_gpu=700, idle_watts_per_gpu=90
    )
    return [
        fleets.namespace(NS),
        *fleets.priority_ladder(NS, {"chat": 1000, "image": 1}),
        fleets.cloud_provider(PROVIDER, legal_entity="Iso GmbH", gpu_quota=16, node_pools=[h100]),
        deployment("chat"),
        deployment("image"),
        pool("chat"),
        pool(
            "image",
            arrival_rate_query="vector(20)",
            slo={"queueWaitSeconds": 10},
            serviceRates=[{"gpuType": GPU, "requestsPerMinute": 60}],
            tiers=[{"name": "paid", "sharePercent": 25}, {"name": "free", "sharePercent": 75}],
        ),
    ]


@pytest.fixture(scope="module")
def fleet(testbed: Testbed, kubectl: Kubectl) -> Iterator[OperatorProcess]:
    fleets.install_crds(kubectl)
    objects = _objects()
    fleets.apply(kubectl, objects)
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
        fleets.delete(kubectl, objects)
        kubectl.run("delete", "configmap", "-n", "gpufleet-system", GATEWAY, check=False)


def _status(kubectl: Kubectl, name: str) -> dict[str, Any]:
    return dict(kubectl.json("get", "servingpool", "-n", NS, name).get("status") or {})


def test_a_low_priority_surge_never_takes_the_high_priority_pools_replicas(
    fleet: OperatorProcess, testbed: Testbed, kubectl: Kubectl
) -> None:
    wait_for(
        lambda: _status(kubectl, "chat").get("desiredReplicas") == 6,
        30,
        "chat at 6 replicas",
        fleet,
    )
    testbed.exporter().set_queue(NS, "image", 400)  # wants 200 replicas; 16 GPUs exist
    throttle = wait_for(
        lambda: _status(kubectl, "image").get("throttle"), 30, "image throttle", fleet
    )
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
