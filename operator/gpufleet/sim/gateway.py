"""The gateway in front of each pool: splits arrivals by tier and enforces a published throttle.

Arrivals are fluid, so each step's requests split by the tiers' `sharePercent` (equal
shares where none is given). While the policy's last plan publishes a throttle for the pool,
each tier passes through a token bucket filled at its allowed rate and holding
`BUCKET_SECONDS` of it; what the bucket cannot cover is rejected at the gateway (counted as
throttled, never queued). A tier the plan leaves whole (allowed = its demand) and a pool
without a published throttle are let through.
"""

from __future__ import annotations

from collections.abc import Mapping

from gpufleet.planner.types import Fleet, PoolKey
from gpufleet.sim.metrics import TierResult
from gpufleet.sim.queue import WaitHistogram

BUCKET_SECONDS = 10.0  # burst a tier's bucket allows, in seconds of its allowed rate


class Gateway:
    def __init__(self, fleet: Fleet, step: float) -> None:
        self.step = step
        self.tiers: dict[PoolKey, list[str]] = {}
        self.shares: dict[PoolKey, list[float]] = {}
        for key, spec in fleet.pools.items():
            if not spec.tiers:
                continue
            raw = [float(t.share_percent or 0) for t in spec.tiers]
            total = sum(raw)
            self.tiers[key] = [t.name for t in spec.tiers]
            self.shares[key] = (
                [r / total for r in raw] if total > 0 else [1.0 / len(raw)] * len(raw)
            )
        self.published: dict[PoolKey, dict[str, tuple[float, float]]] = {}
        self.tokens: dict[PoolKey, dict[str, float]] = {}
        self.results: dict[PoolKey, dict[str, TierResult]] = {
            key: {name: TierResult(WaitHistogram(step)) for name in names}
            for key, names in self.tiers.items()
        }

    def publish(self, throttles: Mapping[PoolKey, Mapping[str, tuple[float, float]]]) -> None:
        """The plan's throttles, held until the next one; pools absent are let through."""
        self.published = {k: dict(v) for k, v in throttles.items() if k in self.tiers}
        for key in list(self.tokens):
            if key not in self.published:
                del self.tokens[key]  # a throttle that starts again starts with full buckets

    def tier_rates(self, key: PoolKey, rate: float) -> dict[str, float]:
        """Arrivals/s per tier the gateway counts, for a pool's arrivals/s."""
        return {
            n: rate * s
            for n, s in zip(self.tiers.get(key, []), self.shares.get(key, []), strict=True)
        }

    def admit(self, key: PoolKey, count: float, work: float) -> tuple[float, float, list[float]]:
        """Requests and work let into the queue this step, and their shares by tier."""
        names = self.tiers.get(key)
        if not names:
            return count, work, []
        gate = self.published.get(key)
        results = self.results[key]
        admitted = []
        for name, share in zip(names, self.shares[key], strict=True):
            offered = count * share
            let = offered
            limit = gate.get(name) if gate is not None else None
            if limit is not None and limit[0] < limit[1]:  # a whole tier is not limited
                allowed = limit[0]
                full = allowed * BUCKET_SECONDS
                tokens = self.tokens.setdefault(key, {}).get(name, full)
                tokens = min(tokens + allowed * self.step, full)
                let = min(offered, tokens)
                self.tokens[key][name] = tokens - let
                results[name].cut_admitted += let
                results[name].cut_published += allowed * self.step
            r = results[name]
            r.offered += offered
            r.admitted += let
            admitted.append(let)
        total = sum(admitted)
        if total <= 0:
            return 0.0, 0.0, []
        return total, work * total / count, [a / total for a in admitted]
