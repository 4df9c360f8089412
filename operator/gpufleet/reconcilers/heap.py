"""The operator's long-lived heap, kept out of the garbage collector's walks (`gc.freeze`).

A full collection walks every tracked object. At 1,000 pools the long-lived specs and index
entries made those walks about a fifth of a plan's time (benchmarks/planner_scale.py), so
the heap is frozen after the first tick. A fleet that grows after that tick (a scale-out
from one replica per pool: 16,000 pods and 2,000 nodes arrive later) was walked again in
every full collection, about one in three quiet ticks, each a quarter of a second of CPU
at 2,000 nodes offline. So the heap is frozen again whenever what has stayed alive since the
last freeze outgrows a share of what is frozen.

Full collections run between ticks, never inside one. CPython starts one by itself once
enough objects have reached the oldest generation, wherever the process is: in a live
1,000-node fleet, 41 of 107 quiet plans had one fall inside them, each adding 0.04 to
0.23 s to a plan of about 0.13 s of CPU (up to 0.47 s while the fleet grew). So the
collector's own trigger for them is set out of reach when the heap is first frozen, and
`after_tick` runs one itself once as many collections of the middle generation have passed
as CPython waits for before it weighs one (FULL_EVERY): it walks only what is not frozen,
as CPython's would, but after a tick, before the next. It may run more often than
CPython's, which also waits until a quarter of the long-lived heap was promoted since the
last; never less often, so garbage cycles wait no longer than they did. The Runner calls
`after_tick` every round, leading or not: a standby replica still needs its collections.

A frozen object is never collected as part of a cycle. Each freeze therefore collects first
(unfreeze, collect, freeze), so cyclic garbage pinned by one freeze lives only until the
next; a freeze happens only when the oldest generation has grown by the share.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

# Long-lived objects not frozen, as a share of the frozen ones, that freeze the heap again:
# CPython's own threshold for a full collection (long-lived objects pending a full walk).
REFREEZE_SHARE = 0.25
# Collections of the middle generation between two full collections (CPython's default third
# threshold: when it would weigh one), and the third threshold set instead, which no
# process reaches.
FULL_EVERY = 10
_NEVER = 1 << 30


class Collector(Protocol):
    """What of the `gc` module this uses."""

    def collect(self) -> int: ...
    def get_threshold(self) -> tuple[int, int, int]: ...
    def set_threshold(self, threshold0: int, threshold1: int, threshold2: int, /) -> None: ...
    def freeze(self) -> None: ...
    def unfreeze(self) -> None: ...
    def get_freeze_count(self) -> int: ...
    def get_objects(self, generation: int | None = None) -> list[Any]: ...
    def get_stats(self) -> list[dict[str, Any]]: ...


@dataclass
class HeapFreezer:
    collector: Collector = gc  # the module itself
    share: float = REFREEZE_SHARE
    _looked: int = 0  # collections of the middle generation at the last look
    # Objects frozen by the last freeze (0: none yet). Counted once, when frozen: CPython
    # counts them by walking the whole permanent generation, a tenth of a quiet tick.
    _frozen: int = 0
    _thresholds: tuple[int, int, int] | None = None  # the collector's own, while replaced

    def after_tick(self) -> bool:
        """Freezes the heap the first time, and again once it has outgrown the last freeze
        (each time collected whole first); whether it froze. Looks at the heap once every
        FULL_EVERY collections of the middle generation: where CPython would have weighed a
        full collection of its own."""
        if not self._frozen:
            self._take_full_collections()
            return self._freeze()
        middle_collections = self._middle_collections()
        if middle_collections - self._looked < FULL_EVERY:
            return False
        self._looked = middle_collections
        if len(self.collector.get_objects(generation=2)) < self._frozen * self.share:
            self.collector.collect()  # CPython's own full collection, between ticks
            return False
        return self._freeze()

    def _take_full_collections(self) -> None:
        if self._thresholds is None:
            young, middle, full = self.collector.get_threshold()
            if full >= _NEVER:  # taken already by another freezer: give back a sane one
                full = FULL_EVERY
            self._thresholds = (young, middle, full)
            self.collector.set_threshold(young, middle, _NEVER)

    def _freeze(self) -> bool:
        self.collector.unfreeze()
        self.collector.collect()
        self.collector.freeze()
        self._looked = self._middle_collections()
        self._frozen = max(1, self.collector.get_freeze_count())
        log.info("heap frozen: %d objects", self._frozen)
        return True

    def release(self) -> None:
        """Gives full collections back to CPython and unfreezes the heap: for a loop that
        stops calling `after_tick`, whose heap would otherwise never be walked whole again."""
        if self._thresholds is not None:
            self.collector.set_threshold(*self._thresholds)
            self._thresholds = None
        self.collector.unfreeze()
        self._frozen = 0

    def _middle_collections(self) -> int:
        return int(self.collector.get_stats()[1]["collections"])
