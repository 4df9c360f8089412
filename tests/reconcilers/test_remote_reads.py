"""Remote clusters read at a bounded rate: answers reused until old or written over."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gpufleet.drivers.base import NodePoolRef, NodePoolState
from gpufleet.reconcilers.burst.reads import ReadLimitedDriver, Reused

REF = NodePoolRef("remote", "h100", "h100")
OTHER = NodePoolRef("remote", "a100", "a100")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingDriver:
    def __init__(self) -> None:
        self.reads: list[str] = []
        self.target = 1

    async def get_pool(self, ref: NodePoolRef) -> NodePoolState:
        self.reads.append(ref.node_pool)
        return NodePoolState(self.target, (), ())

    async def set_target_size(self, ref: NodePoolRef, size: int, *, action_id: str) -> None:
        self.target = size

    async def delete_nodes(self, ref: NodePoolRef, names: Sequence[str], *, action_id: str) -> None:
        return None


def test_a_node_pool_is_read_again_only_when_its_answer_is_old() -> None:
    clock, inner = Clock(), CountingDriver()
    driver = ReadLimitedDriver(inner, Reused(10.0, clock))

    async def ticks() -> None:
        for second in range(25):
            clock.now = float(second)
            await driver.get_pool(REF)

    asyncio.run(ticks())
    assert inner.reads == ["h100"] * 3  # at 0, 10 and 20 s


def test_a_resize_is_followed_by_a_fresh_read_of_that_node_pool_only() -> None:
    clock, inner = Clock(), CountingDriver()
    driver = ReadLimitedDriver(inner, Reused(10.0, clock))

    async def scenario() -> int:
        await driver.get_pool(REF)
        await driver.get_pool(OTHER)
        await driver.set_target_size(REF, 4, action_id="a")
        clock.now = 1.0
        await driver.get_pool(OTHER)
        return (await driver.get_pool(REF)).target_size

    assert asyncio.run(scenario()) == 4
    assert inner.reads == ["h100", "a100", "h100"]


def test_no_reuse_at_zero_seconds() -> None:
    reused: Reused[int] = Reused(0.0, Clock())
    reused.put("k", 1)
    assert reused.get("k") is None
