"""plan_fleet: one pass from specs and a snapshot to replicas, nodes and power per budget."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from gpufleet.api.pool import ServingPoolSpec
from gpufleet.planner.catalogs import catalog_of
from gpufleet.planner.facts import PoolFacts, facts_of
from gpufleet.planner.ledger import Ledger, Slot, node_units
from gpufleet.planner.nodes import (
    kept_nodes,
    node_plans,
    recent_needs,
    record_needs,
    update_backoffs,
)
from gpufleet.planner.placement import Candidates, Catalog, Progress, candidates
from gpufleet.planner.placer import Placer
from gpufleet.planner.pools import Sized, finish_pool, pool_placer, size_pool
from gpufleet.planner.power import (
    PoolDraw,
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
)

_NO_METRICS = PoolObservation(queue_depth=None)
_NO_MEMORY = PoolMemory()


def _open_ledger(
    fleet: Fleet,
    catalog: Catalog,
    snapshot: Snapshot,
    backoffs: Mapping[NodePoolKey, Backoff],
    kept: Mapping[NodePoolKey, tuple[int, int]],
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
    # Where no budget names providers, a site's budgets cover all its node pools: one tuple
    # each, shared, instead of testing every budget of the site for every node pool.
    by_provider = any(b.scope.providers for b in budgets)
    site_tuples = {site: tuple(site_list) for site, site_list in by_site.items()}
    everywhere_tuple = tuple(everywhere)
    unreachable, observed_nodes = snapshot.unreachable_providers, snapshot.node_pools
    slots: dict[NodePoolKey, Slot] = {}
    for key, node_pool, provider in catalog.node_pools:
        observed = observed_nodes.get(key)
        ready = observed.ready_nodes if observed else 0
        target = observed.target_nodes if observed else 0
        in_backoff = key in backoffs and now < backoffs[key].until
        if by_provider:
            covering = tuple(
                i
                for i in by_site.get(node_pool.site, everywhere)
                if covers(budgets[i], key, node_pool)
            )
        else:  # the site's budgets, and those without sites, cover it
            covering = site_tuples.get(node_pool.site, everywhere_tuple)
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
            held=key.provider in unreachable,
            unit=node_units(node_pool.gpus_per_node),
            floor=node_pool.min_nodes,
        )
        if key in kept:
            nodes, warm = kept[key]
            slot.kept = min(nodes, slot.existing_nodes)
            slot.warm = min(warm, slot.kept)
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
    if not fleet.namespace_gpus:
        return used
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


class _Shared:
    """What pools with one candidate list share within a plan: the list, its `Progress`,
    and the boot seconds of the first node pool it would grow (None: none can grow)."""

    __slots__ = ("boot", "options", "progress")

    def __init__(self, options: Candidates, ledger: Ledger) -> None:
        self.options, self.progress = options, Progress(options)
        # Which node pools are held is fixed for the plan, so this is too (pools._lead_seconds).
        self.boot: int | None = None
        for key in options.grow:
            slot = ledger.slots.get(key)
            if slot is not None and not slot.held:
                self.boot = slot.spec.boot_seconds
                break


def _shared_lists(
    fleet: Fleet, catalog: Catalog, ledger: Ledger
) -> Callable[[PoolKey, ServingPoolSpec, PoolFacts], _Shared]:
    """Each pool's candidate list, one per signature (catalogs.signature_of) and plan.

    Hashing a whole signature per pool cost more than building the lists: pools are looked
    up first by the identities of their namespace's terms and of their spec's signature
    tuple (facts.PoolFacts; both held for the plan, so no other object can take their
    identities), then by the signature itself, so that pools alike share one list and one
    `Progress` however they were found."""
    by_token: dict[tuple[int, str | None, int], tuple[tuple[object, ...], _Shared]] = {}
    by_signature: dict[tuple[object, ...], _Shared] = {}
    restricts = catalog.restricts_namespaces

    def shared(key: PoolKey, spec: ServingPoolSpec, facts: PoolFacts) -> _Shared:
        terms = fleet.terms_of(key.namespace)
        namespace = key.namespace if restricts else None
        token = (id(terms), namespace, id(facts.signature))
        hit = by_token.get(token)
        if hit is not None:
            return hit[1]
        signature = (terms, namespace, *facts.signature)
        found = by_signature.get(signature)
        if found is None:
            options = catalog.memo.get(signature)
            if options is None:
                options = catalog.memo[signature] = candidates(spec, catalog, terms, namespace)
            found = by_signature[signature] = _Shared(options, ledger)
        by_token[token] = (facts.signature, found)  # holds the tuple: its id stays its own
        return found

    return shared


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
    kept = kept_nodes(needs, delays, now)
    ledger, budget_names, caps = _open_ledger(fleet, catalog, snapshot, backoffs, kept, now)
    priorities = fleet.priorities
    # PoolKey orders as (namespace, name).
    order = sorted(fleet.pools, key=lambda k: (-priorities.get(k, 0), k))
    shared_list = _shared_lists(fleet, catalog, ledger)
    specs, observed, remembered = fleet.pools, snapshot.pools, state.pools
    pool_plans: dict[PoolKey, PoolPlan] = {}
    memories: dict[PoolKey, PoolMemory] = {}
    options_of: dict[PoolKey, Candidates] = {}
    draws: dict[PoolKey, PoolDraw] = {}
    # The pools that ask for warm spares, in the order they get spare room: `order`, by hash
    # within a priority (the groups' order).
    spare_takers: list[PoolKey] = []
    for group in priority_groups(order, fleet.priority):
        sized: list[Sized] = []
        placers: list[Placer] = []
        for key in group:
            spec = specs[key]
            facts = facts_of(spec)
            shared = shared_list(key, spec, facts)
            options = shared.options
            one = size_pool(
                key,
                spec,
                observed.get(key, _NO_METRICS),
                remembered.get(key, _NO_MEMORY),
                options,
                ledger,
                now,
                settings,
                shared.boot,
                facts,
            )
            sized.append(one)
            placer = pool_placer(one, ledger, shared.progress)
            placers.append(placer)
            if facts.warm_spares:  # add_spares reads these of the pools it gives to
                spare_takers.append(key)
                options_of[key] = options
                draws[key] = placer.draw
        share(placers)
        for one, placer in zip(sized, placers, strict=True):
            pool_plans[one.key], memories[one.key] = finish_pool(one, placer, ledger, now)
    needs = record_needs(needs, ledger, delays, now)  # demand only: spares come next
    add_spares(spare_takers, fleet.pools, options_of, pool_plans, ledger, draws)
    return FleetPlan(
        pools=MappingProxyType({k: pool_plans[k] for k in order}),
        node_pools=MappingProxyType(node_plans(ledger, snapshot, needs)),
        budgets=MappingProxyType(_budget_plans(fleet, snapshot, ledger, budget_names, caps)),
        state=PlannerState(
            pools=MappingProxyType(memories),
            backoffs=MappingProxyType(backoffs),
            node_needs=MappingProxyType(needs),
        ),
    )
