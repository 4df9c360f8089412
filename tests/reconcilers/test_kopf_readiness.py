"""kopf's start-up gate with one follower per set: the same waits, reached at the same time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from kopf._cogs.aiokits import aiotoggles

from gpufleet.reconcilers import kopf_readiness


@pytest.fixture(autouse=True)
def installed() -> Iterator[None]:
    assert kopf_readiness.install()
    yield
    kopf_readiness.uninstall()


def test_workers_wait_until_every_object_is_indexed_and_not_longer() -> None:
    async def scenario() -> list[int]:
        gate = aiotoggles.ToggleSet(all)
        objects = [await gate.make_toggle(name=f"object-{i}") for i in range(300)]
        released: list[int] = []

        async def worker(i: int) -> None:
            await gate.drop_toggle(objects[i])  # indexed; now wait for the others
            await gate.wait_for(True)
            released.append(i)

        workers = [asyncio.create_task(worker(i)) for i in range(299)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert released == [] and not gate.is_on()  # one object is still not indexed
        # kopf's own wait put all 299 on the condition, each woken by every change.
        assert len(gate._condition._waiters) == 1
        await asyncio.wait_for(worker(299), 5)
        await asyncio.wait_for(asyncio.gather(*workers), 5)
        return released

    assert sorted(asyncio.run(scenario())) == list(range(300))


def test_a_pause_is_waited_out_both_ways() -> None:
    async def scenario() -> None:
        paused = aiotoggles.ToggleSet(any)
        peering = await paused.make_toggle(True, name="peering")
        resumed = asyncio.create_task(paused.wait_for(False))
        await asyncio.sleep(0.01)
        assert not resumed.done()
        await peering.turn_to(False)
        await asyncio.wait_for(resumed, 5)
        again = asyncio.create_task(paused.wait_for(True))
        await peering.turn_to(True)
        await asyncio.wait_for(again, 5)

    asyncio.run(scenario())


def test_no_follower_outlives_the_waits() -> None:
    async def scenario() -> set[asyncio.Task[object]]:
        gate = aiotoggles.ToggleSet(all)
        toggle = await gate.make_toggle()
        waiting = asyncio.create_task(gate.wait_for(True))
        await asyncio.sleep(0)
        await toggle.turn_to(True)
        await asyncio.wait_for(waiting, 5)
        await asyncio.sleep(0)
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}

    assert asyncio.run(scenario()) == set()
