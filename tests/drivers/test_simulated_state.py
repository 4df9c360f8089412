"""The simulated cloud's pure rules: ConfigMap encoding, grants and the plan."""

from __future__ import annotations

import pytest

from gpufleet.drivers import simulated_state as sim
from gpufleet.drivers.base import InsufficientCapacity, QuotaExceeded

NOW = 1_700_000_000.0


def name_for(ordinal: int) -> str:
    return sim.node_name("cloud", "gpu", ordinal)


def plan(state: sim.PoolState, nodes: list[sim.ObservedNode], now: float = NOW) -> sim.Plan:
    return sim.plan(state, nodes, now=now, boot_seconds=300, name_for=name_for)


def node(ordinal: int, *, pods: int = 0) -> sim.ObservedNode:
    return sim.ObservedNode(name_for(ordinal), ordinal, ready=True, pods=pods)


def test_state_survives_encoding() -> None:
    state = sim.PoolState(
        target_size=3,
        pending=(sim.Pending("cloud-gpu-2", NOW + 12.5, "a1"),),
        deleting=("cloud-gpu-0",),
        next_ordinal=3,
        last_action_id="a1",
    )
    assert sim.decode(sim.encode(state, "gpu"), "gpu") == state


def test_unset_target_stays_absent() -> None:
    data = sim.encode(sim.PoolState(), "gpu")
    assert "gpu.targetSize" not in data
    assert sim.decode(data, "gpu").target_size is None


def test_pending_ready_time_is_readable_utc() -> None:
    data = sim.encode(sim.PoolState(pending=(sim.Pending("n-0", 0.25, "a"),)), "gpu")
    assert (
        data["gpu.pending"]
        == '[{"name":"n-0","readyAt":"1970-01-01T00:00:00.250Z","actionId":"a"}]'
    )


def test_merge_keeps_knobs_and_other_pools() -> None:
    data = {"gpu.failWith": "QuotaExceeded", "other.targetSize": "4", "gpu.targetSize": "1"}
    merged = sim.merge(data, sim.PoolState(target_size=2), "gpu")
    assert merged["gpu.failWith"] == "QuotaExceeded"
    assert merged["other.targetSize"] == "4"
    assert merged["gpu.targetSize"] == "2"


def test_knobs_decode() -> None:
    data = {"gpu.failWith": "InsufficientCapacity", "gpu.capacityNodes": "2"}
    assert sim.decode_knobs(data, "gpu") == sim.Knobs("InsufficientCapacity", 2)
    assert sim.decode_knobs({}, "gpu") == sim.Knobs()


@pytest.mark.parametrize(
    "data",
    [
        {"gpu.failWith": "Boom"},
        {"gpu.capacityNodes": "-1"},
        {"gpu.capacityNodes": "many"},
        {"gpu.pending": "{}"},
        {"gpu.pending": '[{"name": "x"}]'},
        {"gpu.targetSize": "1.5"},
    ],
)
def test_unreadable_values_raise_invalid_simulation(data: dict[str, str]) -> None:
    with pytest.raises(sim.InvalidSimulation) as raised:
        # Every call reads knobs and state; either may be the one that objects.
        sim.decode_knobs(data, "gpu")
        sim.decode(data, "gpu")
    assert raised.value.reason == "InvalidSimulation"
    assert not raised.value.transient


def test_node_names_stay_hostname_sized_and_distinct() -> None:
    assert sim.node_name("cloud", "gpu", 7) == "cloud-gpu-7"
    long_a = sim.node_name("p" * 40, "pool-a" * 5, 123456)
    long_b = sim.node_name("p" * 40, "pool-b" * 5, 123456)
    assert len(long_a) <= 63
    assert long_a != long_b
    assert long_a.endswith("-123456")


def test_grant_allows_shrinking_whatever_the_knobs() -> None:
    assert sim.grant(5, 2, sim.Knobs("QuotaExceeded", 0), quota_nodes=0) == 2


@pytest.mark.parametrize(
    ("fail_with", "error"),
    [("InsufficientCapacity", InsufficientCapacity), ("QuotaExceeded", QuotaExceeded)],
)
def test_grant_fails_scale_up_on_request(fail_with: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        sim.grant(1, 2, sim.Knobs(fail_with), quota_nodes=None)


def test_grant_rejects_a_request_over_quota() -> None:
    with pytest.raises(QuotaExceeded):
        sim.grant(1, 4, sim.Knobs(), quota_nodes=3)


def test_grant_gives_what_capacity_there_is_but_never_less_than_now() -> None:
    assert sim.grant(1, 5, sim.Knobs(capacity_nodes=3), quota_nodes=None) == 3
    assert sim.grant(4, 6, sim.Knobs(capacity_nodes=3), quota_nodes=None) == 4


def test_deletes_idle_nodes_before_busy_ones_then_newest() -> None:
    nodes = [node(0), node(1, pods=2), node(2), node(3, pods=1)]
    assert sim.choose_deletions(nodes, 3) == [name_for(2), name_for(0), name_for(3)]


def test_scale_up_launches_nodes_that_appear_after_boot() -> None:
    launched = plan(sim.PoolState(target_size=2, last_action_id="a1"), [])
    assert [p.name for p in launched.state.pending] == [name_for(0), name_for(1)]
    assert {p.ready_at for p in launched.state.pending} == {NOW + 300}
    assert {p.action_id for p in launched.state.pending} == {"a1"}
    assert launched.create == ()

    booted = plan(launched.state, [], now=NOW + 300)
    assert booted.create == launched.state.pending
    assert booted.state == launched.state  # nothing to record until the Nodes are seen


def test_observed_launches_leave_pending() -> None:
    state = plan(sim.PoolState(target_size=1), []).state
    seen = plan(state, [node(0)], now=NOW + 300)
    assert seen.state.pending == ()
    assert seen.create == ()
    assert seen.state.next_ordinal == 1


def test_steady_state_changes_nothing() -> None:
    state = sim.PoolState(target_size=2, next_ordinal=2)
    steady = plan(state, [node(0), node(1)])
    assert steady == sim.Plan(state, (), ())


def test_scale_down_cancels_launches_before_deleting_nodes() -> None:
    state = sim.PoolState(
        target_size=1,
        pending=(sim.Pending(name_for(2), NOW + 10), sim.Pending(name_for(3), NOW + 20)),
        next_ordinal=4,
    )
    down = plan(state, [node(0), node(1)])
    assert down.state.pending == ()
    assert down.delete == (name_for(1),)
    assert down.state.deleting == (name_for(1),)


def test_victims_are_recorded_until_gone() -> None:
    state = sim.PoolState(target_size=1, deleting=(name_for(1),), next_ordinal=2)
    assert plan(state, [node(0), node(1)]).delete == (name_for(1),)
    gone = plan(state, [node(0)])
    assert gone.state.deleting == ()
    assert gone.delete == ()


def test_unset_target_adopts_existing_nodes() -> None:
    adopted = plan(sim.PoolState(), [node(0), node(5)])
    assert adopted.delete == ()
    assert adopted.state == sim.PoolState()


def test_new_names_skip_nodes_already_there() -> None:
    # The record was lost (next_ordinal 0) but Nodes of the pool remain.
    launched = plan(sim.PoolState(target_size=3), [node(0), node(4)])
    assert [p.name for p in launched.state.pending] == [name_for(5)]
    assert launched.state.next_ordinal == 6
