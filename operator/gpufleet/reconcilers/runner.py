"""The fleet loop as the operator's own asyncio task, started by kopf's startup handler.

Why not a kopf timer or daemon: either hangs on a watched object, so kopf would list and
watch that kind cluster-wide (ConfigMaps, Leases: every node's heartbeat), and deleting the
object would stop the loop without a word. This task needs no watch of its own: it waits
until kopf has filled every index (`indexed`, set by the first resource handler kopf runs,
which kopf holds back until then), then goes round every `period` seconds and ticks while
this replica leads. The Elector renews the Lease in a task beside it, so a long tick does
not let the term lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gpufleet.reconcilers.cache import View
from gpufleet.reconcilers.heap import HeapFreezer
from gpufleet.reconcilers.leader import Elector, NotLeading
from gpufleet.reconcilers.liveness import TickWatch
from gpufleet.reconcilers.loop import FleetLoop

log = logging.getLogger(__name__)


@dataclass
class Runner:
    fleet: FleetLoop
    view: Callable[[], View]  # the indexes, as the tick reads them
    watch: TickWatch
    period: float
    elector: Elector | None = None  # None: this process acts alone
    clock: Callable[[], float] = time.monotonic
    indexed: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    term: int | None = None  # the term of the last tick
    # Keep the long-lived heap out of the garbage collector's walks (reconcilers/heap.py).
    # Process-wide, so only `gpufleet run` asks for it.
    freeze_heap: bool = False
    heap: HeapFreezer = field(default_factory=HeapFreezer)

    def start(self) -> None:
        if self.elector is not None:
            self.tasks.append(asyncio.create_task(self.elector.run(), name="gpufleet-lease"))
        self.tasks.append(asyncio.create_task(self.run(), name="gpufleet-fleet"))

    async def run(self) -> None:
        self.watch.beat()
        await self.indexed.wait()
        log.info("every index is filled: the fleet loop starts")
        due = self.clock()
        while not self.stopping.is_set():
            self.watch.beat()
            if self.elector is None or self.elector.leading():
                await self.tick()
            if self.freeze_heap:  # leading or not: full collections run only here
                started = time.perf_counter()
                self._freeze()
                self.fleet.metrics.phase_seconds.labels("heap").observe(
                    time.perf_counter() - started
                )
            due += self.period
            now = self.clock()
            due = max(due, now)  # behind: skip the missed rounds, never run them in a burst
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), due - now)

    def _freeze(self) -> None:
        try:
            self.heap.after_tick()
        except Exception:  # a heap left as it is costs time, never the loop
            log.exception("freezing the heap failed")
            self.freeze_heap = False
            with contextlib.suppress(Exception):
                self.heap.release()

    async def tick(self) -> None:
        term = self.elector.held.term if self.elector and self.elector.held else None
        if term != self.term:
            # A new term: what the journal holds (moves, drains) may have been written by
            # another leader since this process last led.
            self.fleet.moves_loaded = False
            self.term = term
        self.watch.begin()
        try:
            started = time.perf_counter()
            view = self.view()
            self.fleet.metrics.phase_seconds.labels("view").observe(time.perf_counter() - started)
            await self.fleet.tick(view)
        except NotLeading as exc:
            log.warning("stopped acting: %s", exc, extra={"reason": exc.reason})
        except Exception:  # the loop never dies: log, count, try again next round
            self.fleet.metrics.reconcile_errors.labels("tick").inc()
            log.exception("fleet reconcile failed")
        finally:
            self.watch.end()

    async def stop(self, grace: float = 10.0) -> None:
        """Let a tick in progress finish (up to `grace` s), then hand the Lease back: no
        write of this process follows the release."""
        self.stopping.set()
        if self.tasks and self.indexed.is_set():
            await asyncio.wait(self.tasks[-1:], timeout=grace)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.elector is not None:
            try:
                await self.elector.release()
            except Exception as exc:  # it then expires by itself
                log.warning("lease not released: %s", exc)
