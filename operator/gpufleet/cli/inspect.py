"""`gpufleet status` and `gpufleet explain`: the fleet as the operator reports it."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from gpufleet.api.common import GROUP, VERSION


@dataclass
class KubeTarget:
    """Which cluster the commands read: kubectl's own `--kubeconfig` and `--context` when
    run as `kubectl gpufleet` (cli/kubectl.py), else KUBECONFIG and its current context."""

    kubeconfig: str | None = None
    context: str | None = None


TARGET = KubeTarget()


def kube_client() -> Any:
    from kubernetes import client, config

    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=TARGET.kubeconfig, context=TARGET.context
    )
    return client.CustomObjectsApi()


def _list(api: Any, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
    if namespace:
        return list(api.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"])
    return list(api.list_cluster_custom_object(GROUP, VERSION, plural)["items"])


def _conditions(obj: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def _ready(obj: Mapping[str, Any]) -> str:
    ready = _conditions(obj).get("Ready")
    if not ready:
        return "?"
    return "True" if ready["status"] == "True" else f"False ({ready['reason']})"


def fleet_tables(
    pools: list[dict[str, Any]], providers: list[dict[str, Any]], budgets: list[dict[str, Any]]
) -> list[Table]:
    pool_table = Table(title="ServingPools")
    for column in (
        "pool",
        "mode",
        "desired",
        "current",
        "per provider",
        "queue",
        "kW",
        "burst %",
        "ready",
    ):
        pool_table.add_column(column)
    for pool in sorted(pools, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"])):
        status, spec = pool.get("status") or {}, pool.get("spec") or {}
        per = ", ".join(
            f"{p['provider']}: {p['currentReplicas']}/{p['desiredReplicas']}"
            for p in status.get("providers", [])
        )
        pool_table.add_row(
            f"{pool['metadata']['namespace']}/{pool['metadata']['name']}",
            spec.get("mode", "Active"),
            str(status.get("desiredReplicas", "")),
            str(status.get("currentReplicas", "")),
            per,
            str(status.get("queueDepth", "")),
            f"{status.get('powerWatts', 0) / 1000:.1f}",
            str(status.get("burstPercent", "")),
            _ready(pool),
        )
    provider_table = Table(title="CloudProviders")
    for column in (
        "provider",
        "role",
        "jurisdiction",
        "node pools (ready/desired)",
        "GPUs / quota",
        "ready",
    ):
        provider_table.add_column(column)
    for provider in sorted(providers, key=lambda p: p["metadata"]["name"]):
        status, spec = provider.get("status") or {}, provider["spec"]
        pools_text = ", ".join(
            f"{n['name']} {n['readyNodes']}/{n['desiredNodes']}"
            for n in status.get("nodePools", [])
        )
        sub = spec["subprocessor"]
        provider_table.add_row(
            provider["metadata"]["name"],
            spec.get("role", "Primary"),
            f"{sub['jurisdiction']}{'' if sub.get('approved') else ' (not approved)'}",
            pools_text,
            f"{status.get('gpusInUse', 0)} / {spec.get('gpuQuota', '-')}",
            _ready(provider),
        )
    budget_table = Table(title="PowerBudgets")
    for column in (
        "budget",
        "scope",
        "cap kW",
        "window",
        "drawn kW",
        "planned kW",
        "allowed kW",
        "cap reached",
    ):
        budget_table.add_column(column)
    for budget in sorted(budgets, key=lambda b: b["metadata"]["name"]):
        status, spec = budget.get("status") or {}, budget["spec"]
        scope = spec.get("scope") or {}
        scope_text = (
            ", ".join(
                [
                    *(f"site {s}" for s in scope.get("sites", [])),
                    *(f"provider {p}" for p in scope.get("providers", [])),
                ]
            )
            or "fleet"
        )
        budget_table.add_row(
            budget["metadata"]["name"],
            scope_text,
            str(spec["capKilowatts"]),
            status.get("activeWindow", ""),
            f"{status.get('drawnWatts', 0) / 1000:.1f}",
            f"{status.get('plannedWatts', 0) / 1000:.1f}",
            f"{status.get('allowedWatts', 0) / 1000:.1f}",
            _conditions(budget).get("CapReached", {}).get("status", "?"),
        )
    return [pool_table, provider_table, budget_table]


# Piped (to grep, a file, a CI log) there is no terminal width to fit: cells stay whole.
PIPE_WIDTH = 10_000


def status_console(terminal: bool) -> Console:
    return Console() if terminal else Console(width=PIPE_WIDTH)


def status() -> None:
    """A table of the fleet: pools, providers and power budgets, from their status."""
    api = kube_client()
    console = status_console(sys.stdout.isatty())
    for table in fleet_tables(
        _list(api, "servingpools"), _list(api, "cloudproviders"), _list(api, "powerbudgets")
    ):
        console.print(table)


def explain_lines(
    pool: Mapping[str, Any],
    providers: list[dict[str, Any]],
    budgets: list[dict[str, Any]],
    policies: list[dict[str, Any]] | None = None,
) -> list[str]:
    """Why the pool is at its size, layer by layer: pods, nodes, power, burst. `policies`:
    the TenantPolicies, whose terms for the pool's namespace narrow where it may go."""
    from gpufleet.api import parse_pool, parse_provider
    from gpufleet.api.parse import parse_tenant_policy
    from gpufleet.api.tenancy import UNGOVERNED, merge_terms
    from gpufleet.planner.placement import Refusal, data_policy_violation, refusal
    from gpufleet.planner.power import covers
    from gpufleet.planner.types import NodePoolKey

    status, meta = pool.get("status") or {}, pool["metadata"]
    conditions = _conditions(pool)
    lines = [
        f"{meta['namespace']}/{meta['name']}: {status.get('currentReplicas', '?')} replicas now, {status.get('desiredReplicas', '?')} wanted"
    ]
    parsed = parse_pool(pool.get("spec"))
    if parsed.value is None:
        return [*lines, "spec: invalid: " + "; ".join(map(str, parsed.errors))]
    spec = parsed.value

    def say(layer: str, kind: str) -> None:
        cond = conditions.get(kind)
        if cond:
            text = f" {cond['message']}" if cond.get("message") else ""
            lines.append(f"  {layer}: {kind}={cond['status']} ({cond['reason']}){text}")

    queue = status.get("queueDepth")
    if queue is not None:
        lines.append(
            f"  pods: queue {queue} at {spec.queue.target_per_replica} per replica -> "
            f"{-(-int(queue) // spec.queue.target_per_replica)} replicas by queue; bounds {spec.min_replicas}..{spec.max_replicas}"
        )
    rate = status.get("serviceRate")
    if rate:
        observed = rate.get("observedRequestsPerMinute")
        lines.append(
            f"  pods: sized at {rate['usedRequestsPerMinute']} requests/min a replica "
            f"({rate['source']}; declared {rate['declaredRequestsPerMinute']}"
            + (f", observed {observed}" if observed is not None else "")
            + ")"
        )
    throttle = status.get("throttle")
    if throttle:
        tiers = ", ".join(
            f"{t['name']} {t['allowedRequestsPerMinute']}/{t['demandRequestsPerMinute']} per min"
            for t in throttle.get("tiers", [])
        )
        lines.append(
            f"  throttle: the plan carries {throttle['sustainableRequestsPerMinute']} of "
            f"{throttle['demandRequestsPerMinute']} requests/min at the SLO"
            + (f"; admit by tier: {tiers}" if tiers else "")
        )
        lines.append(
            "  throttle: lifted by more quota or maxNodes on an allowed provider, a higher "
            "PowerBudget cap, or a secondary provider the data policy allows (burst)"
        )
    for kind, layer in (
        ("TargetFound", "pods"),
        ("MetricsAvailable", "pods"),
        ("ScalingActive", "pods"),
        ("ScalingLimited", "pods"),
        ("ServiceRateAccurate", "pods"),
        ("CapacityAvailable", "nodes"),
        ("PowerLimited", "power"),
        ("BurstActive", "burst"),
        ("Throttled", "throttle"),
    ):
        say(layer, kind)
    parsed_policies = [
        (p["metadata"]["name"], value)
        for p in policies or ()
        if (value := parse_tenant_policy(p.get("spec")).value) is not None
    ]
    terms = merge_terms(parsed_policies).get(meta["namespace"], UNGOVERNED)
    for provider in sorted(providers, key=lambda p: p["metadata"]["name"]):
        name = provider["metadata"]["name"]
        provider_spec = parse_provider(provider.get("spec")).value
        if provider_spec is None:
            continue
        why = data_policy_violation(spec, provider_spec)
        refused = refusal(spec, name, provider_spec, terms, meta["namespace"])
        role = provider_spec.role.value
        if why:
            lines.append(f"  burst: {name} ({role}) refused by the data policy: {why}")
        elif refused is not None and refused[0] == Refusal.NAMESPACE_POLICY:
            lines.append(f"  burst: {name} ({role}) refused by the platform: {refused[1]}")
        elif role == "Secondary" and not spec.burst.enabled:
            lines.append(
                f"  burst: {name} (Secondary) allowed by the data policy, but burst.enabled is false"
            )
        else:
            lines.append(f"  burst: {name} ({role}) allowed")
        for node_pool in provider_spec.node_pools:
            capped = [
                b["metadata"]["name"]
                for b in budgets
                if (bs := b.get("spec"))
                and _budget_covers(bs, NodePoolKey(name, node_pool.name), node_pool, covers)
                and _conditions(b).get("CapReached", {}).get("status") == "True"
            ]
            if capped and node_pool.gpu_type in spec.gpu_types:
                lines.append(
                    f"  power: {name}/{node_pool.name} is under a budget at its cap: {', '.join(capped)}"
                )
    return lines


def _budget_covers(spec: Mapping[str, Any], key: Any, node_pool: Any, covers: Any) -> bool:
    from gpufleet.api import parse_budget

    parsed = parse_budget(spec)
    return parsed.value is not None and bool(covers(parsed.value, key, node_pool))


def explain(
    pool: Annotated[str, typer.Argument(help="NAMESPACE/NAME of the ServingPool.")],
) -> None:
    """Why a pool is at its current size: across pod, node, power and burst layers."""
    from gpufleet.planner.types import PoolKey

    namespace, name = PoolKey.parse(pool)
    if not namespace:
        raise typer.BadParameter("give the pool as NAMESPACE/NAME")
    api = kube_client()
    obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "servingpools", name)
    for line in explain_lines(
        obj, _list(api, "cloudproviders"), _list(api, "powerbudgets"), _list(api, "tenantpolicies")
    ):
        typer.echo(line)
