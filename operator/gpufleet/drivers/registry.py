"""CloudProviderSpec -> an instrumented NodePoolDriver that retries transient errors.

The caller (a reconciler) builds the ApiClient for the provider's cluster, including one
from `cluster.kubeconfigSecretRef`, and reads `eks.credentialsSecretRef` (reconcilers/
credentials.py, with `eks.parse_credentials_file`): drivers never read Secrets or
kubeconfig files, so no credential passes through here except as an opaque AwsCredentials.

The layers, outside in: InstrumentedDriver (call time, errors by reason: the final
outcome of a call) -> RetryingDriver (jittered retries of Throttled and
ProviderUnavailable) -> the backend's driver.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kubernetes.client import ApiClient
from prometheus_client import REGISTRY, CollectorRegistry

from gpufleet.api.provider import CloudProviderSpec, ClusterApiKind, DriverType
from gpufleet.drivers.base import DriverError, NodePoolDriver
from gpufleet.drivers.clusterapi import ClusterApiDriver
from gpufleet.drivers.clusterapi_pool import ClusterApiMachinePoolDriver
from gpufleet.drivers.eks import AwsCredentials, ClientFactory, EksDriver
from gpufleet.drivers.instrument import InstrumentedDriver
from gpufleet.drivers.karpenter import KarpenterDriver
from gpufleet.drivers.retry import DEFAULT_BACKOFF, Backoff, RetryingDriver
from gpufleet.drivers.simulated import DEFAULT_NAMESPACE, SimulatedDriver, WatchedNodes


class DriverNotAvailable(DriverError):
    """The spec names a driver type this build does not have yet."""

    reason = "DriverNotAvailable"
    transient = False


def removes_named_nodes(spec: CloudProviderSpec) -> bool:
    """Whether the backend's `delete_nodes` removes the very nodes named and its nodes are
    the cluster's Nodes until they go, so that the fleet loop may choose which nodes a
    shrink removes (reconcilers/changes.py `removals`). Not a MachinePool (its provider
    picks which instances go), nor EKS (a terminated instance's Node stays listed for a
    while, so a second shrink could name it again), nor Karpenter (its driver deletes the
    claim before it lowers the NodePool's limit, and in between a provisioner may launch a
    replacement: the contract suite caught one)."""
    kind = spec.driver.type
    if kind == DriverType.CLUSTER_API:
        settings = spec.driver.cluster_api
        return settings is None or settings.kind != ClusterApiKind.MACHINE_POOL
    return kind == DriverType.SIMULATED


def make_driver(
    provider: str,
    spec: CloudProviderSpec,
    *,
    api_client: ApiClient,
    clock: Callable[[], float] = time.time,
    registry: CollectorRegistry = REGISTRY,
    simulated_namespace: str = DEFAULT_NAMESPACE,
    aws_credentials: AwsCredentials | None = None,
    aws_clients: ClientFactory | None = None,
    backoff: Backoff = DEFAULT_BACKOFF,
    watched_nodes: WatchedNodes | None = None,
) -> NodePoolDriver:
    """The driver named by `spec.driver.type`, wrapped for retries, metrics and typed errors.
    `watched_nodes`: the Nodes of `api_client`'s cluster as the caller watches them."""
    kind = spec.driver.type
    inner: NodePoolDriver
    if kind == DriverType.SIMULATED:
        inner = SimulatedDriver(
            api_client,
            provider,
            spec,
            namespace=simulated_namespace,
            clock=clock,
            watched=watched_nodes,
        )
    elif kind == DriverType.CLUSTER_API:
        settings = spec.driver.cluster_api
        if settings is not None and settings.kind == ClusterApiKind.MACHINE_POOL:
            inner = ClusterApiMachinePoolDriver(api_client, provider, spec)
        else:
            inner = ClusterApiDriver(api_client, provider, spec)
    elif kind == DriverType.KARPENTER:
        inner = KarpenterDriver(api_client, provider, spec)
    elif kind == DriverType.EKS:
        if aws_clients is None:
            inner = EksDriver(api_client, provider, spec, credentials=aws_credentials)
        else:
            inner = EksDriver(
                api_client, provider, spec, credentials=aws_credentials, clients=aws_clients
            )
    else:
        raise DriverNotAvailable(f"driver type {kind.value} is not available in this build")
    retrying = RetryingDriver(inner, backoff=backoff)
    return InstrumentedDriver(retrying, driver=kind.value, registry=registry)
