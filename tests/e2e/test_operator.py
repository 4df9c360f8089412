"""The whole operator (`gpufleet run`) on the test bed: a surge, a Prometheus outage, DryRun,
an unsatisfiable spec, and a quiet steady state. Waits poll to a deadline; no fixed sleeps."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from gpufleet_testbed import procs
from gpufleet_testbed import prometheus as prom
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.operator import OperatorProcess
from gpufleet_testbed.testbed import Testbed

pytestmark = pytest.mark.e2e

# A GPU type of its own: pools that other tests leave on the shared test bed cannot use
# these nodes, so their placements cannot change what this module measures.
GPU = "E2E-OP-GPU"

REPO = Path(__file__).resolve().parents[2]
NS = "e2e-operator"
PROVIDER = "e2e-cloud"
QUOTA_GPUS = 24  # three 8-GPU nodes
CAP_KW = 12  # one node: 500 W + 8 x 50 W idle; each busy GPU adds 250 W


def _fleet() -> list[dict[str, Any]]:
    def pool(name: str, target: str, **extra: Any) -> dict[str, Any]:
        spec = {
            "scaleTargetRef": {"name": target},
            "gpuTypes": [GPU],
            "queue": {
                "query": f'sum(inference_queue_depth{{namespace="{NS}",pool="{name}"}})',
                "targetPerReplica": 2,
            },
            "minReplicas": 1,
            "maxReplicas": 40,
            "modelLoadSeconds": 1,
            "dataPolicy": {"allowedJurisdictions": ["DE"]},
            "behavior": {
                "scaleUp": {"policies": [{"type": "Pods", "value": 100, "periodSeconds": 1}]},
                "scaleDown": {"stabilizationWindowSeconds": 10},
            },
            **extra,
        }
        return {
            "apiVersion": "gpufleet.io/v1alpha1",
            "kind": "InferencePool",
            "metadata": {"name": name, "namespace": NS},
            "spec": spec,
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
                        "affinity": {
                            "nodeAffinity": {
                                "requiredDuringSchedulingIgnoredDuringExecution": {
                                    "nodeSelectorTerms": [
                                        {
                                            "matchExpressions": [
                                                {
                                                    "key": "gpufleet.io/provider",
                                                    "operator": "In",
                                                    "values": [PROVIDER],
                                                }
                                            ]
                                        }
                                    ]
                                }
                            }
                        },
                        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                        "containers": [
                            {
                                "name": "server",
                                "image": "example.com/server:1",
                                "resources": {"limits": {"nvidia.com/gpu": 1}},
                            }
                        ],
                    },
                },
            },
        }

    provider = {
        "apiVersion": "gpufleet.io/v1alpha1",
        "kind": "CloudProvider",
        "metadata": {"name": PROVIDER},
        "spec": {
            "subprocessor": {
                "legalEntity": "E2E Cloud GmbH",
                "jurisdiction": "DE",
                "approved": True,
                "dataClasses": ["Internal"],
            },
            "driver": {"type": "Simulated"},
            "gpuQuota": QUOTA_GPUS,
            "nodePools": [
                {
                    "name": "h100",
                    "gpuType": GPU,
                    "gpusPerNode": 8,
                    "wattsPerGpu": 300,
                    "idleWattsPerGpu": 50,
                    "nodeOverheadWatts": 500,
                    "maxNodes": 10,
                    "bootSeconds": 2,
                    "site": "e2e-site",
                }
            ],
        },
    }
    budget = {
        "apiVersion": "gpufleet.io/v1alpha1",
        "kind": "PowerBudget",
        "metadata": {"name": "e2e-site"},
        "spec": {"capKilowatts": CAP_KW, "headroomPercent": 0, "scope": {"sites": ["e2e-site"]}},
    }
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        provider,
        budget,
        deployment("surge"),
        deployment("dry"),
        pool("surge", "surge"),
        pool("dry", "dry", mode="DryRun"),
        pool("broken", "no-such-deployment"),
    ]


@pytest.fixture(scope="module")
def operator(testbed: Testbed, kubectl: Kubectl) -> Iterator[OperatorProcess]:
    kubectl.run("apply", "--server-side", "-f", str(REPO / "crds"))
    kubectl.run("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    kubectl.run("create", "namespace", "gpufleet-system", check=False)
    kubectl.run(
        "apply",
        "--server-side",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": _fleet()}),
    )
    exporter = testbed.exporter()
    for pool in ("surge", "dry", "broken"):
        exporter.set_queue(NS, pool, 0)
    process = OperatorProcess(testbed, testbed.directory / "logs" / "operator-e2e.log").start()
    try:
        yield process
    finally:
        process.stop()
        kubectl.run("delete", "namespace", NS, "--wait=false", check=False)
        kubectl.run("delete", "cloudprovider", PROVIDER, "--wait=false", check=False)
        kubectl.run("delete", "powerbudget", "e2e-site", "--wait=false", check=False)


def _until(probe: Callable[[], Any], timeout: float, what: str, operator: OperatorProcess) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}; last: {last}\noperator log:\n{operator.tail(30)}"
    )


def _pool(kubectl: Kubectl, name: str) -> dict[str, Any]:
    return dict(kubectl.json("get", "inferencepool", "-n", NS, name))


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
    _until(lambda: _replicas(kubectl, "surge") > 1, 30, "scale-up of the surge pool", operator)
    _until(
        lambda: len(_nodes(kubectl)) >= 2, 40, "kwok GPU nodes from the simulated cloud", operator
    )
    pool = _until(
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
    _until(
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
        pool = _until(
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
    _until(
        lambda: _condition(_pool(kubectl, "surge"), "MetricsAvailable").get("status") == "True",
        60,
        "recovery",
        operator,
    )
    _until(lambda: _replicas(kubectl, "surge") == 1, 60, "scale-down after recovery", operator)


def test_dry_run_plans_and_reports_but_changes_nothing(
    operator: OperatorProcess, testbed: Testbed, kubectl: Kubectl
) -> None:
    testbed.exporter().set_queue(NS, "dry", 10)
    pool = _until(
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
    pool = _until(
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
    _until(
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
