"""The whole operator (`gpufleet run`) on the test bed: a surge, a Prometheus outage, DryRun,
an unsatisfiable spec, and a quiet steady state. Waits poll to a deadline; no fixed sleeps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from gpufleet_testbed import fleets, procs
from gpufleet_testbed import prometheus as prom
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.operator import OperatorProcess, wait_for
from gpufleet_testbed.testbed import Testbed

pytestmark = pytest.mark.e2e

# A GPU type of its own: pools that other tests leave on the shared test bed cannot use
# these nodes, so their placements cannot change what this module measures.
GPU = "E2E-OP-GPU"

NS = "e2e-operator"
PROVIDER = "e2e-cloud"
QUOTA_GPUS = 24  # three 8-GPU nodes
CAP_KW = 12  # one node: 500 W + 8 x 50 W idle; each busy GPU adds 250 W


def _fleet() -> list[dict[str, Any]]:
    def pool(name: str, target: str, **extra: Any) -> dict[str, Any]:
        return fleets.serving_pool(
            NS,
            name,
            target=target,
            gpu_types=[GPU],
            max_replicas=40,
            behavior=fleets.behavior(scale_down_window_seconds=10),
            **extra,
        )

    # Required node affinity (where the others use a nodeSelector) to the provider's nodes.
    on_provider = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": fleets.PROVIDER_LABEL, "operator": "In", "values": [PROVIDER]}
                        ]
                    }
                ]
            }
        }
    }
    h100 = fleets.node_pool(
        "h100",
        gpu_type=GPU,
        site="e2e-site",
        max_nodes=10,
        boot_seconds=2,
        watts_per_gpu=300,
        idle_watts_per_gpu=50,
        node_overhead_watts=500,
    )
    return [
        fleets.namespace(NS),
        fleets.cloud_provider(
            PROVIDER, legal_entity="E2E Cloud GmbH", gpu_quota=QUOTA_GPUS, node_pools=[h100]
        ),
        fleets.power_budget("e2e-site", cap_kilowatts=CAP_KW, headroom_percent=0),
        fleets.deployment(NS, "surge", affinity=on_provider),
        fleets.deployment(NS, "dry", affinity=on_provider),
        pool("surge", "surge"),
        pool("dry", "dry", mode="DryRun"),
        pool("broken", "no-such-deployment"),
    ]


@pytest.fixture(scope="module")
def operator(testbed: Testbed, kubectl: Kubectl) -> Iterator[OperatorProcess]:
    fleets.install_crds(kubectl)
    objects = _fleet()
    fleets.apply(kubectl, objects)
    exporter = testbed.exporter()
    for pool in ("surge", "dry", "broken"):
        exporter.set_queue(NS, pool, 0)
    process = OperatorProcess(testbed, testbed.directory / "logs" / "operator-e2e.log").start()
    try:
        yield process
    finally:
        process.stop()
        fleets.delete(kubectl, objects)


def _pool(kubectl: Kubectl, name: str) -> dict[str, Any]:
    return dict(kubectl.json("get", "servingpool", "-n", NS, name))


def _condition(pool: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(
        (c for c in (pool.get("status") or {}).get("conditions", []) if c["type"] == kind), {}
    )


def _replicas(kubectl: Kubectl, deployment: str) -> int:
    return int(kubectl.json("get", "deployment", "-n", NS, deployment)["spec"]["replicas"])


def _nodes(kubectl: Kubectl) -> list[dict[str, Any]]:
    return list(kubectl.json("get", "nodes", "-l", f"gpufleet.io/provider={PROVIDER}")["items"])


def test_surge_raises_replicas_and_gpu_nodes_within_quota_and_cap(
    operator: OperatorProcess, testbed: Testbed, kubectl: Kubectl
) -> None:
    testbed.exporter().set_queue(NS, "surge", 60)  # wants 30 replicas
    wait_for(lambda: _replicas(kubectl, "surge") > 1, 30, "scale-up of the surge pool", operator)
    wait_for(
        lambda: len(_nodes(kubectl)) >= 2, 40, "kwok GPU nodes from the simulated cloud", operator
    )
    pool = wait_for(
        lambda: (
            (p := _pool(kubectl, "surge")).get("status", {}).get("desiredReplicas", 0) > 1 and p
        ),
        20,
        "status",
        operator,
    )
    assert len(_nodes(kubectl)) * 8 <= QUOTA_GPUS
    budget = kubectl.json("get", "powerbudget", "e2e-site")
    assert budget["status"]["plannedWatts"] <= CAP_KW * 1000
    assert pool["status"]["desiredReplicas"] < 30  # the quota and the cap bind first
    assert _condition(pool, "CapacityAvailable")["status"] == "False"
    events = kubectl.json(
        "get", "events", "-n", NS, "--field-selector", "involvedObject.name=surge"
    )["items"]
    assert any(
        e["reason"] in ("ScaledUp", "LimitedByPower", "LimitedByQuota")
        or "replicas" in e["message"]
        for e in events
    )


def test_missing_metrics_hold_capacity_and_recover_when_prometheus_returns(
    operator: OperatorProcess, testbed: Testbed, kubectl: Kubectl
) -> None:
    testbed.exporter().set_queue(NS, "surge", 20)  # 10 replicas
    wait_for(
        lambda: _pool(kubectl, "surge").get("status", {}).get("desiredReplicas") == 10,
        40,
        "10 replicas",
        operator,
    )
    run_dir, log_dir = testbed.directory / "run", testbed.directory / "logs"
    assert testbed.prometheus_url
    procs.stop(run_dir, "prometheus")
    try:
        testbed.exporter().set_queue(NS, "surge", 0)  # would scale down, if it could be seen
        pool = wait_for(
            lambda: (
                _condition(p := _pool(kubectl, "surge"), "MetricsAvailable").get("status")
                == "False"
                and p
            ),
            30,
            "MetricsAvailable=False",
            operator,
        )
        deadline = time.monotonic() + 15  # past the 10 s scale-down window
        while time.monotonic() < deadline:
            assert _replicas(kubectl, "surge") == 10
            time.sleep(1)
        assert "holding" in _condition(pool, "MetricsAvailable")["message"]
    finally:
        port = int(urlsplit(testbed.prometheus_url).port or 0)
        procs.start(
            run_dir,
            log_dir,
            "prometheus",
            prom.argv(
                testbed.directory / "prometheus.yml", testbed.directory / "prometheus-data", port
            ),
        )
    wait_for(
        lambda: _condition(_pool(kubectl, "surge"), "MetricsAvailable").get("status") == "True",
        60,
        "recovery",
        operator,
    )
    wait_for(lambda: _replicas(kubectl, "surge") == 1, 60, "scale-down after recovery", operator)


def test_dry_run_plans_and_reports_but_changes_nothing(
    operator: OperatorProcess, testbed: Testbed, kubectl: Kubectl
) -> None:
    testbed.exporter().set_queue(NS, "dry", 10)
    pool = wait_for(
        lambda: (p := _pool(kubectl, "dry")).get("status", {}).get("desiredReplicas", 0) >= 5 and p,
        30,
        "DryRun plan",
        operator,
    )
    assert _condition(pool, "ScalingActive")["reason"] == "DryRun"
    assert _replicas(kubectl, "dry") == 1


def test_unsatisfiable_spec_gets_a_condition_while_others_keep_scaling(
    operator: OperatorProcess, kubectl: Kubectl
) -> None:
    pool = wait_for(
        lambda: (
            _condition(p := _pool(kubectl, "broken"), "TargetFound").get("status") == "False" and p
        ),
        30,
        "TargetFound=False",
        operator,
    )
    assert "scaleTargetRef" in _condition(pool, "TargetFound")["message"]
    assert _condition(pool, "Ready")["status"] == "False"
    assert _condition(_pool(kubectl, "surge"), "Ready")["reason"] != "TargetNotFound"


def test_steady_state_writes_nothing(
    operator: OperatorProcess, testbed: Testbed, kubectl: Kubectl
) -> None:
    testbed.exporter().set_queue(NS, "surge", 2)
    wait_for(
        lambda: (
            _replicas(kubectl, "surge") == 1
            and _pool(kubectl, "surge")["status"].get("queueDepth") == 2
        ),
        60,
        "a settled pool",
        operator,
    )
    time.sleep(2)  # let the last status write land; then nothing may change
    before = {
        n: _pool(kubectl, n)["metadata"]["resourceVersion"] for n in ("surge", "dry", "broken")
    }
    # The Deployment's status is the controllers' to change; its spec (generation) is ours.
    deployment = kubectl.json("get", "deployment", "-n", NS, "surge")["metadata"]["generation"]
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        time.sleep(1)
    after = {
        n: _pool(kubectl, n)["metadata"]["resourceVersion"] for n in ("surge", "dry", "broken")
    }
    assert after == before
    assert (
        kubectl.json("get", "deployment", "-n", NS, "surge")["metadata"]["generation"] == deployment
    )


def test_a_status_edited_by_hand_is_put_back_while_nothing_else_moves(
    operator: OperatorProcess, testbed: Testbed, kubectl: Kubectl
) -> None:
    testbed.exporter().set_queue(NS, "surge", 2)
    wait_for(
        lambda: _pool(kubectl, "surge")["status"].get("queueDepth") == 2,
        60,
        "a settled pool",
        operator,
    )
    kubectl.run(
        "patch", "servingpool", "-n", NS, "surge", "--subresource=status", "--type=merge",
        "-p", '{"status": {"queueDepth": 97}}',
    )  # fmt: skip
    # The plan, the queue and every other input are as they were: only the stored status
    # differs from what the operator last wrote, and that alone must bring it back.
    wait_for(
        lambda: _pool(kubectl, "surge")["status"].get("queueDepth") == 2,
        30,
        "the status put back",
        operator,
    )
