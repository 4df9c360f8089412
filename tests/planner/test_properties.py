"""Invariants over random fleets and observations (hypothesis)."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.api.provider import CloudProviderSpec, Role
from gpufleet.planner import (
    Fleet,
    FleetPlan,
    NodePoolKey,
    NodePoolObservation,
    PlannerState,
    PoolKey,
    PoolObservation,
    Snapshot,
    plan_fleet,
)
from gpufleet.planner.placement import data_policy_violation
from gpufleet.planner.power import busy_gpu_watts, covers, node_watts
from gpufleet.planner.types import frozen_map

from .builders import NS, budget, node_pool, pool, provider

GPU_TYPES = ["H100", "L40S"]
JURISDICTIONS = ["DE", "NL", "US", "FR"]


@st.composite
def fleets(draw: st.DrawFn) -> Fleet:
    providers: dict[str, CloudProviderSpec] = {}
    for i in range(draw(st.integers(1, 3))):
        pools_ = [
            node_pool(
                f"np{j}",
                gpuType=draw(st.sampled_from(GPU_TYPES)),
                gpusPerNode=draw(st.sampled_from([1, 2, 4, 8])),
                maxNodes=draw(st.integers(0, 6)),
                site=draw(st.sampled_from(["fra1", "fra2", "ams1"])),
                hourlyPriceCents=draw(st.integers(0, 10000)),
                capacityType=draw(st.sampled_from(["OnDemand", "Spot"])),
                bootSeconds=draw(st.integers(0, 900)),
            )
            for j in range(draw(st.integers(1, 3)))
        ]
        providers[f"p{i}"] = provider(
            role="Primary" if i == 0 else draw(st.sampled_from(["Primary", "Secondary"])),
            jurisdiction=draw(st.sampled_from(JURISDICTIONS)),
            approved=draw(st.booleans()),
            node_pools=pools_,
            gpuQuota=draw(st.one_of(st.none(), st.integers(0, 40))),
        )
    pools = {}
    priorities = {}
    for i in range(draw(st.integers(1, 4))):
        max_replicas = draw(st.integers(1, 40))
        overrides: dict[str, Any] = {
            "gpuTypes": draw(
                st.lists(st.sampled_from(GPU_TYPES), min_size=1, max_size=2, unique=True)
            ),
            "gpusPerReplica": draw(st.sampled_from([1, 2, 4])),
            "minReplicas": draw(st.integers(0, max_replicas)),
            "maxReplicas": max_replicas,
            "allowSpot": draw(st.booleans()),
            "burst": {"enabled": draw(st.booleans())},
            "dataPolicy": {
                "allowedJurisdictions": draw(
                    st.lists(st.sampled_from([*JURISDICTIONS, "EU"]), max_size=2, unique=True)
                ),
                "approvedSubprocessorsOnly": draw(st.booleans()),
            },
        }
        pools[PoolKey(NS, f"pool{i}")] = pool(**overrides)
        priorities[PoolKey(NS, f"pool{i}")] = draw(st.integers(0, 3))
    budgets = {}
    for i in range(draw(st.integers(0, 2))):
        scope = draw(st.sampled_from([{}, {"sites": ["fra1"]}, {"providers": ["p0"]}]))
        budgets[f"b{i}"] = budget(
            draw(st.integers(0, 60)), scope=scope, headroomPercent=draw(st.integers(0, 20))
        )
    return Fleet(
        frozen_map(pools),
        frozen_map(providers),
        frozen_map(budgets),
        priorities=frozen_map(priorities),
    )


def queues(fleet: Fleet) -> st.SearchStrategy[dict[PoolKey, float | None]]:
    return st.fixed_dictionaries(
        {k: st.one_of(st.none(), st.floats(0, 2000, allow_nan=False)) for k in fleet.pools}
    )


def snapshot_of(queue: dict[PoolKey, float | None]) -> Snapshot:
    return Snapshot(pools=frozen_map({k: PoolObservation(queue_depth=q) for k, q in queue.items()}))


def planned_watts(fleet: Fleet, plan: FleetPlan, name: str) -> float:
    total = 0.0
    for key, node_plan in plan.node_pools.items():
        spec = next(n for n in fleet.providers[key.provider].node_pools if n.name == key.node_pool)
        if covers(fleet.budgets[name], key, spec):
            total += node_plan.desired_nodes * node_watts(
                spec
            ) + node_plan.gpus_allocated * busy_gpu_watts(spec)
    return total


COMMON = settings(max_examples=150, deadline=None)


@COMMON
@given(st.data())
def test_no_budget_quota_or_maximum_is_exceeded(data: st.DataObject) -> None:
    fleet = data.draw(fleets())
    plan = plan_fleet(fleet, snapshot_of(data.draw(queues(fleet))), PlannerState(), 0.0)
    for name, spec in fleet.budgets.items():
        allowed = spec.cap_kilowatts * 1000 * (1 - spec.headroom_percent / 100)
        assert planned_watts(fleet, plan, name) <= allowed + 1e-6
    gpus: dict[str, int] = {}
    for key, node_plan in plan.node_pools.items():
        spec = next(n for n in fleet.providers[key.provider].node_pools if n.name == key.node_pool)
        assert node_plan.desired_nodes <= spec.max_nodes
        assert node_plan.gpus_allocated <= node_plan.desired_nodes * spec.gpus_per_node
        gpus[key.provider] = (
            gpus.get(key.provider, 0) + node_plan.desired_nodes * spec.gpus_per_node
        )
    for name, provider_spec in fleet.providers.items():
        if provider_spec.gpu_quota is not None:
            assert gpus.get(name, 0) <= provider_spec.gpu_quota
    for key, pool_plan in plan.pools.items():
        spec = fleet.pools[key]
        assert pool_plan.desired_replicas <= spec.max_replicas
        assert pool_plan.desired_replicas + pool_plan.unplaced_replicas >= spec.min_replicas


@COMMON
@given(st.data())
def test_no_replica_lands_where_the_data_policy_forbids(data: st.DataObject) -> None:
    fleet = data.draw(fleets())
    plan = plan_fleet(fleet, snapshot_of(data.draw(queues(fleet))), PlannerState(), 0.0)
    for key, pool_plan in plan.pools.items():
        spec = fleet.pools[key]
        for node_pool_key in pool_plan.placements:
            provider_spec = fleet.providers[node_pool_key.provider]
            assert data_policy_violation(spec, provider_spec) is None
            if provider_spec.role == Role.SECONDARY:
                assert spec.burst.enabled


@COMMON
@given(st.data())
def test_plan_is_deterministic_and_idempotent(data: st.DataObject) -> None:
    fleet = data.draw(fleets())
    queue = data.draw(queues(fleet))
    first = plan_fleet(fleet, snapshot_of(queue), PlannerState(), 100.0)
    assert plan_fleet(fleet, snapshot_of(queue), PlannerState(), 100.0) == first
    applied = Snapshot(
        pools=frozen_map(
            {
                k: PoolObservation(queue_depth=q, replicas=first.pools[k].placements)
                for k, q in queue.items()
            }
        ),
        node_pools=frozen_map(
            {
                k: NodePoolObservation(ready_nodes=p.desired_nodes, target_nodes=p.desired_nodes)
                for k, p in first.node_pools.items()
            }
        ),
    )
    again = plan_fleet(fleet, applied, first.state, 100.0)
    for key, pool_plan in first.pools.items():
        assert again.pools[key].desired_replicas == pool_plan.desired_replicas
        assert dict(again.pools[key].placements) == dict(pool_plan.placements)
    for key, node_plan in first.node_pools.items():
        assert again.node_pools[key].desired_nodes == node_plan.desired_nodes


@COMMON
@given(st.data())
def test_scale_up_is_monotone_in_queue_depth(data: st.DataObject) -> None:
    fleet = data.draw(fleets())
    queue = data.draw(queues(fleet))
    target = data.draw(st.sampled_from(sorted(fleet.pools)))
    low = data.draw(st.floats(0, 1000))
    high = low + data.draw(st.floats(0, 1000))
    plan_low = plan_fleet(fleet, snapshot_of({**queue, target: low}), PlannerState(), 0.0)
    plan_high = plan_fleet(fleet, snapshot_of({**queue, target: high}), PlannerState(), 0.0)
    assert plan_low.pools[target].desired_replicas <= plan_high.pools[target].desired_replicas


@COMMON
@given(st.data())
def test_missing_metrics_never_scale_down(data: st.DataObject) -> None:
    fleet = data.draw(fleets())
    target = data.draw(st.sampled_from(sorted(fleet.pools)))
    first = plan_fleet(fleet, snapshot_of(dict.fromkeys(fleet.pools, 500.0)), PlannerState(), 0.0)
    observed = Snapshot(
        pools=frozen_map(
            {
                k: PoolObservation(
                    queue_depth=None if k == target else 0.0, replicas=first.pools[k].placements
                )
                for k in fleet.pools
            }
        ),
        node_pools=frozen_map(
            {
                k: NodePoolObservation(p.desired_nodes, p.desired_nodes)
                for k, p in first.node_pools.items()
            }
        ),
    )
    later = plan_fleet(fleet, observed, first.state, 1000.0)
    assert later.pools[target].desired_replicas >= first.pools[target].desired_replicas


@COMMON
@given(
    st.data(),
    st.dictionaries(
        st.tuples(st.sampled_from(["p0", "p1", "zz"]), st.sampled_from(["np0", "np1", "gone"])),
        st.integers(-5, 50),
        max_size=4,
    ),
    st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
)
def test_odd_observations_give_reasons_not_exceptions(
    data: st.DataObject, replicas: dict[tuple[str, str], int], arrival: float | None
) -> None:
    fleet = data.draw(fleets())
    queue = data.draw(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))
    snapshot = Snapshot(
        pools=frozen_map(
            {
                k: PoolObservation(
                    queue_depth=queue,
                    arrival_rate=arrival,
                    replicas=frozen_map({NodePoolKey(*n): max(v, 0) for n, v in replicas.items()}),
                )
                for k in fleet.pools
            }
        ),
        node_pools=frozen_map(
            {
                NodePoolKey(*n): NodePoolObservation(max(v, 0), max(v, 0))
                for n, v in replicas.items()
            }
        ),
        budget_watts=frozen_map(
            {name: data.draw(st.one_of(st.none(), st.floats(0, 1e6))) for name in fleet.budgets}
        ),
    )
    plan = plan_fleet(fleet, snapshot, PlannerState(), 0.0)
    assert set(plan.pools) == set(fleet.pools)
    for pool_plan in plan.pools.values():
        assert pool_plan.notes
        assert not math.isnan(pool_plan.planned_watts)
