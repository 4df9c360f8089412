"""Issue 15 on the test bed: one pool's bad sample or query, one provider's malformed
kubeconfig and one budget's failing query each affect only their own object. The healthy pool
scales in the same run, and each faulty object says why in a condition."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gpufleet_testbed import fleets
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.operator import OperatorProcess, wait_for
from gpufleet_testbed.testbed import Testbed

pytestmark = pytest.mark.e2e

GPU = "E2E-FAULT-GPU"  # nodes of its own: other modules' pools cannot take them
NS = "e2e-fault"
PROVIDER = "e2e-fault-cloud"
REMOTE = "e2e-fault-remote"
SECRET = "e2e-fault-kubeconfig"
BUDGET = "e2e-fault-site"

# Pool -> what the exporter serves as its queue (None: its own query, below).
SAMPLES: dict[str, float | None] = {
    "good": 0.0,
    "huge": 1e308,
    "nan": float("nan"),
    "negative": -3.0,
    "tiny": 1e-310,
    "wide": None,
    "forger": None,
}
QUERIES = {
    # Every queue series in Prometheus, not one number.
    "wide": "inference_queue_depth",
    # Tries to close its own parentheses and answer for the good pool in a batch.
    "forger": (
        f'{fleets.queue_query(NS, "forger")}) or label_replace(vector(0), "gpufleet_part", '
        '"0", "", "") or (vector(0)'
    ),
}
EXPECTED = {
    "huge": "ValueOutOfRange",
    "nan": "ValueOutOfRange",
    "negative": "ValueOutOfRange",
    "wide": "SeveralSeries",
    "forger": "InvalidQuery",
}


def _objects() -> list[dict[str, Any]]:
    def pool(name: str) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if name in QUERIES:
            extra["queue"] = {"query": QUERIES[name], "targetPerReplica": 2}
        return fleets.serving_pool(
            NS,
            name,
            gpu_types=[GPU],
            max_replicas=16,
            behavior=fleets.behavior(scale_down_window_seconds=5),
            **extra,
        )

    node_pool = fleets.node_pool(
        "h100", gpu_type=GPU, site=BUDGET, max_nodes=4, watts_per_gpu=300, idle_watts_per_gpu=50
    )
    remote_pool = fleets.node_pool(
        "h100",
        gpu_type=GPU,
        site="fault-remote",
        max_nodes=2,
        watts_per_gpu=300,
        idle_watts_per_gpu=50,
    )
    budget = fleets.power_budget(BUDGET, cap_kilowatts=100, headroom_percent=0)
    budget["spec"]["measurement"] = {"type": "Prometheus", "prometheus": {"query": "sum(up[5m])"}}
    return [
        fleets.namespace(NS),
        fleets.cloud_provider(PROVIDER, legal_entity="Fault GmbH", node_pools=[node_pool]),
        fleets.cloud_provider(
            REMOTE,
            legal_entity="Fault Remote GmbH",
            node_pools=[remote_pool],
            role="Secondary",
            cluster={"kubeconfigSecretRef": {"name": SECRET, "key": "kubeconfig"}},
        ),
        budget,
        *(
            fleets.deployment(NS, name, node_selector={fleets.PROVIDER_LABEL: PROVIDER})
            for name in SAMPLES
        ),
        *(pool(name) for name in SAMPLES),
    ]


@pytest.fixture(scope="module")
def operator(testbed: Testbed, kubectl: Kubectl) -> Iterator[OperatorProcess]:
    if not testbed.prometheus_url:
        pytest.skip("no Prometheus on this test bed")
    fleets.install_crds(kubectl)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": fleets.OPERATOR_NAMESPACE},
        "stringData": {"kubeconfig": "users: 5\nclusters: [just-a-string]\n"},
    }
    objects = _objects()
    fleets.apply(kubectl, [secret, *objects])
    exporter = testbed.exporter()
    for name, value in SAMPLES.items():
        exporter.set_queue(NS, name, 0.0 if value is None else value)
    process = OperatorProcess(testbed, testbed.directory / "logs" / "operator-fault.log").start()
    try:
        yield process
    finally:
        process.stop()
        fleets.delete(kubectl, objects)
        kubectl.run("delete", "secret", "-n", fleets.OPERATOR_NAMESPACE, SECRET, check=False)


def _condition(kubectl: Kubectl, kind: str, name: str, condition: str) -> dict[str, Any]:
    where = ("-n", NS) if kind == "servingpool" else ()
    status = kubectl.json("get", kind, *where, name).get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == condition), {})


def test_faulty_objects_say_why_while_the_healthy_pool_scales(
    operator: OperatorProcess, testbed: Testbed, kubectl: Kubectl
) -> None:
    testbed.exporter().set_queue(NS, "good", 12)  # wants 6 replicas

    def scaled() -> bool:
        replicas = kubectl.json("get", "deployment", "-n", NS, "good")["spec"]["replicas"]
        return int(replicas) >= 4

    wait_for(scaled, 60, "the healthy pool to scale up beside the faulty ones", operator)

    def reasons() -> dict[str, str] | None:
        found = {
            name: _condition(kubectl, "servingpool", name, "MetricsAvailable").get("reason", "")
            for name in EXPECTED
        }
        return found if found == EXPECTED else None

    wait_for(reasons, 30, "each faulty pool's MetricsAvailable reason", operator)
    tiny = _condition(kubectl, "servingpool", "tiny", "MetricsAvailable")
    assert tiny["status"] == "True"  # a denormal is a zero, not a fault
    credentials = _condition(kubectl, "cloudprovider", REMOTE, "CredentialsValid")
    assert credentials["status"] == "False"
    measurement = _condition(kubectl, "powerbudget", BUDGET, "MeasurementAvailable")
    assert (measurement["status"], measurement["reason"]) == ("False", "InvalidQuery")
    for name in EXPECTED:  # held, never scaled to zero
        replicas = kubectl.json("get", "deployment", "-n", NS, name)["spec"]["replicas"]
        assert int(replicas) >= 1
