"""The fleet loop's own task: what it does around its first tick."""

from __future__ import annotations

import asyncio

from gpufleet.metrics.exporter import OperatorMetrics
from gpufleet.reconcilers.cache import View
from gpufleet.reconcilers.liveness import TickWatch
from gpufleet.reconcilers.runner import Runner


class Fleet:
    def __init__(self, runner_stops: asyncio.Event, ticks: int) -> None:
        self.metrics = OperatorMetrics()
        self.moves_loaded = True
        self.ticked = 0
        self._stop, self._ticks = runner_stops, ticks

    async def tick(self, view: View) -> None:
        self.ticked += 1
        if self.ticked >= self._ticks:
            self._stop.set()


class Heap:
    def __init__(self, fails: bool = False, stop_after: asyncio.Event | None = None) -> None:
        self.ticks = self.released = 0
        self.fails = fails
        self.stop_after = stop_after  # set after three looks (a standby never ticks)

    def after_tick(self) -> bool:
        self.ticks += 1
        if self.stop_after is not None and self.ticks >= 3:
            self.stop_after.set()
        if self.fails:
            raise MemoryError("no room to freeze")
        return False

    def release(self) -> None:
        self.released += 1


class Standby:
    """An elector that never leads."""

    held = None

    def leading(self) -> bool:
        return False


def _run(freeze: bool, heap: Heap | None = None, standby: bool = False) -> tuple[int, int]:
    """Ticks done and heap looks of a runner run until it stops (3 ticks, or 3 looks of a
    `stop_after` heap)."""

    async def scenario() -> tuple[int, int]:
        stopping = asyncio.Event()
        fleet = Fleet(stopping, ticks=3)
        looked = heap or Heap(stop_after=stopping if standby else None)
        runner = Runner(
            fleet,  # type: ignore[arg-type]
            lambda: View([], [], [], [], {}, {}),
            TickWatch(stuck_after=60),
            period=0.0,
            stopping=stopping,
            elector=Standby() if standby else None,  # type: ignore[arg-type]
            freeze_heap=freeze,
            heap=looked,  # type: ignore[arg-type]
        )
        runner.indexed.set()
        await asyncio.wait_for(runner.run(), 5)
        return fleet.ticked, looked.ticks

    return asyncio.run(scenario())


def test_a_runner_asked_to_freeze_looks_at_the_heap_after_every_tick() -> None:
    assert _run(True) == (3, 3)


def test_a_runner_not_asked_to_freeze_leaves_the_heap_alone() -> None:
    assert _run(False) == (3, 0)


def test_a_heap_that_cannot_be_frozen_leaves_the_loop_running() -> None:
    heap = Heap(fails=True)
    assert _run(True, heap) == (3, 1)  # tried once, then left alone

    assert heap.released == 1  # and CPython collects the heap whole by itself again


def test_a_standby_replica_still_looks_at_the_heap_every_round() -> None:
    # It never ticks, but kopf's events still make garbage: its full collections run here.
    assert _run(True, standby=True) == (0, 3)
