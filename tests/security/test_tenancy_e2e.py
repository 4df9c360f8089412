"""Issue 17 on the test bed: what a tenant writes cannot raise its priority, exceed its
namespace's GPU quota or open a cloud the platform keeps from it. One operator serves three
tenants, each with a namespace, a provider and a GPU type of its own, so no test's pools can
use another's nodes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gpufleet_testbed import fleets
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.operator import OperatorProcess, wait_for
from gpufleet_testbed.testbed import Testbed

pytestmark = pytest.mark.e2e

LADDER_NS, LADDER_GPU, LADDER_CLOUD = "e2e-sec-ladder", "E2E-SEC-LADDER", "e2e-sec-ladder-cloud"
QUOTA_NS, QUOTA_GPU, QUOTA_CLOUD = "e2e-sec-quota", "E2E-SEC-QUOTA", "e2e-sec-quota-cloud"
DATA_NS, DATA_GPU = "e2e-sec-data", "E2E-SEC-DATA"
DATA_HOME, DATA_US = "e2e-sec-data-de", "e2e-sec-data-us"
TOP_CLASS = "e2e-sec-top"  # exists, but no TenantPolicy grants it
# Two tenants at one priority: `e2e-sec-team-a` would come first by name.
TEAMS, TEAM_GPU, TEAM_CLOUD = ("e2e-sec-team-a", "e2e-sec-team-b"), "E2E-SEC-TEAM", "e2e-sec-teams"
TEAM_CLASS = "e2e-sec-team"


def _cloud(name: str, gpu: str, max_nodes: int, **spec: Any) -> dict[str, Any]:
    node_pool = fleets.node_pool(
        "h100",
        gpu_type=gpu,
        site=name,
        max_nodes=max_nodes,
        watts_per_gpu=700,
        idle_watts_per_gpu=90,
        gpus_per_node=4,
    )
    return fleets.cloud_provider(name, legal_entity=f"{name} Ltd", node_pools=[node_pool], **spec)


def _pool(namespace: str, name: str, gpu: str, **spec: Any) -> dict[str, Any]:
    return fleets.serving_pool(
        namespace,
        name,
        gpu_types=[gpu],
        min_replicas=0,
        max_replicas=16,
        behavior=fleets.behavior(scale_down_window_seconds=0),
        **spec,
    )


def _deployment(namespace: str, name: str, cloud: str, priority_class: str | None = None) -> Any:
    return fleets.deployment(
        namespace,
        name,
        replicas=0,
        node_selector={fleets.PROVIDER_LABEL: cloud},
        container="s",
        image="example.com/s:1",
        priority_class=priority_class,
    )


def _ladder() -> list[dict[str, Any]]:
    """`victim` runs with a class its namespace may use (500); `climber` names a class of
    1,000,000 that exists but that no TenantPolicy grants. 8 GPUs for both."""
    victim_class = fleets.ladder_class(LADDER_NS, "victim")
    return [
        fleets.namespace(LADDER_NS),
        fleets.priority_class(TOP_CLASS, 1_000_000),
        *fleets.priority_ladder(LADDER_NS, {"victim": 500}),
        _cloud(LADDER_CLOUD, LADDER_GPU, max_nodes=2),
        _deployment(LADDER_NS, "victim", LADDER_CLOUD, victim_class),
        _deployment(LADDER_NS, "climber", LADDER_CLOUD, TOP_CLASS),
        _pool(LADDER_NS, "victim", LADDER_GPU),
        _pool(LADDER_NS, "climber", LADDER_GPU),
    ]


def _quota() -> list[dict[str, Any]]:
    """A quota of 3 GPUs, one of them held by a pod gpufleet does not manage."""
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "gpus", "namespace": QUOTA_NS},
        "spec": {"hard": {"requests.nvidia.com/gpu": "3"}},
    }
    notebook = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "notebook", "namespace": QUOTA_NS, "labels": {"app": "notebook"}},
        "spec": fleets.gpu_pod_spec(node_selector={"e2e": "nowhere"}, image="example.com/n:1"),
    }
    return [
        fleets.namespace(QUOTA_NS),
        quota,
        notebook,
        _cloud(QUOTA_CLOUD, QUOTA_GPU, max_nodes=4),
        _deployment(QUOTA_NS, "greedy", QUOTA_CLOUD),
        _pool(QUOTA_NS, "greedy", QUOTA_GPU),
    ]


def _data() -> list[dict[str, Any]]:
    """A pool that declares Public data and lifts approvedSubprocessorsOnly, in a namespace
    whose TenantPolicy keeps approved subprocessors only; the unapproved US cloud also serves
    only another namespace. Home has 4 GPUs; the pool wants 12."""
    return [
        fleets.namespace(DATA_NS),
        fleets.tenant_policy(DATA_NS, [DATA_NS], dataPolicy={"approvedSubprocessorsOnly": True}),
        _cloud(DATA_HOME, DATA_GPU, max_nodes=1),
        _cloud(
            DATA_US,
            DATA_GPU,
            max_nodes=4,
            role="Secondary",
            subprocessor={
                "legalEntity": "Cheap GPUs Inc.",
                "jurisdiction": "US",
                "approved": False,
                "dataClasses": ["Public"],
            },
        ),
        _deployment(DATA_NS, "bold", DATA_HOME),
        _deployment(DATA_NS, "spy", DATA_HOME),
        _pool(
            DATA_NS,
            "spy",
            DATA_GPU,
            queue={"query": fleets.queue_query(QUOTA_NS, "greedy"), "targetPerReplica": 1},
        ),
        _pool(
            DATA_NS,
            "bold",
            DATA_GPU,
            jurisdictions=(),
            dataPolicy={"dataClass": "Public", "approvedSubprocessorsOnly": False},
            burst={"enabled": True},
        ),
    ]


def _teams() -> list[dict[str, Any]]:
    """Both teams at the same class, each asking for all 8 GPUs there are."""
    objects: list[dict[str, Any]] = [
        fleets.priority_class(TEAM_CLASS, 100),
        fleets.tenant_policy("e2e-sec-teams", list(TEAMS), [TEAM_CLASS]),
        _cloud(TEAM_CLOUD, TEAM_GPU, max_nodes=2),
    ]
    for team in TEAMS:
        objects += [
            fleets.namespace(team),
            _deployment(team, "model", TEAM_CLOUD, TEAM_CLASS),
            _pool(team, "model", TEAM_GPU),
        ]
    return objects


@pytest.fixture(scope="module")
def operator(testbed: Testbed, kubectl: Kubectl) -> Iterator[OperatorProcess]:
    fleets.install_crds(kubectl)
    objects = [*_ladder(), *_quota(), *_data(), *_teams()]
    fleets.apply(kubectl, objects)
    exporter = testbed.exporter()
    for namespace, pool, queue in (
        (LADDER_NS, "victim", 16),  # 8 replicas: every GPU
        (LADDER_NS, "climber", 32),
        (QUOTA_NS, "greedy", 20),  # 10 replicas
        (DATA_NS, "bold", 24),  # 12 replicas
        (TEAMS[0], "model", 16),  # 8 replicas each; 8 GPUs in all
        (TEAMS[1], "model", 16),
    ):
        exporter.set_queue(namespace, pool, queue)
    process = OperatorProcess(testbed, testbed.directory / "logs" / "operator-tenancy.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()
        fleets.delete(kubectl, objects)


def _status(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return dict(kubectl.json("get", "servingpool", "-n", namespace, name).get("status") or {})


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or () if c["type"] == kind), {})


def test_a_class_the_namespace_may_not_use_does_not_raise_the_pool(
    operator: OperatorProcess, kubectl: Kubectl
) -> None:
    climber = wait_for(
        lambda: (s := _status(kubectl, LADDER_NS, "climber")).get("priority") and s,
        60,
        "the climber's priority reported",
        operator,
    )
    refused = _condition(climber, "PriorityClassAccepted")
    assert climber["priority"] == {"value": 0}
    assert (refused["status"], refused["reason"]) == ("False", "PriorityClassNotAllowed")
    assert TOP_CLASS in refused["message"]
    victim = wait_for(
        lambda: (s := _status(kubectl, LADDER_NS, "victim")).get("desiredReplicas") == 8 and s,
        60,
        "the victim keeps every GPU",
        operator,
    )
    assert victim["priority"]["value"] == 500
    assert _status(kubectl, LADDER_NS, "climber").get("desiredReplicas", 0) == 0


def test_namespace_gpu_quota_bounds_the_plan(operator: OperatorProcess, kubectl: Kubectl) -> None:
    status = wait_for(
        lambda: (
            (s := _status(kubectl, QUOTA_NS, "greedy")).get("desiredReplicas") is not None
            and _condition(s, "ScalingLimited").get("reason") == "LimitedByNamespaceQuota"
            and s
        ),
        60,
        "the pool limited by its namespace's quota",
        operator,
    )
    assert status["desiredReplicas"] == 2  # 3 GPUs of quota, 1 held by the notebook
    assert QUOTA_NS in _condition(status, "ScalingLimited")["message"]


def test_a_pool_cannot_declare_its_way_onto_an_unapproved_cloud(
    operator: OperatorProcess, kubectl: Kubectl
) -> None:
    status = wait_for(
        lambda: (
            _condition(s := _status(kubectl, DATA_NS, "bold"), "BurstActive").get("reason")
            == "BurstBlockedByNamespacePolicy"
            and s
        ),
        60,
        "burst to the unapproved cloud refused by the namespace's policy",
        operator,
    )
    on_us = [p for p in status.get("providers") or () if p["provider"] == DATA_US]
    assert all(p["desiredReplicas"] == 0 for p in on_us)
    assert status["desiredReplicas"] <= 4
    assert DATA_US in _condition(status, "BurstActive")["message"]


def test_a_pool_cannot_read_another_namespaces_metrics(
    operator: OperatorProcess, kubectl: Kubectl
) -> None:
    status = wait_for(
        lambda: (
            _condition(s := _status(kubectl, DATA_NS, "spy"), "MetricsAvailable").get("reason")
            == "QueryOutsideNamespace"
            and s
        ),
        60,
        "the spy's query refused",
        operator,
    )
    condition = _condition(status, "MetricsAvailable")
    assert condition["status"] == "False"
    assert "spec.queue.query" in condition["message"]
    assert "queueDepth" not in status  # nothing of the other namespace's queue (20) shows
    assert status.get("desiredReplicas", 0) == 0  # held, never scaled on it


def test_equal_priorities_share_what_is_short_and_not_by_name(
    operator: OperatorProcess, kubectl: Kubectl
) -> None:
    def shares() -> list[int] | None:
        desired = [_status(kubectl, team, "model").get("desiredReplicas") for team in TEAMS]
        return desired if all(d is not None for d in desired) and sum(desired) == 8 else None

    assert wait_for(shares, 60, "both teams planned on the 8 GPUs", operator) == [4, 4]
