"""plan_fleet: one pass from specs and a snapshot to replicas, nodes and power per budget."""

from __future__ import annotations

from collections.abc import Mapping

from gpufleet.planner.catalogs import catalog_of, signature_of
from gpufleet.planner.ledger import Ledger, Slot
from gpufleet.planner.nodes import (
    node_plans,
    recent_needs,
    record_needs,
    update_backoffs,
)
from gpufleet.planner.placement import Candidates, Progress, candidates
from gpufleet.planner.placer import Placer
from gpufleet.planner.pools import Sized, finish_pool, pool_placer, size_pool
from gpufleet.planner.power import (
    allowed_watts,
    busy_watts,
    cap_in_force,
    covers,
    node_watts,
    pool_draw,
)
from gpufleet.planner.sharing import priority_groups, share
from gpufleet.planner.spares import add_spares
from gpufleet.planner.types import (
    Backoff,
    BudgetPlan,
    Fleet,
    FleetPlan,
    NodePoolKey,
    Note,
    PlannerState,
    PoolKey,
    PoolMemory,
    PoolObservation,
    PoolPlan,
    Reason,
    Settings,
    Snapshot,
    frozen_map,
)

_NO_METRICS = PoolObservation(queue_depth=None)
_NONE: Mapping[NodePoolKey, int] = frozen_map()


def _open_ledger(
    fleet: Fleet,
    snapshot: Snapshot,
    backoffs: Mapping[NodePoolKey, Backoff],
    kept: Mapping[NodePoolKey, int],
    now: float,
) -> tuple[Ledger, list[str], list[tuple[float, str | None]]]:
    budget_names = sorted(fleet.budgets)
    caps = [cap_in_force(fleet.budgets[name], now) for name in budget_names]
    budgets = [fleet.budgets[name] for name in budget_names]
    # Most budgets name sites: look them up by site instead of testing every budget.
    everywhere = [i for i, b in enumerate(budgets) if not b.scope.sites]
    by_site: dict[str, list[int]] = {}
    for i, b in enumerate(budgets):
        for site in b.scope.sites:
            by_site.setdefault(site, list(everywhere)).append(i)
    for site_list in by_site.values():
        site_list.sort()
    slots: dict[NodePoolKey, Slot] = {}
    for provider_name in sorted(fleet.providers):
        provider = fleet.providers[provider_name]
        held = provider_name in snapshot.unreachable_providers
        for node_pool in provider.node_pools:
            key = NodePoolKey(provider_name, node_pool.name)
            observed = snapshot.node_pools.get(key)
            ready = observed.ready_nodes if observed else 0
            target = observed.target_nodes if observed else 0
            in_backoff = key in backoffs and now < backoffs[key].until
            covering = tuple(
                i
                for i in by_site.get(node_pool.site, everywhere)
                if covers(budgets[i], key, node_pool)
            )
            slots[key] = slot = Slot(
                key=key,
                spec=node_pool,
                provider=provider,
                budgets=covering,
                # Nodes asked for but failing with a capacity error will not come: count ready.
                existing_nodes=ready if in_backoff else max(target, ready),
                node_limit=min(node_pool.max_nodes, max(ready, node_pool.min_nodes))
                if in_backoff
                else node_pool.max_nodes,
                backoff=in_backoff,
                held=held,
                floor=node_pool.min_nodes,
            )
            if key in kept:
                slot.kept = min(kept[key], slot.existing_nodes)
                slot.floor = max(slot.floor, slot.kept)
    ledger = Ledger(
        slots=slots,
        quota={name: p.gpu_quota for name, p in fleet.providers.items()},
        namespace_gpus=dict(fleet.namespace_gpus),
        namespace_used=_namespace_use(fleet, snapshot),
        budget_used=[0.0] * len(budget_names),
        budget_allowed=[
            allowed_watts(fleet.budgets[n], cap)
            for n, (cap, _) in zip(budget_names, caps, strict=True)
        ],
    )
    ledger.open()
    _calibrate(ledger, fleet, snapshot, budget_names)
    return ledger, budget_names, caps


def _namespace_use(fleet: Fleet, snapshot: Snapshot) -> dict[str, int]:
    """GPUs the replicas that run now hold, per namespace with a quota: the API server
    counts them against it until they are gone, so more are charged only beyond them."""
    used: dict[str, int] = {}
    for key, spec in fleet.pools.items():
        if key.namespace in fleet.namespace_gpus:
            running = snapshot.pools.get(key, _NO_METRICS).total_replicas
            used[key.namespace] = used.get(key.namespace, 0) + running * spec.gpus_per_replica
    return used


def _calibrate(ledger: Ledger, fleet: Fleet, snapshot: Snapshot, budget_names: list[str]) -> None:
    """Add what a measurement shows above our estimate of the present (other loads in scope)."""
    if all(snapshot.budget_watts.get(name) is None for name in budget_names):
        return
    busy: dict[NodePoolKey, float] = {}
    for key, observation in snapshot.pools.items():
        spec = fleet.pools.get(key)
        if spec is None:
            continue
        drawn = pool_draw(spec, observation.watts_per_gpu)
        for node_pool_key, replicas in observation.replicas.items():
            slot = ledger.slots.get(node_pool_key)
            if slot is None:
                continue
            busy[node_pool_key] = busy.get(node_pool_key, 0.0) + (
                replicas * spec.gpus_per_replica * busy_watts(drawn, slot.spec)
            )
    for index, name in enumerate(budget_names):
        measured = snapshot.budget_watts.get(name)
        if measured is None:
            continue
        estimate = 0.0
        for slot in ledger.slots.values():
            if index in slot.budgets:
                observed = snapshot.node_pools.get(slot.key)
                nodes = observed.target_nodes if observed else 0
                estimate += nodes * node_watts(slot.spec) + busy.get(slot.key, 0.0)
        ledger.budget_used[index] += max(0.0, measured - estimate)


def _budget_plans(
    fleet: Fleet,
    snapshot: Snapshot,
    ledger: Ledger,
    names: list[str],
    caps: list[tuple[float, str | None]],
) -> dict[str, BudgetPlan]:
    plans = {}
    for index, name in enumerate(names):
        cap, window = caps[index]
        measured = snapshot.budget_watts.get(name)
        notes: list[Note] = []
        if fleet.budgets[name].measurement.type.value == "Prometheus" and measured is None:
            notes.append(
                Note(Reason.MEASUREMENT_UNAVAILABLE, "power query unavailable: using the estimate")
            )
        if index in ledger.capped:
            notes.append(
                Note(
                    Reason.CAP_REACHED,
                    f"plan held at {ledger.budget_used[index]:.0f} W of "
                    f"{ledger.budget_allowed[index]:.0f} W allowed",
                )
            )
        plans[name] = BudgetPlan(
            name=name,
            cap_watts=cap,
            allowed_watts=ledger.budget_allowed[index],
            planned_watts=ledger.budget_used[index],
            measured_watts=measured,
            active_window=window,
            notes=tuple(notes),
        )
    return plans


def plan_fleet(
    fleet: Fleet,
    snapshot: Snapshot,
    state: PlannerState,
    now: float,
    settings: Settings | None = None,
) -> FleetPlan:
    """Decide replicas per pool and node pool, and nodes per node pool, for this tick."""
    settings = settings or Settings()
    backoffs = update_backoffs(state.backoffs, snapshot, now, settings)
    catalog = catalog_of(fleet.providers)
    delays = catalog.delays
    needs = recent_needs(state.node_needs, delays, now)
    kept = {key: entries[0][1] for key, entries in needs.items()}
    ledger, budget_names, caps = _open_ledger(fleet, snapshot, backoffs, kept, now)
    order = sorted(fleet.pools, key=lambda k: (-fleet.priority(k), k.namespace, k.name))
    cache: dict[tuple[object, ...], tuple[Candidates, Progress]] = {}
    pool_plans: dict[PoolKey, PoolPlan] = {}
    memories: dict[PoolKey, PoolMemory] = {}
    options_of: dict[PoolKey, Candidates] = {}
    fair: list[PoolKey] = []  # `order`, by hash within a priority: who gets spare room first
    for group in priority_groups(order, fleet.priority):
        fair.extend(group)
        sized: list[Sized] = []
        placers: list[Placer] = []
        for key in group:
            spec = fleet.pools[key]
            terms = fleet.terms_of(key.namespace)
            namespace = key.namespace if catalog.restricts_namespaces else None
            signature = signature_of(spec, terms, namespace)
            if signature not in cache:
                options = catalog.memo.get(signature)
                if options is None:
                    options = catalog.memo[signature] = candidates(spec, catalog, terms, namespace)
                cache[signature] = (options, Progress(options))
            options, progress = cache[signature]
            one = size_pool(
                key,
                spec,
                snapshot.pools.get(key, _NO_METRICS),
                state.pools.get(key, PoolMemory()),
                options,
                ledger,
                now,
                settings,
            )
            sized.append(one)
            placers.append(pool_placer(one, ledger, progress))
            options_of[key] = options
        share(placers)
        for one, placer in zip(sized, placers, strict=True):
            pool_plans[one.key], memories[one.key] = finish_pool(one, placer, ledger, now)
    needs = record_needs(needs, ledger, delays, now)  # demand only: spares come next
    draws = {
        k: pool_draw(fleet.pools[k], snapshot.pools.get(k, _NO_METRICS).watts_per_gpu)
        for k in order
    }
    add_spares(fair, fleet.pools, options_of, pool_plans, ledger, draws)
    return FleetPlan(
        pools=frozen_map({k: pool_plans[k] for k in order}),
        node_pools=frozen_map(node_plans(ledger, snapshot, needs)),
        budgets=frozen_map(_budget_plans(fleet, snapshot, ledger, budget_names, caps)),
        state=PlannerState(
            pools=frozen_map(memories),
            backoffs=frozen_map(backoffs),
            node_needs=frozen_map(needs),
        ),
    )
