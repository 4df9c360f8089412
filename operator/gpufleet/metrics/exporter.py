"""Prometheus out: the operator's own metrics, one registry, served on /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class OperatorMetrics:
    """Figures per pool, provider, node pool and budget, as the status shows them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.desired_replicas = Gauge(
            "gpufleet_pool_desired_replicas",
            "Replicas the plan wants, by provider.",
            ["namespace", "pool", "provider"],
            registry=r,
        )
        self.current_replicas = Gauge(
            "gpufleet_pool_current_replicas",
            "Replicas observed, by provider.",
            ["namespace", "pool", "provider"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "gpufleet_pool_queue_depth", "Last queue depth read.", ["namespace", "pool"], registry=r
        )
        self.burst_replicas = Gauge(
            "gpufleet_pool_burst_replicas",
            "Replicas the plan places on secondary (burst) providers.",
            ["namespace", "pool"],
            registry=r,
        )
        self.sustainable_rate = Gauge(
            "gpufleet_pool_sustainable_requests_per_second",
            "While throttled: requests/s the plan carries at the SLO (tier empty), and per tier "
            "what the gateway should admit; NaN while the pool keeps up.",
            ["namespace", "pool", "tier"],
            registry=r,
        )
        self.metrics_available = Gauge(
            "gpufleet_pool_metrics_available",
            "1 when the queue metric was usable.",
            ["namespace", "pool"],
            registry=r,
        )
        self.pool_watts = Gauge(
            "gpufleet_pool_power_watts",
            "Estimated power of the pool's GPUs.",
            ["namespace", "pool"],
            registry=r,
        )
        self.desired_nodes = Gauge(
            "gpufleet_nodepool_desired_nodes",
            "Nodes the plan wants.",
            ["provider", "node_pool"],
            registry=r,
        )
        self.current_nodes = Gauge(
            "gpufleet_nodepool_current_nodes",
            "Nodes asked of the backend.",
            ["provider", "node_pool"],
            registry=r,
        )
        self.budget_drawn_kw = Gauge(
            "gpufleet_powerbudget_drawn_kilowatts",
            "Power drawn (measured, else estimated).",
            ["budget"],
            registry=r,
        )
        self.budget_planned_kw = Gauge(
            "gpufleet_powerbudget_planned_kilowatts",
            "Power the plan is expected to draw.",
            ["budget"],
            registry=r,
        )
        self.budget_allowed_kw = Gauge(
            "gpufleet_powerbudget_allowed_kilowatts",
            "Cap in force less headroom.",
            ["budget"],
            registry=r,
        )
        self.decisions = Counter(
            "gpufleet_decisions_total",
            "Scale decisions by reason.",
            ["namespace", "pool", "reason"],
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "gpufleet_reconcile_duration_seconds",
            "Time of one fleet reconcile.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.phase_seconds = Histogram(
            "gpufleet_reconcile_phase_seconds",
            "Time of one part of a fleet reconcile, by phase: view (the indexes read), "
            "observe (workloads, credentials, remote clusters, Prometheus, drivers), plan, "
            "actuate, report (statuses, Events, gateway), heap (the garbage collector's "
            "collections and freezes after a tick).",
            ["phase"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.last_plan = Gauge(
            "gpufleet_last_plan_timestamp_seconds",
            "Unix time the fleet loop last finished planning every pool (before it acts): "
            "a stuck loop shows as this falling behind, a start as the time to its first plan.",
            registry=r,
        )
        self.reconcile_errors = Counter(
            "gpufleet_reconcile_errors_total",
            "Errors caught in the fleet loop, by stage.",
            ["stage"],
            registry=r,
        )
