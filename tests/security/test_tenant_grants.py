"""A pool's priority, terms and GPU quota come from the platform's objects, never its spec."""

from __future__ import annotations

from typing import Any

from gpufleet.api.parse import Parsed, parse_pool, parse_tenant_policy
from gpufleet.api.pool import DataClass, ServingPoolSpec
from gpufleet.api.tenancy import PriorityClassInfo, PriorityRefusal
from gpufleet.planner.types import PoolKey
from gpufleet.reconcilers.cache import (
    PodEntry,
    PoolEntry,
    QuotaEntry,
    TenantPolicyEntry,
    View,
    WorkloadEntry,
    quota_entry,
)
from gpufleet.reconcilers.reporting.tenancy import priority_condition
from gpufleet.reconcilers.selectors import from_label_selector
from gpufleet.reconcilers.tenancy import grants

CLASSES = {
    "standard": PriorityClassInfo("standard", 1000, global_default=True),
    "chat-critical": PriorityClassInfo("chat-critical", 100_000),
    "batch": PriorityClassInfo("batch", 10),
    "system-cluster-critical": PriorityClassInfo("system-cluster-critical", 2_000_000_000),
}


def _pool(namespace: str, name: str, workload: str) -> tuple[PoolEntry, ServingPoolSpec]:
    spec: dict[str, Any] = {
        "scaleTargetRef": {"name": workload},
        "gpuTypes": ["H100"],
        "queue": {"query": "q", "targetPerReplica": 4},
        "maxReplicas": 10,
    }
    parsed = parse_pool(spec)
    assert parsed.value is not None
    return PoolEntry(namespace, name, 1, parsed), parsed.value


def _workload(namespace: str, name: str, priority_class: str | None) -> WorkloadEntry:
    selector = from_label_selector({"matchLabels": {"app": name}})
    return WorkloadEntry(namespace, "Deployment", name, 1, selector, "", priority_class)


def _policy(name: str, **spec: Any) -> TenantPolicyEntry:
    return TenantPolicyEntry(name, 1, parse_tenant_policy(spec))


def _view(
    pools: list[PoolEntry],
    policies: list[TenantPolicyEntry] = (),  # type: ignore[assignment]
    quotas: dict[str, list[QuotaEntry]] | None = None,
    pods: dict[str, list[PodEntry]] | None = None,
) -> View:
    return View(pools, [], [], [], pods or {}, {}, list(policies), CLASSES, quotas or {})


def _grant(class_name: str | None, policies: list[TenantPolicyEntry]) -> Any:
    entry, spec = _pool("chat", "llm", "llm")
    key = PoolKey("chat", "llm")
    granted = grants(
        _view([entry], policies), {key: spec}, {key: _workload("chat", "llm", class_name)}
    )
    return granted.priorities[key]


def test_pool_priority_is_its_pods_class_when_the_namespace_may_use_it() -> None:
    policy = _policy("chat", namespaces=["chat"], priorityClasses=["chat-critical"])
    priority = _grant("chat-critical", [policy])
    assert (priority.value, priority.class_name, priority.refused) == (
        100_000,
        "chat-critical",
        None,
    )


def test_a_class_no_policy_allows_gives_the_default_priority_and_says_why() -> None:
    priority = _grant("chat-critical", [_policy("other", namespaces=["image"])])
    assert (priority.value, priority.refused) == (1000, PriorityRefusal.NOT_ALLOWED)
    condition = priority_condition(priority)
    assert (condition.status, condition.reason) == (False, "PriorityClassNotAllowed")
    assert "chat-critical" in condition.message and "1000" in condition.message


def test_system_classes_are_refused_even_without_any_policy() -> None:
    priority = _grant("system-cluster-critical", [])
    assert (priority.value, priority.refused) == (1000, PriorityRefusal.SYSTEM_CLASS)


def test_a_refused_class_below_the_default_never_raises_the_pool() -> None:
    priority = _grant("batch", [])
    assert priority.value == 10


def test_no_class_means_the_cluster_default() -> None:
    priority = _grant(None, [])
    assert (priority.value, priority.class_name, priority.refused) == (1000, "standard", None)


def test_several_policies_grant_only_what_all_of_them_grant() -> None:
    entry, spec = _pool("chat", "llm", "llm")
    key = PoolKey("chat", "llm")
    loose = _policy(
        "loose",
        namespaces=["chat"],
        priorityClasses=["chat-critical", "batch"],
        dataPolicy={"minDataClass": "Internal", "approvedSubprocessorsOnly": False},
    )
    strict = _policy(
        "strict",
        namespaces=["chat", "image"],
        priorityClasses=["batch"],
        dataPolicy={"minDataClass": "Confidential"},
        burst={"providers": ["burst-nl"]},
    )
    granted = grants(
        _view([entry], [loose, strict]),
        {key: spec},
        {key: _workload("chat", "llm", "chat-critical")},
    )
    terms = granted.terms["chat"]
    assert terms.priority_classes == {"batch"}
    assert terms.min_data_class == DataClass.CONFIDENTIAL
    assert terms.approved_subprocessors_only
    assert terms.burst_providers == {"burst-nl"}
    assert granted.priorities[key].refused == PriorityRefusal.NOT_ALLOWED
    assert granted.governed == {"loose": 1, "strict": 1}


def test_an_invalid_policy_grants_nothing() -> None:
    bad = TenantPolicyEntry("bad", 1, Parsed(None, ()))
    assert _grant("chat-critical", [bad]).refused == PriorityRefusal.NOT_ALLOWED


def test_a_policy_that_does_not_parse_locks_its_namespaces_instead_of_freeing_them() -> None:
    """Review finding: a strict policy with a field this release does not know was dropped,
    and the namespace fell back to a looser one."""
    loose = _policy(
        "lax",
        namespaces=["chat"],
        priorityClasses=["chat-critical"],
        dataPolicy={"approvedSubprocessorsOnly": False},
    )
    strict = TenantPolicyEntry("strict", 1, Parsed(None, ()), namespaces=("chat",))
    entry, spec = _pool("chat", "llm", "llm")
    key = PoolKey("chat", "llm")
    granted = grants(
        _view([entry], [loose, strict]), {key: spec}, {key: _workload("chat", "llm", None)}
    )
    terms = granted.terms["chat"]
    assert terms.policies == ("lax", "strict")
    assert (terms.priority_classes, terms.burst_allowed) == (frozenset(), False)
    assert terms.approved_subprocessors_only


def _pod(name: str, app: str, gpus: int, owner: str = "", **state: Any) -> PodEntry:
    return PodEntry("chat", name, {"app": app}, "node-1", False, True, gpus, owner, **state)


def test_namespace_quota_leaves_the_pools_what_other_gpu_pods_do_not_hold() -> None:
    entry, spec = _pool("chat", "llm", "llm")
    key = PoolKey("chat", "llm")
    quotas = {"chat": [QuotaEntry("chat", "gpus", 16), QuotaEntry("chat", "loose", 64)]}
    pods = {
        "chat": [_pod("llm-1", "llm", 2, "ReplicaSet/llm-5d9f8"), _pod("notebook", "jupyter", 3)]
    }
    granted = grants(
        _view([entry], quotas=quotas, pods=pods), {key: spec}, {key: _workload("chat", "llm", None)}
    )
    quota = granted.quotas["chat"]
    assert (quota.gpus, quota.quota, quota.others) == (13, "gpus", 3)


def test_a_quota_scoped_to_another_priority_class_does_not_bind() -> None:
    entry, spec = _pool("chat", "llm", "llm")
    key = PoolKey("chat", "llm")
    quotas = {"chat": [QuotaEntry("chat", "batch-only", 2, frozenset({"batch"}))]}
    granted = grants(
        _view([entry], quotas=quotas), {key: spec}, {key: _workload("chat", "llm", None)}
    )
    assert "chat" not in granted.quotas


def test_quota_objects_read_their_gpu_limit_and_priority_class_scope() -> None:
    body = {
        "spec": {
            "hard": {"requests.nvidia.com/gpu": "8", "pods": "100"},
            "scopeSelector": {
                "matchExpressions": [
                    {"scopeName": "PriorityClass", "operator": "In", "values": ["chat-critical"]}
                ]
            },
        }
    }
    entry = quota_entry("chat", "gpus", body)
    assert entry == QuotaEntry("chat", "gpus", 8, frozenset({"chat-critical"}))
    assert quota_entry("chat", "cpu", {"spec": {"hard": {"cpu": "8"}}}) is None
    best_effort = {"spec": {"hard": {"requests.nvidia.com/gpu": "1"}, "scopes": ["BestEffort"]}}
    assert quota_entry("chat", "be", best_effort) is None


def _others(*pods: PodEntry, classes: dict[str, PriorityClassInfo] | None = None) -> int:
    entry, spec = _pool("chat", "llm", "llm")
    key = PoolKey("chat", "llm")
    view = View(
        [entry],
        [],
        [],
        [],
        {"chat": list(pods)},
        {},
        [],
        classes or CLASSES,
        {"chat": [QuotaEntry("chat", "gpus", 16)]},
    )
    granted = grants(view, {key: spec}, {key: _workload("chat", "llm", None)})
    return granted.quotas["chat"].others


def test_pods_that_only_wear_a_pools_labels_still_count_against_the_quota() -> None:
    """Review finding: a Job's pod labelled like the pool's left `others` and freed its
    GPUs for the plan. Only the workload's controller's pods are the pool's."""
    assert _others(_pod("train", "llm", 8, "Job/train")) == 8
    assert _others(_pod("llm-1", "llm", 8, "ReplicaSet/llm-5d9f8")) == 0
    assert _others(_pod("llm-x", "llm", 8, "ReplicaSet/llm-other-5d9f8")) == 8


def test_terminating_replicas_count_and_finished_pods_do_not() -> None:
    going = PodEntry("chat", "llm-1", {"app": "llm"}, "n", True, True, 4, "ReplicaSet/llm-5d9f8")
    assert _others(going) == 4
    assert _others(_pod("job", "batch", 4, "Job/x", finished=True)) == 0


def test_gpus_of_init_containers_and_sidecars_count_as_quota_counts_them() -> None:
    from gpufleet.reconcilers.cache import gpus_requested, requests_gpu

    def container(gpus: int, **extra: Any) -> dict[str, Any]:
        return {"resources": {"limits": {"nvidia.com/gpu": gpus}}, **extra}

    spec = {
        "containers": [container(1)],
        "initContainers": [container(4), container(2, restartPolicy="Always")],
    }
    assert gpus_requested(spec) == 4  # max(1 + 2 sidecar, 4 init)
    assert requests_gpu({"containers": [{}], "initContainers": [container(1)]})


def test_a_quota_scoped_to_the_default_class_binds_pods_that_name_none() -> None:
    entry, spec = _pool("chat", "llm", "llm")
    key = PoolKey("chat", "llm")
    scoped = {"chat": [QuotaEntry("chat", "default-only", 2, frozenset({"standard"}))]}
    granted = grants(
        _view([entry], quotas=scoped), {key: spec}, {key: _workload("chat", "llm", None)}
    )
    assert granted.quotas["chat"].gpus == 2


def test_gpus_the_quota_charges_to_pods_the_operator_does_not_watch_are_others() -> None:
    # With --pod-label-selector, a notebook without the label is never seen; the quota's
    # status.used still counts its 3 GPUs beside the pool's 2.
    entry, spec = _pool("chat", "llm", "llm")
    key = PoolKey("chat", "llm")
    quotas = {"chat": [QuotaEntry("chat", "gpus", 16, used=5)]}
    pods = {"chat": [_pod("llm-1", "llm", 2, "ReplicaSet/llm-5d9f8")]}
    granted = grants(
        _view([entry], quotas=quotas, pods=pods), {key: spec}, {key: _workload("chat", "llm", None)}
    )
    quota = granted.quotas["chat"]
    assert (quota.gpus, quota.others) == (13, 3)


def test_quota_objects_read_what_they_charge_now() -> None:
    body = {
        "spec": {"hard": {"requests.nvidia.com/gpu": "8"}},
        "status": {"used": {"requests.nvidia.com/gpu": "5"}},
    }
    assert quota_entry("chat", "gpus", body) == QuotaEntry("chat", "gpus", 8, None, 5)
