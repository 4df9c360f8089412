"""The example fleet hangs together: what the pools, providers and budgets refer to exists,
and the data policy keeps each pool's data where it is allowed."""

from __future__ import annotations

from typing import Any

import pytest

from gpufleet.api import CloudProviderSpec, PowerBudgetSpec, Role, ServingPoolSpec
from gpufleet.api.tenancy import TenantPolicySpec

from .manifests import EXAMPLES, PARSERS, load_documents, valid_files

DOCS = [doc for path in valid_files() for doc in load_documents(path)]


def _specs(kind: str) -> dict[str, Any]:
    return {
        d["metadata"]["name"]: PARSERS[kind](d["spec"]).value for d in DOCS if d["kind"] == kind
    }


POOLS: dict[str, ServingPoolSpec] = _specs("ServingPool")
PROVIDERS: dict[str, CloudProviderSpec] = _specs("CloudProvider")
BUDGETS: dict[str, PowerBudgetSpec] = _specs("PowerBudget")
DEPLOYMENTS = {d["metadata"]["name"]: d for d in DOCS if d["kind"] == "Deployment"}
POLICIES: dict[str, TenantPolicySpec] = _specs("TenantPolicy")
CLASSES = {d["metadata"]["name"]: d["value"] for d in DOCS if d["kind"] == "PriorityClass"}
POOL_NAMESPACES = {
    d["metadata"]["name"]: d["metadata"]["namespace"] for d in DOCS if d["kind"] == "ServingPool"
}
EU = {"AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE"}
EU |= {"IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK"}


def _allowed(pool: ServingPoolSpec, provider: CloudProviderSpec) -> bool:
    policy, sub = pool.data_policy, provider.subprocessor
    places = set(policy.allowed_jurisdictions)
    return (
        (sub.approved or not policy.approved_subprocessors_only)
        and policy.data_class in sub.data_classes
        and (
            not places or sub.jurisdiction in places or ("EU" in places and sub.jurisdiction in EU)
        )
    )


def _sites(budget: PowerBudgetSpec) -> set[str]:
    return {
        pool.site
        for name, provider in PROVIDERS.items()
        for pool in provider.node_pools
        if (not budget.scope.providers or name in budget.scope.providers)
        and (not budget.scope.sites or pool.site in budget.scope.sites)
    }


def test_examples_hold_each_kind_the_readme_describes() -> None:
    kinds = sorted({d["kind"] for d in DOCS})

    assert kinds == [
        "CloudProvider",
        "Deployment",
        "Namespace",
        "PowerBudget",
        "PriorityClass",
        "ResourceQuota",
        "ServingPool",
        "TenantPolicy",
    ]
    assert (EXAMPLES / "README.md").is_file()


def test_each_tenant_has_its_own_namespace_policy_and_gpu_quota() -> None:
    namespaces = {d["metadata"]["name"] for d in DOCS if d["kind"] == "Namespace"}
    namespaced = [d for d in DOCS if d["kind"] in ("ServingPool", "Deployment", "ResourceQuota")]
    governed = {ns for name, policy in POLICIES.items() for ns in policy.namespaces}
    quotas = {d["metadata"]["namespace"] for d in DOCS if d["kind"] == "ResourceQuota"}

    assert {d["metadata"]["namespace"] for d in namespaced} == namespaces == {"chat", "image-gen"}
    assert governed == quotas == namespaces


def _class_of(pool: ServingPoolSpec) -> str:
    return str(
        DEPLOYMENTS[pool.scale_target_ref.name]["spec"]["template"]["spec"]["priorityClassName"]
    )


@pytest.mark.parametrize("name", sorted(POOLS))
def test_pool_runs_with_a_class_its_namespace_may_use(name: str) -> None:
    namespace = POOL_NAMESPACES[name]
    allowed = {
        c for p in POLICIES.values() if namespace in p.namespaces for c in p.priority_classes
    }

    assert _class_of(POOLS[name]) in allowed
    assert _class_of(POOLS[name]) in CLASSES


@pytest.mark.parametrize("name", sorted(POOLS))
def test_pool_scales_a_deployment_that_requests_its_gpus(name: str) -> None:
    pool = POOLS[name]
    deployment = DEPLOYMENTS[pool.scale_target_ref.name]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    assert (pool.scale_target_ref.api_version, pool.scale_target_ref.kind) == (
        deployment["apiVersion"],
        deployment["kind"],
    )
    assert container["resources"]["limits"]["nvidia.com/gpu"] == pool.gpus_per_replica
    assert {t["key"] for t in pod["tolerations"]} >= {"nvidia.com/gpu"}


@pytest.mark.parametrize("name", sorted(POOLS))
def test_pool_gpu_types_are_offered_by_an_allowed_primary(name: str) -> None:
    pool = POOLS[name]
    offered = {
        node_pool.gpu_type
        for provider in PROVIDERS.values()
        if provider.role == Role.PRIMARY and _allowed(pool, provider)
        for node_pool in provider.node_pools
    }

    assert set(pool.gpu_types) <= offered


@pytest.mark.parametrize("name", sorted(POOLS))
def test_pool_bursts_only_to_secondaries_its_data_policy_allows(name: str) -> None:
    pool = POOLS[name]

    for provider in pool.burst.providers:
        assert PROVIDERS[provider].role == Role.SECONDARY
        assert _allowed(pool, PROVIDERS[provider])


def test_image_generation_may_burst_and_chat_may_not() -> None:
    assert POOLS["image-gen"].burst.enabled
    assert not POOLS["chat"].burst.enabled
    assert CLASSES[_class_of(POOLS["chat"])] > CLASSES[_class_of(POOLS["image-gen"])]


def test_unapproved_provider_is_allowed_for_no_pool() -> None:
    (unapproved,) = [p for p in PROVIDERS.values() if not p.subprocessor.approved]

    assert [name for name, pool in POOLS.items() if _allowed(pool, unapproved)] == []


@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_budget_scope_selects_existing_node_pools(name: str) -> None:
    budget = BUDGETS[name]

    assert set(budget.scope.providers) <= set(PROVIDERS)
    assert set(budget.scope.sites) <= _sites(budget)
    assert _sites(budget)


@pytest.mark.parametrize("name", sorted(b for b in BUDGETS if BUDGETS[b].parent_ref))
def test_budget_nests_inside_its_parent(name: str) -> None:
    budget = BUDGETS[name]
    parent = BUDGETS[str(budget.parent_ref)]

    assert _sites(budget) <= _sites(parent)
    assert budget.cap_kilowatts <= parent.cap_kilowatts


def test_budgets_form_one_tree_of_fleet_region_and_sites() -> None:
    depth = {}
    for name in BUDGETS:
        steps, ref = 0, BUDGETS[name].parent_ref
        while ref is not None and steps <= len(BUDGETS):
            steps, ref = steps + 1, BUDGETS[ref].parent_ref
        depth[name] = steps

    assert sorted(depth.values()) == [0, 1, 2, 2]


def test_budgets_cover_measured_estimated_and_windowed_caps() -> None:
    types = {b.measurement.type.value for b in BUDGETS.values()}

    assert types == {"Prometheus", "Estimate"}
    assert any(b.windows for b in BUDGETS.values())
