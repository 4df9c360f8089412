"""The fleet loop's own task: what it does around its first tick."""

from __future__ import annotations

import asyncio
import gc

import pytest

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


def _run(freeze: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    frozen: list[int] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(1))

    async def scenario() -> int:
        stopping = asyncio.Event()
        fleet = Fleet(stopping, ticks=3)
        runner = Runner(
            fleet,  # type: ignore[arg-type]
            lambda: View([], [], [], [], {}, {}),
            TickWatch(stuck_after=60),
            period=0.0,
            stopping=stopping,
            freeze_heap=freeze,
        )
        runner.indexed.set()
        await asyncio.wait_for(runner.run(), 5)
        return fleet.ticked

    ticked = asyncio.run(scenario())
    return ticked, len(frozen)


def test_the_heap_is_frozen_once_after_the_first_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run(True, monkeypatch) == (3, 1)


def test_a_runner_not_asked_to_freeze_leaves_the_heap_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _run(False, monkeypatch) == (3, 0)
