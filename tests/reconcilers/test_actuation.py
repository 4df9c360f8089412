"""Actuation as data: the order in which a tick's changes reach the clouds and the cluster,
checked against an in-memory driver and scaler, with no cluster."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence

from gpufleet.drivers.base import NodePoolRef, NodePoolState
from gpufleet.planner.types import NodePoolKey, NodePoolPlan
from gpufleet.reconcilers.actuation import (
    Targets,
    execute,
    node_pool_target,
    node_pool_targets,
    workload_target,
)
from gpufleet.reconcilers.intent import Action


class MemoryDriver:
    """A NodePoolDriver that keeps sizes in a dict and logs every call."""

    def __init__(self, log: list[str], sizes: dict[str, int]) -> None:
        self.log, self.sizes = log, sizes

    async def get_pool(self, ref: NodePoolRef) -> NodePoolState:
        size = self.sizes[ref.node_pool]
        return NodePoolState(size, (), ())

    async def set_target_size(self, ref: NodePoolRef, size: int, *, action_id: str) -> None:
        self.log.append(f"nodes {ref.node_pool} -> {size}")
        self.sizes[ref.node_pool] = size

    async def delete_nodes(self, ref: NodePoolRef, names: Sequence[str], *, action_id: str) -> None:
        self.log.append(f"delete {ref.node_pool} {list(names)}")


class MemoryKube:
    """The one Kube call actuation makes for a workload: scale."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def scale(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        self.log.append(f"scale {name} -> {replicas}")


def _targets(log: list[str]) -> Targets:
    driver = MemoryDriver(log, {"grow": 2, "shrink": 5})
    kube = MemoryKube(log)

    async def nodes(name: str, size: int, action: str) -> bool:
        ref = NodePoolRef("cloud", name, name)
        await driver.set_target_size(ref, size, action_id=action)
        return True

    async def scale(name: str, size: int, action: str) -> bool:
        await kube.scale("Deployment", "ns", name, size)
        return True

    targets = Targets()
    for name, now, wanted in (("grow", 2, 4), ("shrink", 5, 2)):
        key = NodePoolKey("cloud", name)
        targets.add(node_pool_target(key), now, wanted, functools.partial(nodes, name))
    for name, now, wanted in (("chat", 3, 10), ("batch", 8, 1)):
        targets.add(
            workload_target("Deployment", "ns", name), now, wanted, functools.partial(scale, name)
        )
    return targets


def _actions(targets: Targets) -> list[Action]:
    return [Action(f"{t}={n}", t, n) for t, n in targets.planned.items()]


def test_nodes_grow_before_replicas_and_shrink_after_them() -> None:
    log: list[str] = []
    targets = _targets(log)

    done = asyncio.run(execute(_actions(targets), targets))

    assert log == [
        "nodes grow -> 4",
        "scale batch -> 1",
        "scale chat -> 10",
        "nodes shrink -> 2",
    ]
    assert len(done) == 4


def test_the_order_holds_whatever_order_the_journal_gives() -> None:
    log: list[str] = []
    targets = _targets(log)

    asyncio.run(execute(list(reversed(_actions(targets))), targets))

    assert log[0] == "nodes grow -> 4" and log[-1] == "nodes shrink -> 2"


def test_a_failed_setter_is_not_done_and_stops_nothing() -> None:
    log: list[str] = []
    targets = _targets(log)

    async def refuses(size: int, action: str) -> bool:
        return False

    targets.setters[workload_target("Deployment", "ns", "chat")] = refuses

    done = asyncio.run(execute(_actions(targets), targets))

    assert "Deployment/ns/chat=10" not in done
    assert log == ["nodes grow -> 4", "scale batch -> 1", "nodes shrink -> 2"]


def _plan(key: NodePoolKey, desired: int) -> NodePoolPlan:
    return NodePoolPlan(key, desired, 0, 0, ())


def test_held_node_pools_grow_but_never_shrink() -> None:  # the others are not held
    grow, shrink = NodePoolKey("cloud", "grow"), NodePoolKey("cloud", "shrink")
    plans = {grow: _plan(grow, 4), shrink: _plan(shrink, 2)}
    refs = {k: NodePoolRef(k.provider, k.node_pool, k.node_pool) for k in plans}
    now = {grow: 2, shrink: 5}

    held = node_pool_targets(plans, now, refs, hold_shrinks={shrink})
    free = node_pool_targets(plans, now, refs, hold_shrinks=())

    assert [(t.key.node_pool, t.wanted) for t in held] == [("grow", 4)]
    assert [(t.key.node_pool, t.wanted) for t in free] == [("grow", 4), ("shrink", 2)]


def test_node_pools_without_a_driver_or_a_state_are_left_alone() -> None:
    seen, unseen = NodePoolKey("cloud", "seen"), NodePoolKey("cloud", "unseen")
    plans = {seen: _plan(seen, 3), unseen: _plan(unseen, 3)}
    refs = {seen: NodePoolRef("cloud", "seen", "seen")}

    found = node_pool_targets(plans, {seen: 1, unseen: 1}, refs, hold_shrinks=())

    assert [t.key for t in found] == [seen]
