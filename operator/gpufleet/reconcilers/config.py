"""Run settings of the operator, from flags and environment (`gpufleet run`)."""

from __future__ import annotations

from dataclasses import dataclass


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
    simulated_namespace: str = "gpufleet-system"
    # The ConfigMap (in operator_namespace) a gateway reads the sustainable rates from
    # (reconcilers/reporting/gateway.py); None: not published.
    gateway_config_map: str | None = None

    @property
    def anchor(self) -> str:
        """The ConfigMap the fleet loop's timer hangs on (see handlers)."""
        return "gpufleet-fleet"
