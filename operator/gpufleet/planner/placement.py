"""Where a pool's replicas go: which node pools it may use, in what order, and how many fit.

Order: primary providers before secondary ones (burst), then the user's order, Spot before
OnDemand where the pool allows Spot, then price per GPU. Replicas stay where they are while
they are wanted; growth fills free GPUs on existing nodes before asking for new nodes; a
shrinking pool leaves its least preferred (burst) node pools first.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from gpufleet.api.pool import DataClass, ServingPoolSpec
from gpufleet.api.provider import CapacityType, CloudProviderSpec, NodePool, Role
from gpufleet.api.tenancy import DATA_CLASS_RANK, UNGOVERNED, NamespaceTerms
from gpufleet.planner.power import NAMEPLATE_ONLY, power_figures
from gpufleet.planner.types import NodePoolKey, PowerFigure, Reason

# The 27 member states, ISO 3166-1 alpha-2 ("EU" in allowedJurisdictions means any of them).
EU_MEMBERS = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "HU",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
    ]
)


def jurisdiction_allowed(allowed: list[str], jurisdiction: str) -> bool:
    if not allowed:
        return True
    country = jurisdiction.split("-", 1)[0]
    return any(
        a in (jurisdiction, country) or (a == "EU" and (country in EU_MEMBERS or country == "EU"))
        for a in allowed
    )


def data_policy_violation(pool: ServingPoolSpec, provider: CloudProviderSpec) -> str | None:
    """Why the provider may not process the pool's data, or None when it may."""
    policy, facts = pool.data_policy, provider.subprocessor
    if policy.approved_subprocessors_only and not facts.approved:
        return f"subprocessor {facts.legal_entity} is not approved"
    if not jurisdiction_allowed(policy.allowed_jurisdictions, facts.jurisdiction):
        return (
            f"jurisdiction {facts.jurisdiction} is not in allowedJurisdictions "
            f"{policy.allowed_jurisdictions}"
        )
    if policy.data_class != DataClass.PUBLIC and policy.data_class not in facts.data_classes:
        return f"data class {policy.data_class.value} is not in the provider's dataClasses"
    return None


class Refusal(StrEnum):
    BURST_DISABLED = "BurstDisabled"
    NOT_A_BURST_TARGET = "NotABurstTarget"
    DATA_POLICY = "DataPolicy"  # the pool's own data policy
    NAMESPACE_POLICY = "NamespacePolicy"  # its namespace's TenantPolicy, or the provider's


def _policies(terms: NamespaceTerms) -> str:
    return "TenantPolicy " + ", ".join(terms.policies) if terms.policies else "TenantPolicy"


def namespace_violation(
    pool: ServingPoolSpec, terms: NamespaceTerms, provider: CloudProviderSpec
) -> str | None:
    """Why the namespace's terms refuse the provider where the pool's own policy does not:
    the pool's policy narrowed by them (class raised to the floor, approved-only forced,
    jurisdictions of both), or None."""
    facts = provider.subprocessor
    if terms.approved_subprocessors_only and not facts.approved:
        return (
            f"{_policies(terms)}: dataPolicy.approvedSubprocessorsOnly, and subprocessor "
            f"{facts.legal_entity} is not approved"
        )
    allowed = list(terms.allowed_jurisdictions)
    if not jurisdiction_allowed(allowed, facts.jurisdiction):
        return (
            f"{_policies(terms)}: jurisdiction {facts.jurisdiction} is not in "
            f"dataPolicy.allowedJurisdictions {allowed}"
        )
    own = pool.data_policy.data_class
    floor = terms.min_data_class
    effective = floor if DATA_CLASS_RANK[floor] > DATA_CLASS_RANK[own] else own
    if effective != DataClass.PUBLIC and effective not in facts.data_classes:
        return (
            f"{_policies(terms)}: dataPolicy.minDataClass {floor.value} makes the pool "
            f"{effective.value}, which is not in the provider's dataClasses"
        )
    return None


def refusal(
    pool: ServingPoolSpec,
    name: str,
    provider: CloudProviderSpec,
    terms: NamespaceTerms = UNGOVERNED,
    namespace: str | None = None,
) -> tuple[Refusal, str] | None:
    """Why the pool may not use the provider at all, or None: the provider's `namespaces`
    (checked where `namespace` is given), burst settings and data policies, the pool's own
    before its namespace's terms (the pool's own refusal is the one to report)."""
    if namespace is not None and provider.namespaces and namespace not in provider.namespaces:
        # Never the namespaces it does serve: other tenants' names are not this pool's.
        return (
            Refusal.NAMESPACE_POLICY,
            f"CloudProvider {name} does not serve namespace {namespace}",
        )
    if provider.role == Role.SECONDARY:
        if not pool.burst.enabled:
            return Refusal.BURST_DISABLED, "burst.enabled is false"
        if pool.burst.providers and name not in pool.burst.providers:
            return Refusal.NOT_A_BURST_TARGET, f"{name} is not in burst.providers"
    why = data_policy_violation(pool, provider)
    if why is not None:
        return Refusal.DATA_POLICY, why
    if provider.role == Role.SECONDARY:
        if not terms.burst_allowed:
            return Refusal.NAMESPACE_POLICY, f"{_policies(terms)}: burst.allowed is false"
        if terms.burst_providers is not None and name not in terms.burst_providers:
            return Refusal.NAMESPACE_POLICY, (
                f"{_policies(terms)}: {name} is not in burst.providers "
                f"{sorted(terms.burst_providers)}"
            )
    why = namespace_violation(pool, terms, provider)
    return (Refusal.NAMESPACE_POLICY, why) if why is not None else None


@dataclass(frozen=True)
class Candidates:
    """Node pools a pool may use: in order for keeping and filling, and for new nodes."""

    fill: tuple[NodePoolKey, ...]
    grow: tuple[NodePoolKey, ...]
    blocked: tuple[tuple[str, str], ...]  # (provider, why): refused by the pool's data policy
    burst_disabled: bool  # secondaries exist that burst.enabled would open
    # (provider, why): refused by the namespace's terms or the provider's `namespaces`
    denied: tuple[tuple[str, str], ...] = ()
    # One node pool of each distinct (GPU type, watts, idle watts) among `fill`: what a
    # pool's power figures depend on, so that reporting them costs the kinds, not the pools.
    power_kinds: tuple[NodePool, ...] = ()

    @cached_property
    def nameplate(self) -> tuple[PowerFigure, ...]:
        """The power figures of a pool neither measured nor declaring any: shared by every
        pool of the candidate list, so worked out once."""
        return power_figures(NAMEPLATE_ONLY, self.power_kinds)

    @cached_property
    def rank(self) -> dict[NodePoolKey, int]:
        return {key: index for index, key in enumerate(self.fill)}

    @cached_property
    def refused(self) -> dict[str, str]:
        """Why each provider the data policies (the pool's or the platform's) refuse is."""
        return dict(self.blocked + self.denied)


@dataclass(frozen=True)
class Entry:
    key: NodePoolKey
    secondary: bool
    gpus_per_node: int
    spot: bool
    boot_seconds: int
    order: tuple[object, ...]
    spec: NodePool


class Catalog:
    """Every node pool once, in preference order by GPU type; built once per plan."""

    def __init__(self, providers: Mapping[str, CloudProviderSpec]) -> None:
        self.providers = providers
        by_type: dict[str, list[Entry]] = {}
        for name, provider in providers.items():
            secondary = provider.role == Role.SECONDARY
            for node_pool in provider.node_pools:
                spot = node_pool.capacity_type == CapacityType.SPOT
                price = node_pool.hourly_price_cents / node_pool.gpus_per_node
                # Spot ranks first; pools that may not use Spot never see those entries.
                order = (int(secondary), provider.order, int(not spot), price, name, node_pool.name)
                entry = Entry(
                    NodePoolKey(name, node_pool.name),
                    secondary,
                    node_pool.gpus_per_node,
                    spot,
                    node_pool.boot_seconds,
                    order,
                    node_pool,
                )
                by_type.setdefault(node_pool.gpu_type, []).append(entry)
        self.by_type = {t: sorted(entries, key=_order) for t, entries in by_type.items()}
        # Seconds each node pool keeps a node its demand stopped needing (planner/nodes.py).
        self.delays = {
            NodePoolKey(name, node_pool.name): float(
                node_pool.boot_seconds
                if node_pool.scale_down_delay_seconds is None
                else node_pool.scale_down_delay_seconds
            )
            for name, provider in providers.items()
            for node_pool in provider.node_pools
        }
        # Every node pool with its key and provider, by provider name: the ledger's order.
        self.node_pools = tuple(
            (NodePoolKey(name, node_pool.name), node_pool, providers[name])
            for name in sorted(providers)
            for node_pool in providers[name].node_pools
        )
        # Candidate lists by pool signature, filled by the planner (see catalogs.catalog_of).
        self.memo: dict[tuple[object, ...], Candidates] = {}
        # Whether any provider admits only some namespaces: then the namespace decides too.
        self.restricts_namespaces = any(p.namespaces for p in providers.values())
        self._merged: dict[frozenset[str], list[Entry]] = {}

    def of_types(self, gpu_types: frozenset[str]) -> list[Entry]:
        """Node pools of any of the types, in preference order; shared by pools alike."""
        merged = self._merged.get(gpu_types)
        if merged is None:
            lists = [self.by_type[t] for t in sorted(gpu_types) if t in self.by_type]
            merged = self._merged[gpu_types] = list(heapq.merge(*lists, key=_order))
        return merged


def _order(entry: Entry) -> tuple[object, ...]:
    return entry.order


def candidates(
    pool: ServingPoolSpec,
    catalog: Catalog,
    terms: NamespaceTerms = UNGOVERNED,
    namespace: str | None = None,
) -> Candidates:
    """The node pools the pool may use under its own settings and its namespace's terms
    (`namespace`: its namespace, for the providers' `namespaces`)."""
    allowed: set[str] = set()
    blocked: list[tuple[str, str]] = []
    denied: list[tuple[str, str]] = []
    burst_disabled = False
    for name in sorted(catalog.providers):
        refused = refusal(pool, name, catalog.providers[name], terms, namespace)
        if refused is None:
            allowed.add(name)
        elif refused[0] == Refusal.BURST_DISABLED:
            burst_disabled = True
        elif refused[0] == Refusal.DATA_POLICY:
            blocked.append((name, refused[1]))
        elif refused[0] == Refusal.NAMESPACE_POLICY:
            denied.append((name, refused[1]))
    merged = catalog.of_types(frozenset(pool.gpu_types))
    gpus, spot_ok = pool.gpus_per_replica, pool.allow_spot
    eligible = [
        e
        for e in merged
        if e.key.provider in allowed and e.gpus_per_node >= gpus and (spot_ok or not e.spot)
    ]
    fill = tuple(e.key for e in eligible)
    kinds = tuple(
        {
            (e.spec.gpu_type, e.spec.watts_per_gpu, e.spec.idle_watts_per_gpu): e.spec
            for e in eligible
        }.values()
    )
    max_lead = pool.burst.max_lead_seconds
    if max_lead is None:
        return Candidates(fill, fill, tuple(blocked), burst_disabled, tuple(denied), kinds)
    # Node pools whose lead time misses the bound go after every faster one, burst included.
    load = pool.model_load_seconds
    grow = tuple(
        e.key
        for e in sorted(eligible, key=lambda e: (int(e.boot_seconds + load > max_lead), e.order))
    )
    return Candidates(fill, grow, tuple(blocked), burst_disabled, tuple(denied), kinds)


class Progress:
    """Per plan and candidate list: node pools that can take no more replicas of its size.

    Placements only ever add to the ledger within a plan, so a node pool that is full (node
    limit, quota, power, back-off) stays full. Skipping those with path-compressed pointers
    keeps a plan linear in pools plus node pools instead of their product.
    """

    def __init__(self, options: Candidates) -> None:
        self._next = {
            False: list(range(len(options.fill) + 1)),
            True: list(range(len(options.grow) + 1)),
        }
        self.full: dict[Reason, list[str]] = {}

    def find(self, new_nodes: bool, index: int) -> int:
        pointers = self._next[new_nodes]
        root = index
        while pointers[root] != root:
            root = pointers[root]
        while pointers[index] != root:
            pointers[index], index = root, pointers[index]
        return root

    def close(self, new_nodes: bool, index: int, key: NodePoolKey, reason: Reason | None) -> None:
        self._next[new_nodes][index] = index + 1
        if reason is not None and new_nodes:
            self.full.setdefault(reason, []).append(str(key))
