"""Inputs and outputs of the planner: frozen, hashable, free of I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import NamedTuple, TypeVar

from gpufleet.api.pool import PowerSource, RateSource, ServingPoolSpec
from gpufleet.api.power import PowerBudgetSpec
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.api.tenancy import UNGOVERNED, NamespaceTerms
from gpufleet.planner.bursts import BurstMemory
from gpufleet.planner.service import ServiceMemory


class PoolKey(NamedTuple):
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def parse(cls, text: str, default_namespace: str = "") -> PoolKey:
        """The key written as `namespace/name`; a bare `name` is in `default_namespace`."""
        namespace, _, name = text.rpartition("/")
        return cls(namespace or default_namespace, name)


class NodePoolKey(NamedTuple):
    provider: str
    node_pool: str

    def __str__(self) -> str:
        return f"{self.provider}/{self.node_pool}"


K = TypeVar("K")
V = TypeVar("V")


def frozen_map(items: Mapping[K, V] | None = None) -> Mapping[K, V]:
    return MappingProxyType(dict(items or {}))


class Reason(StrEnum):
    """Machine-readable reasons; the basis of status conditions and `gpufleet explain`."""

    SCALED_UP = "ScaledUp"
    SCALED_DOWN = "ScaledDown"
    STEADY = "Steady"
    SCALED_AHEAD_OF_FORECAST = "ScaledAheadOfForecast"
    SIZED_FOR_BURSTS = "SizedForRecurringBursts"
    QUEUE_GROWING = "QueueGrowing"
    BELOW_ACTIVATION = "BelowActivationThreshold"
    HELD_BY_STABILIZATION = "HeldByStabilization"
    BACKLOG_CLEARS_BEFORE_BOOT = "BacklogClearsBeforeBoot"
    LIMITED_BY_RATE = "LimitedByScalingPolicy"
    LIMITED_BY_MAX = "LimitedByMax"
    LIMITED_BY_MIN = "LimitedByMin"
    LIMITED_BY_QUOTA = "LimitedByQuota"  # a CloudProvider's gpuQuota
    LIMITED_BY_NAMESPACE_QUOTA = "LimitedByNamespaceQuota"  # a namespace's ResourceQuota
    LIMITED_BY_POWER = "LimitedByPower"
    LIMITED_BY_NODE_POOL_MAX = "LimitedByNodePoolMax"
    LIMITED_BY_BURST_MAX = "LimitedByBurstMax"
    NO_MATCHING_NODE_POOL = "NoMatchingNodePool"
    INSUFFICIENT_CAPACITY = "InsufficientCapacity"
    CAPACITY_BACKOFF = "CapacityBackoff"
    BURST_ACTIVE = "BurstActive"
    BURST_BLOCKED_BY_DATA_POLICY = "BurstBlockedByDataPolicy"  # the pool's own policy
    # A TenantPolicy of the pool's namespace, or a CloudProvider's `namespaces`.
    BURST_BLOCKED_BY_NAMESPACE_POLICY = "BurstBlockedByNamespacePolicy"
    OUTSIDE_DATA_POLICY = "PodsOutsideDataPolicy"
    BURST_DISABLED = "BurstDisabled"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    PROVIDER_UNAVAILABLE = "ProviderUnavailable"
    DRY_RUN = "DryRun"
    THROTTLED = "Throttled"
    PREEMPTED = "Preempted"
    WARM_SPARES = "WarmSpares"
    SCALE_DOWN_DELAYED = "ScaleDownDelayed"
    CAP_REACHED = "CapReached"
    MEASUREMENT_UNAVAILABLE = "MeasurementUnavailable"


@dataclass(frozen=True)
class Note:
    """One reason with the figures behind it, for conditions, Events and explain."""

    reason: Reason
    message: str


# --- what was observed --------------------------------------------------------------------


@dataclass(frozen=True)
class PoolObservation:
    """What the operator saw of one pool at the last scrape.

    `queue_depth` None means the metric was missing, empty, NaN or stale: capacity is held.
    `replicas` are the replicas that exist now per node pool (ready or starting);
    `ready_replicas` those of them serving now (None: not known, taken as all of them).
    `watts_per_gpu`: per GPU type, the peak draw of one of the pool's GPUs, measured over
    the operator's window (absent: not measured; budgets count the nameplate figure).
    """

    queue_depth: float | None
    arrival_rate: float | None = None
    replicas: Mapping[NodePoolKey, int] = field(default_factory=frozen_map)
    tier_rates: Mapping[str, float] = field(default_factory=frozen_map)
    ready_replicas: int | None = None
    watts_per_gpu: Mapping[str, float] = field(default_factory=frozen_map)

    @property  # read a few times a plan: a cached_property's lock costs more on 3.11
    def total_replicas(self) -> int:
        return sum(self.replicas.values())


class CapacityErrorKind(StrEnum):
    INSUFFICIENT_CAPACITY = "InsufficientCapacity"
    QUOTA_EXCEEDED = "QuotaExceeded"


@dataclass(frozen=True)
class CapacityError:
    kind: CapacityErrorKind
    time: float


@dataclass(frozen=True)
class NodePoolObservation:
    """Nodes that exist (ready) and were asked for (target, which includes booting ones)."""

    ready_nodes: int = 0
    target_nodes: int = 0
    last_error: CapacityError | None = None


@dataclass(frozen=True)
class Snapshot:
    """One consistent view of the fleet, taken before planning."""

    pools: Mapping[PoolKey, PoolObservation] = field(default_factory=frozen_map)
    node_pools: Mapping[NodePoolKey, NodePoolObservation] = field(default_factory=frozen_map)
    budget_watts: Mapping[str, float | None] = field(default_factory=frozen_map)
    unreachable_providers: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Fleet:
    """The users' valid specs. Invalid ones never reach the planner (SpecValid=False)."""

    pools: Mapping[PoolKey, ServingPoolSpec] = field(default_factory=frozen_map)
    providers: Mapping[str, CloudProviderSpec] = field(default_factory=frozen_map)
    budgets: Mapping[str, PowerBudgetSpec] = field(default_factory=frozen_map)
    # What the platform grants, never the pools' own word (api/tenancy.py): each pool's
    # priority, from the PriorityClass its pods run with (absent: 0); each namespace's
    # TenantPolicy terms (absent: none, UNGOVERNED); and the GPUs each namespace's pools may
    # hold in all under its ResourceQuotas, net of other pods' use (absent: no quota).
    priorities: Mapping[PoolKey, int] = field(default_factory=frozen_map)
    terms: Mapping[str, NamespaceTerms] = field(default_factory=frozen_map)
    namespace_gpus: Mapping[str, int] = field(default_factory=frozen_map)

    def priority(self, key: PoolKey) -> int:
        return self.priorities.get(key, 0)

    def terms_of(self, namespace: str) -> NamespaceTerms:
        return self.terms.get(namespace, UNGOVERNED)


@dataclass(frozen=True)
class Settings:
    """Planner tunables that are the operator's, not a pool's."""

    backoff_initial_seconds: float = 300.0
    backoff_max_seconds: float = 1800.0
    forecast_min_samples: int = 5
    # Smoothing by time constants, not per-tick factors: the operator ticks every second and
    # the simulator every ten, and both must see the same forecast for the same signal.
    forecast_level_seconds: float = 60.0
    forecast_trend_seconds: float = 300.0
    forecast_significance: float = 2.0
    history_seconds: float = 3600.0


# --- memory carried from one plan to the next ---------------------------------------------


@dataclass(frozen=True)
class Forecast:
    """Holt's linear trend state for one pool's demand (requests/s or replicas)."""

    level: float
    trend: float
    time: float
    samples: int
    error_variance: float = 0.0  # EWMA of squared one-step errors: the signal's noise


@dataclass(frozen=True)
class PoolMemory:
    recommendations: tuple[tuple[float, int], ...] = ()
    scale_events: tuple[tuple[float, int], ...] = ()
    forecast: Forecast | None = None
    last_scale_time: float | None = None
    service: ServiceMemory | None = None  # the work factor learnt from the queue
    bursts: BurstMemory | None = None  # recent queue bursts


@dataclass(frozen=True)
class Backoff:
    until: float
    failures: int
    error_time: float


@dataclass(frozen=True)
class PlannerState:
    """What the planner remembers between ticks; the caller keeps it and passes it back."""

    pools: Mapping[PoolKey, PoolMemory] = field(default_factory=frozen_map)
    backoffs: Mapping[NodePoolKey, Backoff] = field(default_factory=frozen_map)
    # Nodes each node pool's demand needed lately, as (until, nodes) with nodes falling and
    # the current need last (until +inf): the most needed within the scale-down delay is
    # the first entry still in it.
    node_needs: Mapping[NodePoolKey, tuple[tuple[float, int], ...]] = field(
        default_factory=frozen_map
    )


# --- the plan ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceRate:
    """Requests/s one replica serves on the pool's slowest GPU type: as declared, as the
    queue showed (None before a busy stretch), and as used to size the pool."""

    declared: float
    observed: float | None
    used: float
    source: RateSource
    growth: float = 0.0  # requests/s the queue grows by while every replica is busy


@dataclass(frozen=True)
class TierAllowance:
    name: str
    demand: float  # requests/s seen
    allowed: float  # requests/s to admit


@dataclass(frozen=True)
class Throttle:
    """Set when the replicas cannot carry the demand at the SLO: the planned ones (more
    cannot be had), or the ready ones while the rest start (`starting`)."""

    sustainable: float  # requests/s the replicas carry at the SLO
    demand: float
    tiers: tuple[TierAllowance, ...]
    starting: bool = False


@dataclass(frozen=True)
class PowerFigure:
    gpu_type: str
    watts_per_gpu: float
    source: PowerSource


@dataclass(frozen=True)
class PoolPlan:
    key: PoolKey
    desired_replicas: int
    current_replicas: int
    placements: Mapping[NodePoolKey, int]
    recommended_replicas: int
    unplaced_replicas: int
    burst_replicas: int
    planned_watts: float
    metrics_available: bool
    notes: tuple[Note, ...]
    throttle: Throttle | None = None
    spare_replicas: int = 0  # of desired_replicas: on idle GPUs of nodes kept for demand
    # Replicas per node pool that are not kept because pools placed before this one (higher
    # priority) took the room on its existing nodes; the reconciler drains them (issue 10).
    preempted: Mapping[NodePoolKey, int] = field(default_factory=frozen_map)
    service: ServiceRate | None = None  # None: the pool declares no rate, or no arrivals
    # Per GPU type the pool may use, what PowerBudgets counted one busy GPU at, and why.
    power: tuple[PowerFigure, ...] = ()

    def replicas_by_provider(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (provider, _), count in sorted(self.placements.items()):
            out[provider] = out.get(provider, 0) + count
        return out

    @property
    def reasons(self) -> tuple[Reason, ...]:
        return tuple(n.reason for n in self.notes)


@dataclass(frozen=True)
class NodePoolPlan:
    key: NodePoolKey
    desired_nodes: int
    current_nodes: int
    gpus_allocated: int
    notes: tuple[Note, ...]


@dataclass(frozen=True)
class BudgetPlan:
    name: str
    cap_watts: float
    allowed_watts: float
    planned_watts: float
    measured_watts: float | None
    active_window: str | None
    notes: tuple[Note, ...]


@dataclass(frozen=True)
class FleetPlan:
    pools: Mapping[PoolKey, PoolPlan]
    node_pools: Mapping[NodePoolKey, NodePoolPlan]
    budgets: Mapping[str, BudgetPlan]
    state: PlannerState
