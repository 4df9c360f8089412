"""Issue 10 on the test bed: a preempted pool that will grow back on a new node still yields
the existing GPUs at once. A low-priority pool fills two nodes; a high-priority pool surges
while a third node takes two minutes to boot. Four of the low pool's pods are evicted; it
recreates them only once the high-priority pool's pods are scheduled, so those run on the
GPUs they held long before the new node is up, and the four wait for it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gpufleet_testbed import fleets
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.operator import OperatorProcess, wait_for
from gpufleet_testbed.testbed import Testbed

pytestmark = pytest.mark.e2e

GPU = "E2E-MOVE-GPU"  # its own GPU type: other modules' pools cannot use these nodes
NS = "e2e-preemption-move"
PROVIDER = "e2e-move-cloud"
BOOT_SECONDS = 120


def _provider(boot_seconds: int) -> dict[str, Any]:
    h100 = fleets.node_pool(
        "h100",
        gpu_type=GPU,
        site="move",
        max_nodes=3,
        watts_per_gpu=700,
        idle_watts_per_gpu=90,
        boot_seconds=boot_seconds,
    )
    return fleets.cloud_provider(
        PROVIDER, legal_entity="Move GmbH", gpu_quota=24, node_pools=[h100]
    )


def _objects() -> list[dict[str, Any]]:
    def pool(name: str, priority: int, minimum: int) -> dict[str, Any]:
        return fleets.inference_pool(
            NS,
            name,
            gpu_types=[GPU],
            min_replicas=minimum,
            max_replicas=16,
            priority=priority,
            preemption={"drainTimeoutSeconds": 5},
            behavior=fleets.behavior(scale_down_window_seconds=0),
        )

    def deployment(name: str) -> dict[str, Any]:
        return fleets.deployment(
            NS,
            name,
            replicas=0,
            node_selector={fleets.PROVIDER_LABEL: PROVIDER},
            container="s",
            image="example.com/s:1",
        )

    return [
        fleets.namespace(NS),
        _provider(boot_seconds=1),
        deployment("chat"),
        deployment("batch"),
        pool("chat", 1000, 0),
        pool("batch", 1, 1),
    ]


@pytest.fixture(scope="module")
def fleet(testbed: Testbed, kubectl: Kubectl) -> Iterator[OperatorProcess]:
    fleets.install_crds(kubectl)
    objects = _objects()
    fleets.apply(kubectl, objects)
    exporter = testbed.exporter()
    exporter.set_queue(NS, "chat", 0)
    exporter.set_queue(NS, "batch", 32)  # 16 replicas: both nodes' GPUs
    process = OperatorProcess(testbed, testbed.directory / "logs" / "operator-move.log").start()
    try:
        yield process
    finally:
        process.stop()
        fleets.delete(kubectl, objects)


def _deployment(kubectl: Kubectl, name: str) -> dict[str, Any]:
    return dict(kubectl.json("get", "deployment", "-n", NS, name))


def _pending(kubectl: Kubectl, app: str) -> int:
    listed = kubectl.json("get", "pods", "-n", NS, "-l", f"app={app}")["items"]
    return sum(
        1
        for p in listed
        if not p["metadata"].get("deletionTimestamp") and not p["spec"].get("nodeName")
    )


def test_a_preempted_pool_moves_and_the_higher_one_does_not_wait_for_a_boot(
    fleet: OperatorProcess, testbed: Testbed, kubectl: Kubectl
) -> None:
    wait_for(
        lambda: (_deployment(kubectl, "batch").get("status") or {}).get("readyReplicas") == 16,
        60,
        "batch running 16 replicas on the two nodes",
        fleet,
    )
    fleets.apply(kubectl, [_provider(boot_seconds=BOOT_SECONDS)])  # new nodes now take 2 min
    testbed.exporter().set_queue(NS, "chat", 8)  # 4 replicas
    wait_for(
        lambda: (_deployment(kubectl, "chat").get("status") or {}).get("readyReplicas") == 4,
        45,  # well inside the boot: the GPUs came from batch, not from a new node
        "chat running 4 replicas on GPUs batch held",
        fleet,
    )
    wait_for(
        lambda: (
            _deployment(kubectl, "batch")["spec"]["replicas"] == 16
            and _pending(kubectl, "batch") == 4
        ),
        30,
        "batch's four moved replicas recreated, waiting for the new node",
        fleet,
    )
    assert (_deployment(kubectl, "batch").get("status") or {}).get("readyReplicas") == 12
    events = kubectl.json(
        "get", "events", "-n", NS, "--field-selector", "reason=Preempted,involvedObject.name=batch"
    )["items"]
    assert events and f"{NS}/chat" in events[0]["message"]
