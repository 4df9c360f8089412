"""Run settings of the operator, from flags and environment (`gpufleet run`)."""

from __future__ import annotations

from dataclasses import dataclass

# Each pod's peak GPU draw over the last hour, per GPU, from the DCGM exporter's series (its
# Kubernetes mapping labels them with the pod). A peak over a long window, not the last
# sample: a pool kept idle for a moment must not look cheap, and fit several times the GPUs
# under a cap, just before its load comes back.
DEFAULT_POWER_QUERY = "max by (namespace, pod) (max_over_time(DCGM_FI_DEV_POWER_USAGE[1h]))"


@dataclass(frozen=True)
class RunConfig:
    prometheus_url: str | None = None
    period_seconds: float = 1.0
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    operator_namespace: str = "gpufleet-system"
    metrics_port: int = 8080
    health_port: int = 8081
    bind_address: str = "0.0.0.0"
    max_sample_age_seconds: float = 120.0
    # Seconds each Prometheus answer is kept before its query is asked again
    # (metrics/kept.py); 0: every query every tick, for the quickest reaction.
    metrics_refresh_seconds: float = 0.0
    simulated_namespace: str = "gpufleet-system"
    # The ConfigMap (in operator_namespace) a gateway reads the sustainable rates from
    # (reconcilers/reporting/gateway.py); None: not published.
    gateway_config_map: str | None = None
    # Remote clusters (kubeconfigSecretRef) may be on the operator's host, link-local or
    # in-cluster names (reconcilers/burst/allowlist.py): for test beds' loopback clusters.
    allow_private_remote_servers: bool = False
    # This installation's id on what it makes in remote clusters (`--installation`,
    # reconcilers/burst/lifecycle.py); empty: the operator namespace. Changing it orphans
    # the copies running under the old one.
    installation: str = ""
    # Seconds a deleted CloudProvider waits for its remote copies to go before its finalizer
    # is removed anyway (`--provider-deletion-timeout`).
    provider_deletion_timeout_seconds: float = 600.0
    # The admin's per-pod power query (reconcilers/power_draw.py); None: every pool's busy
    # GPUs count at their node pool's nameplate wattsPerGpu.
    power_query: str | None = DEFAULT_POWER_QUERY
    # Pools' PromQL reads only series whose query_namespace_label is the pool's namespace
    # (metrics/confine.py); off: a tenant's query can read any series in Prometheus.
    confine_queries: bool = False
    query_namespace_label: str = "namespace"
    # Watch only the pods with these labels, filtered by the API server (docs/install.md,
    # "What the operator watches"); None: every pod, GPU pods kept.
    pod_label_selector: str | None = None
    # Seconds a remote cluster's copies and node pools are reused for, unless the operator
    # wrote there (reconcilers/burst/reads.py); 0: read every tick.
    remote_read_seconds: float = 10.0
    # gc.freeze() after the first tick and as the heap grows (reconcilers/heap.py):
    # `gpufleet run` only, as it acts on the whole process.
    freeze_heap: bool = False

    @property
    def anchor(self) -> str:
        """The ConfigMap the fleet loop's timer hangs on (see handlers)."""
        return "gpufleet-fleet"
