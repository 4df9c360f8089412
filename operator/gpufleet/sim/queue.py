"""FIFO queues: a fluid one of cohorts (fast, exact to the step) and a per-request one.

The fluid queue holds cohorts (arrival step, requests, work). Each step the replicas'
capacity, in work units, serves cohorts in order; the requests of a cohort that start in
step j waited j - i steps. Waits go into a weighted histogram, so percentiles and SLO
attainment are exact to the step without keeping millions of requests.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class WaitHistogram:
    """Requests by wait in whole steps; grows to the longest wait seen."""

    step: float = 1.0
    bins: list[float] = field(default_factory=lambda: [0.0])
    total: float = 0.0

    def add(self, wait_steps: int, count: float) -> None:
        if wait_steps >= len(self.bins):
            self.bins.extend([0.0] * (wait_steps + 1 - len(self.bins)))
        self.bins[wait_steps] += count
        self.total += count

    def merge(self, other: WaitHistogram) -> None:
        if len(other.bins) > len(self.bins):
            self.bins.extend([0.0] * (len(other.bins) - len(self.bins)))
        for i, n in enumerate(other.bins):
            self.bins[i] += n
        self.total += other.total

    def share_within(self, seconds: float) -> float:
        if self.total <= 0:
            return 1.0
        return sum(self.bins[: int(seconds / self.step + 1e-9) + 1]) / self.total

    def quantile(self, q: float) -> float:
        if self.total <= 0:
            return 0.0
        target, seen = q * self.total, 0.0
        for i, n in enumerate(self.bins):
            seen += n
            if seen >= target - 1e-9:
                return i * self.step
        return (len(self.bins) - 1) * self.step


class FluidQueue:
    """FIFO of cohorts [arrival step, requests, work, *tier shares of the requests].

    With `tiers`, each cohort carries the share of its requests per tier, so waits are
    recorded per tier as well; with `slo_seconds`, requests are also counted by the window
    of `window_seconds` they arrived in, within the SLO or not (attainment over time).
    """

    def __init__(
        self,
        step: float = 1.0,
        tiers: int = 0,
        slo_seconds: float | None = None,
        window_seconds: float = 3600.0,
    ) -> None:
        self.cohorts: deque[list[float]] = deque()
        self.waits = WaitHistogram(step)
        self.tier_waits = [WaitHistogram(step) for _ in range(tiers)]
        self.depth = 0.0  # requests waiting
        self.backlog = 0.0  # work waiting
        self.served = 0.0  # requests started
        self.deadline = int(slo_seconds / step + 1e-9) if slo_seconds is not None else None
        self.window = max(1, round(window_seconds / step))
        self.windows: dict[int, list[float]] = {}  # arrival window: [within SLO, requests]

    def _record(self, c: list[float], wait: int, n: float) -> None:
        self.waits.add(wait, n)
        for j in range(3, len(c)):
            if c[j] > 0:
                self.tier_waits[j - 3].add(wait, n * c[j])
        if self.deadline is not None:
            w = self.windows.setdefault(int(c[0]) // self.window, [0.0, 0.0])
            w[1] += n
            if wait <= self.deadline:
                w[0] += n

    def push(
        self, step_index: int, count: float, work: float, shares: Sequence[float] = ()
    ) -> None:
        """Queue `count` requests carrying `work`; `shares` splits them by tier."""
        c = [float(step_index), count, work, *shares]
        if count > 0 and work > 0:
            self.cohorts.append(c)
            self.depth += count
            self.backlog += work
        elif count > 0:  # work-free requests start at once
            self._record(c, 0, count)
            self.served += count

    def serve(self, step_index: int, capacity: float) -> float:
        """Start as much queued work as `capacity` allows; return the work served."""
        served = 0.0
        cohorts = self.cohorts
        while cohorts and capacity > 1e-12:
            c = cohorts[0]
            wait = step_index - int(c[0])
            if c[2] <= capacity:
                capacity -= c[2]
                served += c[2]
                self._record(c, wait, c[1])
                self.served += c[1]
                self.depth -= c[1]
                cohorts.popleft()
            else:
                frac = capacity / c[2]
                n = c[1] * frac
                self._record(c, wait, n)
                self.served += n
                c[1] -= n
                c[2] -= capacity
                self.depth -= n
                served += capacity
                capacity = 0.0
        self.backlog = max(0.0, self.backlog - served)
        if not cohorts:
            self.depth = self.backlog = 0.0
        return served

    def drain_unserved(self, step_index: int) -> None:
        """At the end of a run, count requests still queued with the wait they have so far."""
        for c in self.cohorts:
            self._record(c, step_index - int(c[0]), c[1])
        self.cohorts.clear()


class RequestQueue:
    """Per-request FIFO with `servers` single-request servers (the M/M/c check).

    Each request's service time is its work / rate. Exact for a fixed number of servers.
    """

    def __init__(self) -> None:
        self.free: list[float] = []  # when each server is next free
        self.waits: list[float] = []

    def set_servers(self, n: int, now: float) -> None:
        while len(self.free) < n:
            heapq.heappush(self.free, now)
        while len(self.free) > n:  # the server free last leaves after its request
            self.free.remove(max(self.free))
            heapq.heapify(self.free)

    def arrive(self, time: float, service: float) -> float:
        start = max(time, heapq.heappop(self.free))
        heapq.heappush(self.free, start + service)
        self.waits.append(start - time)
        return start - time
