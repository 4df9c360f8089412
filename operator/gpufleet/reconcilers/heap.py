"""The operator's long-lived heap, kept out of the garbage collector's walks (`gc.freeze`).

A full collection walks every tracked object. At 1,000 pools the long-lived specs and index
entries made those walks about a fifth of a plan's time (benchmarks/planner_scale.py), so
the heap is frozen after the first tick. A fleet that grows after that tick (a scale-out
from one replica per pool: 16,000 pods and 2,000 nodes arrive later) was walked again in
every full collection, about one in three quiet ticks, each a quarter of a second of CPU
at 2,000 nodes offline. So the heap is frozen again whenever what has stayed alive since the
last freeze outgrows a share of what is frozen: full collections then walk only what is new.

A frozen object is never collected as part of a cycle. Each freeze therefore collects first
(unfreeze, collect, freeze), so cyclic garbage pinned by one freeze lives only until the
next; a freeze happens only when the heap has grown by the share, a few times in a
process's life.
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


class Collector(Protocol):
    """What of the `gc` module this uses."""

    def collect(self) -> int: ...
    def freeze(self) -> None: ...
    def unfreeze(self) -> None: ...
    def get_freeze_count(self) -> int: ...
    def get_objects(self, generation: int | None = None) -> list[Any]: ...
    def get_stats(self) -> list[dict[str, Any]]: ...


@dataclass
class HeapFreezer:
    collector: Collector = gc  # the module itself
    share: float = REFREEZE_SHARE
    _full: int = -1  # full collections counted at the last look
    # Objects frozen by the last freeze (0: none yet). Counted once, when frozen: CPython
    # counts them by walking the whole permanent generation, a tenth of a quiet tick.
    _frozen: int = 0

    def after_tick(self) -> bool:
        """Freezes the heap the first time, and again once it has outgrown the last freeze;
        whether it froze. Looks at the heap only after a full collection has run, which
        walked it anyway."""
        full = self._full_collections()
        if self._frozen and full == self._full:
            return False
        self._full = full
        if self._frozen and len(self.collector.get_objects(generation=2)) < (
            self._frozen * self.share
        ):
            return False
        self.collector.unfreeze()
        self.collector.collect()
        self.collector.freeze()
        self._full = self._full_collections()
        self._frozen = max(1, self.collector.get_freeze_count())
        log.info("heap frozen: %d objects", self._frozen)
        return True

    def _full_collections(self) -> int:
        return int(self.collector.get_stats()[2]["collections"])
