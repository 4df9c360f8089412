"""Issue 19 on the test bed: ServingPools behind real Gateway API Inference Extension
InferencePools (GIE's own CRD, e2e/tools/gateway-api-inference-extension). A pool without a
queue query scales on its endpoint picker's queue, as the exporter serves it under GIE's
names; one naming a missing InferencePool, and one whose template lacks the selector's
labels, say so and scale nothing. With both CRD sets installed, each name lists its own
kind. (That burst copies keep the selector's labels is checked where copies are built,
tests/reconcilers/test_inference_pools.py: a second test bed would cost a minute.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from gpufleet_testbed import exporter as exporter_server
from gpufleet_testbed import fleets, probe
from gpufleet_testbed.exporter_client import ExporterClient
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.operator import OperatorProcess, wait_for
from gpufleet_testbed.player import Player, PoolPlay, Surge
from gpufleet_testbed.testbed import Testbed

pytestmark = pytest.mark.e2e

# A GPU type of its own: pools that other tests leave on the shared test bed cannot use
# these nodes, so their placements cannot change what this module measures.
GPU = "E2E-GIE-GPU"
NS = "e2e-gie"
PROVIDER = "e2e-gie-cloud"
TARGET_PER_REPLICA = 2


def install_gie_crds(kubectl: Kubectl) -> None:
    fleets.install_gie_crds(kubectl)


def inference_pool(name: str, **labels: str) -> dict[str, Any]:
    return fleets.inference_pool(NS, name, **labels)


def _pool(name: str, inference_pool_ref: str) -> dict[str, Any]:
    pool = fleets.serving_pool(
        NS,
        name,
        gpu_types=[GPU],
        max_replicas=8,
        target_per_replica=TARGET_PER_REPLICA,
        behavior=fleets.behavior(),
        inferencePoolRef={"name": inference_pool_ref},
    )
    del pool["spec"]["queue"]["query"]  # the endpoint picker's queue
    return pool


def _fleet() -> list[dict[str, Any]]:
    h100 = fleets.node_pool(
        "h100",
        gpu_type=GPU,
        site="e2e-gie-site",
        max_nodes=2,
        watts_per_gpu=700,
        idle_watts_per_gpu=90,
    )
    unlabelled = fleets.deployment(NS, "unlabelled")
    unlabelled["spec"]["template"]["metadata"]["labels"] = {"app": "unlabelled"}
    return [
        fleets.namespace(NS),
        fleets.cloud_provider(PROVIDER, legal_entity="GIE Cloud GmbH", node_pools=[h100]),
        fleets.deployment(NS, "llm"),  # pods labelled app=llm
        fleets.deployment(NS, "orphan"),
        unlabelled,
        inference_pool("llm-gie", app="llm"),
        inference_pool("strict-gie", app="unlabelled", model="llama"),
        _pool("llm", "llm-gie"),
        _pool("orphan", "no-such-inference-pool"),
        _pool("unlabelled", "strict-gie"),
    ]


@pytest.fixture(scope="module")
def operator(testbed: Testbed, kubectl: Kubectl) -> Iterator[OperatorProcess]:
    if not testbed.prometheus_url:
        pytest.skip("no Prometheus on this test bed")
    fleets.install_crds(kubectl)
    install_gie_crds(kubectl)
    objects = _fleet()
    fleets.apply(kubectl, objects)
    exporter = testbed.exporter()
    exporter.set_endpoint_picker(NS, "llm-gie", average=0, ready=1)
    process = OperatorProcess(testbed, testbed.directory / "logs" / "operator-gie.log").start()
    try:
        yield process
    finally:
        process.stop()
        exporter.drop_endpoint_picker(NS, "llm-gie")
        fleets.delete(kubectl, objects)


def _status(kubectl: Kubectl, name: str) -> dict[str, Any]:
    return dict(kubectl.json("get", "servingpool", "-n", NS, name).get("status") or {})


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def _replicas(kubectl: Kubectl, name: str) -> int:
    return int(kubectl.json("get", "deployment", "-n", NS, name)["spec"]["replicas"])


def test_a_pool_scales_on_its_endpoint_pickers_queue(
    operator: OperatorProcess, testbed: Testbed, kubectl: Kubectl
) -> None:
    # 3 requests waiting on each of 2 ready model servers: 6 in all, 3 replicas at 2 each.
    testbed.exporter().set_endpoint_picker(NS, "llm-gie", average=3, ready=2)

    wait_for(lambda: _replicas(kubectl, "llm") == 3, 40, "llm scaled to 3 replicas", operator)
    status = wait_for(
        lambda: (s := _status(kubectl, "llm")).get("queueDepth") == 6 and s,
        20,
        "status.queueDepth 6",
        operator,
    )
    assert _condition(status, "MetricsAvailable")["status"] == "True"
    assert _condition(status, "TargetFound")["status"] == "True"


def test_an_endpoint_picker_that_sees_no_fresh_pod_holds_the_pool(
    operator: OperatorProcess, testbed: Testbed, kubectl: Kubectl
) -> None:
    # GIE v1.3+: no pod with fresh metrics -> 0 ready pods, the last average kept. The queue
    # is unknown, not empty: no sample, and the pool keeps its replicas.
    testbed.exporter().set_endpoint_picker(NS, "llm-gie", average=3, ready=2)
    wait_for(lambda: _replicas(kubectl, "llm") == 3, 40, "llm at 3 replicas", operator)

    testbed.exporter().set_endpoint_picker(NS, "llm-gie", average=3, ready=0)

    def no_sample() -> dict[str, Any] | None:
        found = _condition(_status(kubectl, "llm"), "MetricsAvailable")
        return found if found.get("status") == "False" else None

    assert wait_for(no_sample, 40, "MetricsAvailable=False", operator)["reason"] == "NoSample"
    assert _replicas(kubectl, "llm") == 3


def test_pools_at_odds_with_their_inference_pool_say_so_and_scale_nothing(
    operator: OperatorProcess, kubectl: Kubectl
) -> None:
    def reason(name: str) -> str | None:
        found = _condition(_status(kubectl, name), "TargetFound")
        return found.get("reason") if found.get("status") == "False" else None

    assert wait_for(lambda: reason("orphan"), 30, "orphan's TargetFound", operator) == (
        "InferencePoolNotFound"
    )
    assert wait_for(lambda: reason("unlabelled"), 30, "its TargetFound", operator) == (
        "InferencePoolSelectorMismatch"
    )
    message = _condition(_status(kubectl, "unlabelled"), "TargetFound")["message"]
    assert "lacks model=llama" in message
    assert _replicas(kubectl, "orphan") == 1 and _replicas(kubectl, "unlabelled") == 1


def test_each_name_lists_its_own_kind_with_both_crd_sets_installed(
    operator: OperatorProcess, kubectl: Kubectl
) -> None:
    def names(*resource: str) -> set[str]:
        return set(kubectl.run("get", *resource, "-n", NS, "-o", "name").stdout.split())

    assert names("inferencepools") == {
        "inferencepool.inference.networking.k8s.io/llm-gie",
        "inferencepool.inference.networking.k8s.io/strict-gie",
    }
    pools = {f"servingpool.gpufleet.io/{n}" for n in ("llm", "orphan", "unlabelled")}
    assert names("gfpool") == pools
    listed = names("gpufleet")
    assert pools <= listed
    assert all(".gpufleet.io/" in name for name in listed)


class _Pods:
    """Stands in for kubectl: two Running replicas of app=llm, and no GPU nodes."""

    def json(self, *args: str) -> dict[str, Any]:
        if args[:2] != ("get", "pods"):
            return {"items": []}
        pod = {
            "metadata": {"namespace": NS, "labels": {"app": "llm"}},
            "status": {"phase": "Running"},
            "spec": {"containers": []},
        }
        return {"items": [pod, pod]}


def test_the_player_serves_the_endpoint_pickers_pair_under_gies_names() -> None:
    server = exporter_server.serve("127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        play = PoolPlay(NS, "llm", "llm", Surge(base=10.0), per_replica=1.0, inference_pool="gie")
        player = Player(_Pods(), ExporterClient(url), [play])  # type: ignore[arg-type]

        player.step(0.0, 1.0)  # 10 arrive, 2 served: 8 wait, 4 on each of 2 servers

        text = probe.get(f"{url}/metrics")[1]
        assert f'inference_pool_average_queue_size{{name="gie",namespace="{NS}"}} 4.0' in text
        assert f'inference_pool_ready_pods{{name="gie",namespace="{NS}"}} 2.0' in text
    finally:
        server.shutdown()
        server.server_close()
