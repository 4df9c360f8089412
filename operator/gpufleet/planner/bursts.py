"""Bursts that recur: clumped arrivals that a mean arrival rate hides.

A client that batches, a job runner or a retry storm sends requests in clumps a few
seconds or minutes apart. The arrival rate (a minute's average) looks smooth, the M/M/c
model sizes for it, and every clump waits. The queue shows them: it jumps from empty and
drains. A burst seen once is a backlog that existing capacity may clear (it buys no
nodes); bursts that recur are demand, and the pool is sized to serve a typical one within
its SLO. Pure: the planner carries `BurstMemory` from tick to tick.
"""

from __future__ import annotations

from dataclasses import dataclass

RECUR_SECONDS = 900.0  # bursts count as recurring within this window
RECUR_COUNT = 3  # ... when at least this many began in it
IDLE_QUEUE = 1.0  # below this the queue counts as empty: a burst has ended
MAX_PEAKS = 32  # a queue that flaps every tick keeps no more than this


@dataclass(frozen=True)
class BurstMemory:
    # (when a burst began, the highest queue read during it), oldest first.
    peaks: tuple[tuple[float, float], ...] = ()
    in_burst: bool = False


def observe(memory: BurstMemory, now: float, queue: float) -> BurstMemory:
    """`memory` with one more queue reading."""
    # Peaks from the future (the clock went back) are dropped with the old ones.
    peaks = memory.peaks
    recent = tuple([p for p in peaks if 0 <= now - p[0] < RECUR_SECONDS])
    # Unchanged memory is handed back as it is: most pools' queues change seldom, and each
    # tick would otherwise copy every pool's peaks.
    unchanged = len(recent) == len(peaks)
    if queue < IDLE_QUEUE:
        return memory if unchanged and not memory.in_burst else BurstMemory(recent, False)
    if memory.in_burst and recent:
        began, peak = recent[-1]
        if unchanged and queue <= peak:
            return memory
        return BurstMemory((*recent[:-1], (began, max(peak, queue))), True)
    return BurstMemory((*recent, (now, queue))[-MAX_PEAKS:], True)


def recurring_queue(memory: BurstMemory | None, now: float) -> float | None:
    """The backlog of a typical recent burst (the second highest peak, so that one outlier
    does not size the pool), or None unless bursts recur."""
    if memory is None or len(memory.peaks) < RECUR_COUNT:
        return None
    peaks = sorted([q for t, q in memory.peaks if 0 <= now - t < RECUR_SECONDS])
    if len(peaks) < RECUR_COUNT:
        return None
    return peaks[-2]
