"""Issue 10 on the test bed: preemption with drain. A low-priority pool fills the only node
pool; a high-priority pool surges with no node to come. The low pool's replicas on those
nodes leave through the Eviction API: while its PodDisruptionBudget allows no disruption
nothing is scaled away and the pool says why; once the budget allows it, they are evicted
and the high-priority pool gets its replicas."""

from __future__ import annotations

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
GPU = "E2E-PRE-GPU"

NS = "e2e-preemption"
PROVIDER = "e2e-pre-cloud"
PDB = "batch-budget"


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

    h100 = fleets.node_pool(
        "h100", gpu_type=GPU, site="pre", max_nodes=2, watts_per_gpu=700, idle_watts_per_gpu=90
    )
    return [
        fleets.namespace(NS),
        fleets.cloud_provider(PROVIDER, legal_entity="Pre GmbH", gpu_quota=16, node_pools=[h100]),
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
    fleets.install_crds(kubectl)
    objects = _objects()
    fleets.apply(kubectl, objects)
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
        fleets.delete(kubectl, objects)


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


def test_preempted_replicas_drain_only_as_far_as_their_disruption_budget_allows(
    fleet: OperatorProcess, testbed: Testbed, kubectl: Kubectl
) -> None:
    wait_for(
        lambda: (_deployment(kubectl, "batch").get("status") or {}).get("readyReplicas") == 16,
        60,
        "batch running 16 replicas on the two nodes",
        fleet,
    )
    before = _pods(kubectl, "batch")
    testbed.exporter().set_queue(NS, "chat", 8)  # 4 replicas; no node can come (maxNodes)
    blocked = wait_for(
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
    wait_for(
        lambda: _deployment(kubectl, "batch")["spec"]["replicas"] == 12,
        30,
        "batch drained by the 4 replicas chat takes",
        fleet,
    )
    wait_for(
        lambda: (_deployment(kubectl, "chat").get("status") or {}).get("readyReplicas") == 4,
        30,
        "chat running its 4 replicas on the freed GPUs",
        fleet,
    )
    assert len(before - _pods(kubectl, "batch")) >= 4
    wait_for(
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
