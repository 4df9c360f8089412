"""Issue 10 on the test bed: preemption with drain. A low-priority pool (batch) fills its
node pool; a high-priority pool (chat) surges.

- With no node to come, batch's replicas on those nodes leave through the Eviction API:
  while its PodDisruptionBudget allows no disruption nothing is scaled away and the pool
  says why; once the budget allows it, they are evicted and chat gets its replicas.
- With a new node two minutes away, batch still yields the existing GPUs at once: four of
  its pods are evicted and recreated only once chat's pods are scheduled, so chat runs long
  before that node is up and the four wait for it (a move).

Each test has its own GPU type, provider and namespace, and its own operator: pools that
other tests leave on the shared test bed cannot use these nodes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from gpufleet.reconcilers.intent import record_of
from gpufleet_testbed import fleets
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.operator import OperatorProcess, wait_for
from gpufleet_testbed.testbed import Testbed

pytestmark = pytest.mark.e2e

NS, PROVIDER, GPU, PDB = "e2e-preemption", "e2e-pre-cloud", "E2E-PRE-GPU", "batch-budget"
MOVE_NS, MOVE_PROVIDER, MOVE_GPU = "e2e-preemption-move", "e2e-move-cloud", "E2E-MOVE-GPU"
MOVE_BOOT_SECONDS = 120


def _chat_and_batch(namespace: str, provider: str, gpu: str) -> list[dict[str, Any]]:
    """chat (priority 1000) and batch (priority 1), each a pool with its Deployment."""

    def pool(name: str, minimum: int) -> dict[str, Any]:
        return fleets.serving_pool(
            namespace,
            name,
            gpu_types=[gpu],
            min_replicas=minimum,
            max_replicas=16,
            preemption={"drainTimeoutSeconds": 5},
            behavior=fleets.behavior(scale_down_window_seconds=0),
        )

    def deployment(name: str) -> dict[str, Any]:
        return fleets.deployment(
            namespace,
            name,
            replicas=0,
            node_selector={fleets.PROVIDER_LABEL: provider},
            container="s",
            image="example.com/s:1",
            priority_class=fleets.ladder_class(namespace, name),
        )

    return [
        fleets.namespace(namespace),
        *fleets.priority_ladder(namespace, {"chat": 1000, "batch": 1}),
        deployment("chat"),
        deployment("batch"),
        pool("chat", 0),
        pool("batch", 1),
    ]


def _objects() -> list[dict[str, Any]]:
    h100 = fleets.node_pool(
        "h100", gpu_type=GPU, site="pre", max_nodes=2, watts_per_gpu=700, idle_watts_per_gpu=90
    )
    provider = fleets.cloud_provider(
        PROVIDER, legal_entity="Pre GmbH", gpu_quota=16, node_pools=[h100]
    )
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": PDB, "namespace": NS},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "batch"}}},
    }
    namespace, *rest = _chat_and_batch(NS, PROVIDER, GPU)
    return [namespace, provider, *rest, budget]


def _move_provider(boot_seconds: int) -> dict[str, Any]:
    h100 = fleets.node_pool(
        "h100",
        gpu_type=MOVE_GPU,
        site="move",
        max_nodes=3,
        watts_per_gpu=700,
        idle_watts_per_gpu=90,
        boot_seconds=boot_seconds,
    )
    return fleets.cloud_provider(
        MOVE_PROVIDER, legal_entity="Move GmbH", gpu_quota=24, node_pools=[h100]
    )


def _run(
    testbed: Testbed, kubectl: Kubectl, namespace: str, objects: list[dict[str, Any]], log: str
) -> Iterator[OperatorProcess]:
    """The objects applied, batch asked for 16 replicas (every GPU), one operator."""
    fleets.install_crds(kubectl)
    fleets.apply(kubectl, objects)
    exporter = testbed.exporter()
    exporter.set_queue(namespace, "chat", 0)
    exporter.set_queue(namespace, "batch", 32)
    process = OperatorProcess(testbed, testbed.directory / "logs" / log).start()
    try:
        yield process
    finally:
        process.stop()
        fleets.delete(kubectl, objects)


# Function-scoped: one operator at a time acts on the test bed.
@pytest.fixture
def fleet(testbed: Testbed, kubectl: Kubectl) -> Iterator[OperatorProcess]:
    yield from _run(testbed, kubectl, NS, _objects(), "operator-preemption.log")


@pytest.fixture
def moving(testbed: Testbed, kubectl: Kubectl) -> Iterator[OperatorProcess]:
    namespace, *rest = _chat_and_batch(MOVE_NS, MOVE_PROVIDER, MOVE_GPU)
    objects = [namespace, _move_provider(boot_seconds=1), *rest]
    yield from _run(testbed, kubectl, MOVE_NS, objects, "operator-move.log")


def _status(kubectl: Kubectl, name: str) -> dict[str, Any]:
    return dict(kubectl.json("get", "servingpool", "-n", NS, name).get("status") or {})


def _condition(kubectl: Kubectl, name: str, kind: str) -> dict[str, Any]:
    conditions = _status(kubectl, name).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), {})


def _deployment(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return dict(kubectl.json("get", "deployment", "-n", namespace, name))


def _live_pods(kubectl: Kubectl, namespace: str, app: str) -> list[dict[str, Any]]:
    listed = kubectl.json("get", "pods", "-n", namespace, "-l", f"app={app}")["items"]
    return [p for p in listed if not p["metadata"].get("deletionTimestamp")]


def _pods(kubectl: Kubectl, namespace: str, app: str) -> set[str]:
    return {p["metadata"]["name"] for p in _live_pods(kubectl, namespace, app)}


def _pending(kubectl: Kubectl, namespace: str, app: str) -> int:
    return sum(1 for p in _live_pods(kubectl, namespace, app) if not p["spec"].get("nodeName"))


def test_preempted_replicas_drain_only_as_far_as_their_disruption_budget_allows(
    fleet: OperatorProcess, testbed: Testbed, kubectl: Kubectl
) -> None:
    wait_for(
        lambda: (_deployment(kubectl, NS, "batch").get("status") or {}).get("readyReplicas") == 16,
        60,
        "batch running 16 replicas on the two nodes",
        fleet,
    )
    before = _pods(kubectl, NS, "batch")
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
        assert _deployment(kubectl, NS, "batch")["spec"]["replicas"] == 16
        assert _pods(kubectl, NS, "batch") == before
        time.sleep(1)

    kubectl.run(
        "patch", "pdb", "-n", NS, PDB, "--type", "merge", "-p", '{"spec":{"maxUnavailable":4}}'
    )
    wait_for(
        lambda: _deployment(kubectl, NS, "batch")["spec"]["replicas"] == 12,
        30,
        "batch drained by the 4 replicas chat takes",
        fleet,
    )
    wait_for(
        lambda: (_deployment(kubectl, NS, "chat").get("status") or {}).get("readyReplicas") == 4,
        30,
        "chat running its 4 replicas on the freed GPUs",
        fleet,
    )
    assert len(before - _pods(kubectl, NS, "batch")) >= 4
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
    assert _deployment(kubectl, NS, "batch")["spec"]["replicas"] == 12


def test_a_preempted_pool_moves_and_the_higher_one_does_not_wait_for_a_boot(
    moving: OperatorProcess, testbed: Testbed, kubectl: Kubectl
) -> None:
    wait_for(
        lambda: (
            (_deployment(kubectl, MOVE_NS, "batch").get("status") or {}).get("readyReplicas") == 16
        ),
        60,
        "batch running 16 replicas on the two nodes",
        moving,
    )
    fleets.apply(
        kubectl, [_move_provider(boot_seconds=MOVE_BOOT_SECONDS)]
    )  # new nodes now take 2 min
    testbed.exporter().set_queue(MOVE_NS, "chat", 8)  # 4 replicas

    def recorded_moves() -> list[tuple[str, tuple[str, ...]]]:
        anchor = kubectl.json("get", "configmap", "-n", "gpufleet-system", "gpufleet-fleet")
        return [(m.pool, m.to) for m in record_of(anchor.get("data") or {}).moves]

    # While batch waits for chat's pods, the wait is in the intent record, so a leader that
    # takes over (or a restart) keeps it.
    wait_for(
        lambda: recorded_moves() == [(f"{MOVE_NS}/batch", (f"{MOVE_NS}/chat",))],
        30,
        "the move's wait in the intent record",
        moving,
        interval=0.2,
    )
    wait_for(
        lambda: (
            (_deployment(kubectl, MOVE_NS, "chat").get("status") or {}).get("readyReplicas") == 4
        ),
        45,  # well inside the boot: the GPUs came from batch, not from a new node
        "chat running 4 replicas on GPUs batch held",
        moving,
    )
    wait_for(
        lambda: (
            _deployment(kubectl, MOVE_NS, "batch")["spec"]["replicas"] == 16
            and _pending(kubectl, MOVE_NS, "batch") == 4
        ),
        30,
        "batch's four moved replicas recreated, waiting for the new node",
        moving,
    )
    assert (_deployment(kubectl, MOVE_NS, "batch").get("status") or {}).get("readyReplicas") == 12
    events = kubectl.json(
        "get",
        "events",
        "-n",
        MOVE_NS,
        "--field-selector",
        "reason=Preempted,involvedObject.name=batch",
    )["items"]
    assert events and f"{MOVE_NS}/chat" in events[0]["message"]
