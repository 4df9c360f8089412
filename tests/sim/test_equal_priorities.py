"""The simulated scheduler shares GPUs between pools of equal priority as the planner does:
about equally when both want more than there is, never by the pools' names."""

from __future__ import annotations

from typing import Any

from gpufleet.planner import PlannerState, plan_fleet
from gpufleet.planner.types import (
    NodePoolKey,
    NodePoolObservation,
    PoolObservation,
    Snapshot,
    frozen_map,
)
from gpufleet.sim import data
from gpufleet.sim.cluster import Cluster
from gpufleet.sim.scenario import fleet_from

from .builders import h100_node_pool, provider_doc

H100 = NodePoolKey("c", "h100")


def _pool(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "gpufleet.io/v1alpha1",
        "kind": "ServingPool",
        "metadata": {"name": "model", "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"name": "model"},
            "gpuTypes": ["H100"],
            "queue": {"query": "q", "targetPerReplica": 1},
            "maxReplicas": 32,
            "behavior": {
                "scaleUp": {"policies": [{"type": "Pods", "value": 100, "periodSeconds": 1}]}
            },
        },
    }


def test_the_scheduler_and_the_planner_split_short_gpus_alike() -> None:
    fleet = fleet_from(
        [
            provider_doc([h100_node_pool(gpusPerNode=8, maxNodes=2)]),
            _pool("team-a"),
            _pool("team-b"),
        ]
    )
    pools = sorted(fleet.pools)
    assert len({fleet.priority(k) for k in pools}) == 1  # equal priorities
    snapshot = Snapshot(
        pools=frozen_map({k: PoolObservation(queue_depth=16.0) for k in pools}),
        node_pools=frozen_map({H100: NodePoolObservation(ready_nodes=2, target_nodes=2)}),
    )
    planned = plan_fleet(fleet, snapshot, PlannerState(), 0.0)
    assert [planned.pools[k].desired_replicas for k in pools] == [8, 8]

    # Both Deployments ask for 16 replicas on the 16 GPUs of two Ready nodes.
    cluster = Cluster(fleet, [], data.model_load_seconds(), seed=1)
    cluster.set_nodes(H100, 2, 0.0, warm=True)
    for key in pools:
        cluster.set_replicas(key, H100, 16, 0.0)
    cluster.advance(0.0)
    scheduled = [16 - cluster.pending(k) for k in pools]
    assert scheduled == [8, 8]

    # A node goes away: what runs is cut evenly too, not one namespace's replicas first.
    cluster.set_nodes(H100, 1, 1.0)
    assert [16 - cluster.pending(k) for k in pools] == [4, 4]
