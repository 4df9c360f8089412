"""Threat: a namespace's pools ask for more GPUs than its ResourceQuota grants, or escape it
by bursting to another cluster. The plan counts every pool of the namespace against the
GPUs its quota leaves (Fleet.namespace_gpus), on every provider, and never asks for
replicas the API server would refuse; what already runs over a lowered quota stays."""

from __future__ import annotations

from gpufleet.planner import NodePoolKey, PlannerState, PoolKey, Reason, plan_fleet

from .planning import fleet, pool, provider, snapshot

H100 = NodePoolKey("a", "h100")
BURST = NodePoolKey("b", "h100")
CHAT, IMAGE = PoolKey("team-a", "chat"), PoolKey("team-a", "image")
OTHER = PoolKey("team-b", "chat")


def _note(plan_pool: object, reason: Reason) -> str:
    return next(n.message for n in plan_pool.notes if n.reason == reason)  # type: ignore[attr-defined]


def test_the_pools_of_a_namespace_never_ask_for_more_gpus_than_its_quota() -> None:
    plan = plan_fleet(
        fleet(
            {CHAT: pool(), IMAGE: pool(gpusPerReplica=2), OTHER: pool()},
            {"a": provider(max_nodes=10)},
            namespace_gpus={"team-a": 12},
        ),
        snapshot({CHAT: 100, IMAGE: 100, OTHER: 100}),
        PlannerState(),
        0.0,
    )
    chat, image = plan.pools[CHAT], plan.pools[IMAGE]
    assert chat.desired_replicas + 2 * image.desired_replicas <= 12
    assert plan.pools[OTHER].desired_replicas == 10  # another namespace: not its quota
    short = chat if chat.unplaced_replicas else image
    assert Reason.LIMITED_BY_NAMESPACE_QUOTA in short.reasons
    assert Reason.LIMITED_BY_QUOTA not in short.reasons  # that is a CloudProvider's
    message = _note(short, Reason.LIMITED_BY_NAMESPACE_QUOTA)
    assert "team-a" in message and "12 GPUs" in message


def test_a_burst_copy_counts_against_the_same_quota() -> None:
    providers = {
        "a": provider(max_nodes=1),
        "b": provider(role="Secondary", legal_entity="Burst B.V.", jurisdiction="NL"),
    }
    plan = plan_fleet(
        fleet({CHAT: pool(burst={"enabled": True})}, providers, namespace_gpus={"team-a": 12}),
        snapshot({CHAT: 400}),
        PlannerState(),
        0.0,
    )
    chat = plan.pools[CHAT]
    assert chat.placements == {H100: 8, BURST: 4}
    assert Reason.LIMITED_BY_NAMESPACE_QUOTA in chat.reasons


def test_replicas_over_a_lowered_quota_stay_but_none_are_added() -> None:
    plan = plan_fleet(
        fleet({CHAT: pool()}, {"a": provider()}, namespace_gpus={"team-a": 4}),
        snapshot({CHAT: 160}, {CHAT: {H100: 10}}, {H100: 2}),
        PlannerState(),
        0.0,
    )
    chat = plan.pools[CHAT]
    assert chat.placements == {H100: 10}
    assert not chat.preempted
    assert Reason.LIMITED_BY_NAMESPACE_QUOTA in chat.reasons


def test_a_pool_that_scales_down_under_its_quota_is_not_limited() -> None:
    plan = plan_fleet(
        fleet({CHAT: pool()}, {"a": provider()}, namespace_gpus={"team-a": 4}),
        snapshot({CHAT: 20}, {CHAT: {H100: 10}}, {H100: 2}),
        PlannerState(),
        0.0,
    )
    chat = plan.pools[CHAT]
    assert chat.desired_replicas == 2
    assert Reason.LIMITED_BY_NAMESPACE_QUOTA not in chat.reasons


def test_warm_spares_stay_within_the_quota() -> None:
    plan = plan_fleet(
        fleet(
            {CHAT: pool(warmSpares={"enabled": True})},
            {"a": provider()},
            namespace_gpus={"team-a": 6},
        ),
        snapshot({CHAT: 40}, {CHAT: {H100: 4}}, {H100: 1}),
        PlannerState(),
        0.0,
    )
    chat = plan.pools[CHAT]
    assert chat.spare_replicas == 2  # 4 wanted + 2 spares = the 6 GPUs the quota leaves
    assert chat.desired_replicas == 6
