"""What a replica really serves, learnt from the queue: a pool's declared rate is a claim.

While more requests wait than there are serving replicas at every reading, every replica
is busy, so the requests served over a stretch are the arrivals less the queue's growth. Over a busy stretch of `WINDOW_SECONDS` with the
same serving replicas, that against what the declared rates promise for those replicas is
one sample of the pool's *work factor* (observed / declared: about 0.6 when requests carry
60 % more work than the declared rate assumes). Sizing uses the declared rate times it.

Trust is asymmetric, because the costs are: a fleet slower than declared misses its SLO, so
it is believed within a minute of busy time, half after one window (the queue grew while
the model said capacity was enough: do not wait for it to agree); a fleet faster than
declared only costs GPUs, so that is believed as busy time accumulates. Without new samples
the weight decays (time constant `MEMORY_SECONDS`), so the factor drifts back to the
declared rate and a mix that got lighter is not paid for forever; samples are bounded so
that a broken metric can neither buy the fleet nor starve it, and the factor used moves in
steps of `FACTOR_STEP`, so that its decay does not rewrite a status every few seconds.
Pure: the planner carries `ServiceMemory` from tick to tick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

WINDOW_SECONDS = 30.0  # busy time that makes one sample
TRUST_SECONDS = 300.0  # busy time after which a faster-than-declared factor is half believed
MEMORY_SECONDS = 3600.0  # how fast the weight of old samples decays
MAX_WEIGHT_SECONDS = 900.0  # so that a changed mix shows within minutes, not hours
MIN_FACTOR, MAX_FACTOR = 0.1, 4.0
FACTOR_STEP = 0.05
BELIEVED_SLOWER_SECONDS = 60.0  # busy time after which a slower factor is believed in full
# Readings further apart than this do not make one window: the metrics were missing, and
# what the queue did meanwhile is not known.
MAX_GAP_SECONDS = 60.0
GROWTH_SECONDS = 20.0  # smoothing of the queue's growth: about one or two scrapes
# A window counts only if arrivals held within this spread: the arrival rate is a trailing
# average (rate over a minute), so on a ramp it lags the queue and reads as a slow fleet.
STEADY_ARRIVALS = 0.15
# A window counts only if the queue grew or shrank by this share of its arrivals. A queue
# that merely stays above zero between samples need not have kept every replica busy (a
# burst between two scrapes does that), and served / promised is then only a lower bound.
QUEUE_MOVED = 0.05
# Observed and declared differing by more than this sets ServiceRateAccurate=False.
DIFFER_FACTOR = 1.25


@dataclass(frozen=True)
class Reading:
    """One tick's inputs: queue depth, arrivals/s, the serving replicas, and the requests/s
    they would serve at their declared rates."""

    time: float
    queue: float
    arrival: float
    declared_capacity: float
    servers: int = 1


@dataclass(frozen=True)
class BusyWindow:
    start: float
    queue: float  # depth at the start
    arrived: float = 0.0  # requests arrived since the start
    promised: float = 0.0  # requests the declared rates promise since the start
    low: float = math.inf  # lowest and highest arrival rate seen in it
    high: float = 0.0


@dataclass(frozen=True)
class ServiceMemory:
    factor: float = 1.0
    weight: float = 0.0  # busy seconds behind `factor`, as of `updated`
    updated: float | None = None
    last: Reading | None = None
    window: BusyWindow | None = None
    # The declared rates (GPU type, requests/s) the factor was learnt against: a spec that
    # changes them starts afresh, or a corrected rate would be corrected twice.
    rates: tuple[tuple[str, float], ...] = ()
    # How fast the queue grows while every replica is busy (requests/s, smoothed over
    # `GROWTH_SECONDS`; 0 otherwise), from the last distinct reading (`mark`: time, queue).
    growth: float = 0.0
    mark: tuple[float, float] | None = None


def _moved_on(
    memory: ServiceMemory, last: Reading | None, window: BusyWindow | None
) -> ServiceMemory:
    """`memory` with another last reading and window: `dataclasses.replace` without its
    cost, which every pool with a declared rate paid each tick."""
    return ServiceMemory(
        memory.factor,
        memory.weight,
        memory.updated,
        last,
        window,
        memory.rates,
        memory.growth,
        memory.mark,
    )


def _marked(memory: ServiceMemory, growth: float, mark: tuple[float, float]) -> ServiceMemory:
    return ServiceMemory(
        memory.factor,
        memory.weight,
        memory.updated,
        memory.last,
        memory.window,
        memory.rates,
        growth,
        mark,
    )


def observe(memory: ServiceMemory, reading: Reading) -> ServiceMemory:
    """`memory` with one more tick's reading; a sample at the end of each busy window."""
    return _learn(_track_growth(memory, reading), reading)


def _track_growth(memory: ServiceMemory, reading: Reading) -> ServiceMemory:
    """The queue's growth, from one distinct reading to the next (the metric changes once a
    scrape, while the loop ticks every second)."""
    mark = memory.mark
    if mark is not None and reading.queue == mark[1] and reading.time >= mark[0]:
        return memory
    if mark is None or not 0 < reading.time - mark[0] <= MAX_GAP_SECONDS:
        return _marked(memory, 0.0, (reading.time, reading.queue))
    dt = reading.time - mark[0]
    waiting = max(1, reading.servers)
    if mark[1] < waiting or reading.queue < waiting:  # not every replica busy throughout
        return _marked(memory, 0.0, (reading.time, reading.queue))
    slope = (reading.queue - mark[1]) / dt
    alpha = 1.0 - math.exp(-dt / GROWTH_SECONDS)
    growth = alpha * slope + (1.0 - alpha) * memory.growth
    return _marked(memory, growth, (reading.time, reading.queue))


def _learn(memory: ServiceMemory, reading: Reading) -> ServiceMemory:
    last = memory.last
    if last is None or reading.time < last.time or reading.time - last.time > MAX_GAP_SECONDS:
        return _moved_on(memory, reading, None)  # start afresh
    if reading.time == last.time:
        return memory
    # A queue shorter than the replicas may have emptied between two readings (a scrape
    # every 15 to 30 s): then served / promised is only a lower bound.
    waiting = max(1, reading.servers)
    busy = (
        last.queue >= waiting
        and reading.queue >= waiting
        and reading.declared_capacity > 0
        and math.isclose(reading.declared_capacity, last.declared_capacity, rel_tol=1e-6)
    )
    if not busy:
        return _moved_on(memory, reading, None)
    dt = reading.time - last.time
    window = memory.window or BusyWindow(last.time, last.queue)
    window = replace(
        window,
        arrived=window.arrived + (reading.arrival + last.arrival) / 2 * dt,
        promised=window.promised + reading.declared_capacity * dt,
        low=min(window.low, last.arrival, reading.arrival),
        high=max(window.high, last.arrival, reading.arrival),
    )
    length = reading.time - window.start
    if length < WINDOW_SECONDS:
        return _moved_on(memory, reading, window)
    moved = reading.queue - window.queue
    if window.high > window.low * (1.0 + STEADY_ARRIVALS) or abs(moved) < QUEUE_MOVED * max(
        window.arrived, 1.0
    ):  # a ramp, or a queue that tells nothing: start afresh
        return _moved_on(memory, reading, BusyWindow(reading.time, reading.queue))
    served = window.arrived - moved
    sample = min(max(served / window.promised, MIN_FACTOR), MAX_FACTOR)
    kept = _weight(memory, reading.time)
    factor = (memory.factor * kept + sample * length) / (kept + length)
    return replace(
        memory,
        factor=factor,
        weight=min(kept + length, MAX_WEIGHT_SECONDS),
        updated=reading.time,
        last=reading,
        window=BusyWindow(reading.time, reading.queue),
    )


def _weight(memory: ServiceMemory, now: float) -> float:
    if memory.updated is None:
        return 0.0
    return memory.weight * math.exp(-max(0.0, now - memory.updated) / MEMORY_SECONDS)


def work_factor(memory: ServiceMemory | None, now: float) -> float:
    """The factor to size with: observed where it is believed, 1 (declared) otherwise."""
    if memory is None or memory.updated is None:
        return 1.0
    weight = _weight(memory, now)
    if memory.factor < 1.0:
        confidence = min(1.0, weight / BELIEVED_SLOWER_SECONDS)
    else:
        confidence = weight / (weight + TRUST_SECONDS)
    blended = 1.0 + (memory.factor - 1.0) * confidence
    return max(MIN_FACTOR, round(blended / FACTOR_STEP) * FACTOR_STEP)


def differs(factor: float) -> bool:
    return factor > DIFFER_FACTOR or factor < 1.0 / DIFFER_FACTOR
