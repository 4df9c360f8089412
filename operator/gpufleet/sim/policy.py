"""What a policy sees each reconcile and what it decides; the base every policy follows."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

from gpufleet.planner.types import Fleet, NodePoolKey, NodePoolObservation, PoolKey
from gpufleet.sim.cluster import Cluster
from gpufleet.sim.data import Quantiles
from gpufleet.sim.queue import FluidQueue
from gpufleet.sim.scenario import Failure
from gpufleet.sim.trace import Demand


@dataclass(frozen=True)
class Scrape:
    """Prometheus at one scrape: queue depth, arrivals/s over the last minute (all of them,
    throttled ones included, as the gateway counts them), watts, arrivals/s per tier, and
    each pool's peak draw per GPU by GPU type (the operator's --power-query)."""

    time: float
    queue_depth: Mapping[PoolKey, float]
    arrival_rate: Mapping[PoolKey, float]
    budget_watts: Mapping[str, float]
    tier_rates: Mapping[PoolKey, Mapping[str, float]] = field(default_factory=dict)
    pool_watts: Mapping[PoolKey, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class View:
    """What a real operator sees at `t`: the last scrape, and the API servers' state now."""

    t: float  # seconds since the start of the run
    epoch: float  # wall clock, for power windows
    scrape: Scrape
    replicas: Mapping[PoolKey, Mapping[NodePoolKey, int]]  # that exist: pending, loading, ready
    bound: Mapping[PoolKey, Mapping[NodePoolKey, int]]  # scheduled on a node: loading, ready
    pending: Mapping[PoolKey, int]
    node_pools: Mapping[NodePoolKey, NodePoolObservation]
    ready: Mapping[PoolKey, int] = field(default_factory=dict)  # serving: model loaded


@dataclass
class Decision:
    """Absolute targets; whatever is absent stays as it is.

    `throttles` is what the policy publishes for the gateway, per pool and tier: (allowed,
    demand) requests/s. It holds until the next reconcile; a pool absent from it is not
    throttled. Only gpufleet publishes one (KEDA and CA have no such signal).
    """

    replicas: dict[PoolKey, dict[NodePoolKey, int]] = field(default_factory=dict)
    nodes: dict[NodePoolKey, int] = field(default_factory=dict)
    throttles: dict[PoolKey, dict[str, tuple[float, float]]] = field(default_factory=dict)
    # Replicas to drain off each node pool's existing nodes before the resize (preemption).
    preempt: dict[PoolKey, dict[NodePoolKey, int]] = field(default_factory=dict)
    # Scheduled replicas the scheduler sends back to pending (kube-scheduler preemption by
    # PriorityClass): exactly this many, whatever the pool's targets.
    evict: dict[PoolKey, dict[NodePoolKey, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """Static facts handed to a policy before the run.

    `rates` are the true units/s of one replica per pool and node pool; `demand` is the
    future and `queues` the live queues: only the reference policies (static, reactive,
    oracle) may read them (reactive only the present). `start` is the replicas per pool
    and node pool every policy starts with (`placement.start_state`).
    """

    fleet: Fleet
    rates: Mapping[PoolKey, Mapping[NodePoolKey, float]]
    mean_work: Mapping[PoolKey, float]
    loaded_watts: Mapping[PoolKey, Mapping[NodePoolKey, float]]
    demand: Mapping[PoolKey, Demand]
    failures: tuple[Failure, ...]
    load: Quantiles
    step: float
    start_epoch: float
    cluster: Cluster
    queues: Mapping[PoolKey, FluidQueue]
    start: Mapping[PoolKey, Mapping[NodePoolKey, int]] = field(default_factory=dict)


class Policy(ABC):
    name: str = "policy"
    period: float = 10.0  # seconds between reconciles

    def setup(self, ctx: Context) -> None:  # noqa: B027 - optional hook
        """Called once before the run."""

    @abstractmethod
    def decide(self, view: View) -> Decision: ...
