"""CloudProviderSpec -> an instrumented NodePoolDriver.

The caller (a reconciler) builds the ApiClient for the provider's cluster, including one
from `cluster.kubeconfigSecretRef`: drivers never read Secrets or kubeconfig files, so no
credential passes through here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kubernetes.client import ApiClient
from prometheus_client import REGISTRY, CollectorRegistry

from gpufleet.api.provider import CloudProviderSpec, DriverType
from gpufleet.drivers.base import DriverError, NodePoolDriver
from gpufleet.drivers.instrument import InstrumentedDriver
from gpufleet.drivers.simulated import DEFAULT_NAMESPACE, SimulatedDriver


class DriverNotAvailable(DriverError):
    """The spec names a driver type this build does not have yet."""

    reason = "DriverNotAvailable"
    transient = False


def make_driver(
    provider: str,
    spec: CloudProviderSpec,
    *,
    api_client: ApiClient,
    clock: Callable[[], float] = time.time,
    registry: CollectorRegistry = REGISTRY,
    simulated_namespace: str = DEFAULT_NAMESPACE,
) -> NodePoolDriver:
    """The driver named by `spec.driver.type`, wrapped for metrics and typed errors."""
    kind = spec.driver.type
    if kind == DriverType.SIMULATED:
        inner: NodePoolDriver = SimulatedDriver(
            api_client, provider, spec, namespace=simulated_namespace, clock=clock
        )
    else:
        raise DriverNotAvailable(f"driver type {kind.value} is not available in this build")
    return InstrumentedDriver(inner, driver=kind.value, registry=registry)
