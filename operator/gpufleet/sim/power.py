"""Power: watts per node pool from utilisation, each PowerBudget's cap at a time, and each
pool's measured peak draw per GPU."""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime

from gpufleet.api import NodePool, PowerBudgetSpec
from gpufleet.api.power import Weekday
from gpufleet.planner.types import Fleet, NodePoolKey, PoolKey

DAYS = list(Weekday)


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def cap_watts(budget: PowerBudgetSpec, epoch: float) -> tuple[float, str | None]:
    """The cap in force: the lowest of the open windows' caps, else capKilowatts."""
    t = datetime.fromtimestamp(epoch, UTC)
    minute = t.hour * 60 + t.minute
    cap, active = budget.cap_kilowatts * 1000.0, None
    for w in budget.windows:
        start, end = _minutes(w.start_time), _minutes(w.end_time)
        if start < end:
            open_, start_day = start <= minute < end, t.weekday()
        elif minute >= start:  # crosses midnight, in its first day
            open_, start_day = True, t.weekday()
        else:
            open_, start_day = minute < end, (t.weekday() - 1) % 7
        if open_ and (not w.days or DAYS[start_day] in w.days) and w.cap_kilowatts * 1000.0 < cap:
            cap, active = w.cap_kilowatts * 1000.0, w.name
    return cap, active


def in_scope(fleet: Fleet, budget: PowerBudgetSpec) -> list[NodePoolKey]:
    out = []
    for pname, provider in fleet.providers.items():
        if budget.scope.providers and pname not in budget.scope.providers:
            continue
        for np_spec in provider.node_pools:
            if budget.scope.sites and np_spec.site not in budget.scope.sites:
                continue
            out.append(NodePoolKey(pname, np_spec.name))
    return out


CAP_REFRESH_STEPS = 60  # the run reads each cap once a minute of steps


def caps_by_step(
    budget: PowerBudgetSpec, start_epoch: float, steps: int, step: float
) -> list[float]:
    """The cap in force in each step of a run, as the run reads it."""
    out: list[float] = []
    cap = 0.0
    for i in range(steps):
        if i % CAP_REFRESH_STEPS == 0:
            cap = cap_watts(budget, start_epoch + i * step)[0]
        out.append(cap)
    return out


def node_watts(spec: NodePool, nodes: int, busy_extra: float = 0.0) -> float:
    """Nodes draw their overhead and idle watts per GPU from the boot request on; busy GPUs
    add `busy_extra` watts above idle."""
    return nodes * (spec.node_overhead_watts + spec.gpus_per_node * spec.idle_watts_per_gpu) + (
        busy_extra
    )


# The operator's default --power-query reads each pod's peak over the last hour.
DRAW_WINDOW = 3600.0


class PeakDraw:
    """Each pool's draw per GPU by GPU type, at its peak over the last `window_steps`, as
    the operator's default power query reads the DCGM exporter's per-pod series: a GPU
    with a loading replica draws idle, one with a ready replica idle plus its busy share.
    A pool with no replica of a type on a node has no series of it: not measured, and its
    peak starts afresh (the new pods' series have no history)."""

    def __init__(self, window_steps: int) -> None:
        self.window = max(1, window_steps)
        # Per pool and GPU type: (step, watts) with watts falling, the peak first.
        self._peaks: dict[PoolKey, dict[str, deque[tuple[int, float]]]] = {}

    def record(self, i: int, pool: PoolKey, drawn: dict[str, float]) -> None:
        """Step `i`'s draw per GPU of `pool`'s GPU types that have a replica on a node."""
        before = self._peaks.get(pool, {})
        now: dict[str, deque[tuple[int, float]]] = {}
        for gpu_type, watts in drawn.items():
            kept = before.get(gpu_type) or deque()
            while kept and kept[-1][1] <= watts:
                kept.pop()
            kept.append((i, watts))
            while kept[0][0] <= i - self.window:
                kept.popleft()
            now[gpu_type] = kept
        self._peaks[pool] = now

    def read(self, i: int) -> dict[PoolKey, dict[str, float]]:
        out: dict[PoolKey, dict[str, float]] = {}
        for pool, by_type in self._peaks.items():
            for gpu_type, kept in by_type.items():
                while kept and kept[0][0] <= i - self.window:
                    kept.popleft()
                if kept:
                    out.setdefault(pool, {})[gpu_type] = kept[0][1]
        return out
