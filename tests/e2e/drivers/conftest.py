"""Fixtures of the driver contract suite: one harness per driver kind.

A new driver adds its harness factory to HARNESSES; every contract test then runs
against it too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from driver_harness import DriverHarness, SimulatedHarness, WatchedSimulatedHarness
from kubernetes.client import ApiClient
from kubernetes.config import new_client_from_config
from machinepool_harness import MachinePoolHarness
from upstream_harness import ClusterApiHarness, KarpenterHarness

from gpufleet_testbed import Testbed
from gpufleet_testbed.kubectl import Kubectl


@pytest.fixture(scope="session")
def api_client(testbed: Testbed) -> Iterator[ApiClient]:
    client = new_client_from_config(config_file=str(testbed.kubeconfig))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def driver_namespace(kubectl: Kubectl) -> Iterator[str]:
    """Where simulated clouds keep their ConfigMaps during the session."""
    name = f"drivers-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "namespace", name)
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", "--ignore-not-found")


def eks_harness(client: ApiClient, kubectl: Kubectl, namespace: str) -> DriverHarness:
    # boto3 and moto are the optional `aws` extra: without them the EKS runs skip.
    pytest.importorskip("moto", reason="the EKS harness needs moto (pip install -e '.[aws]')")
    from eks_harness import EksHarness

    return EksHarness(client, kubectl, namespace)


HarnessFactory = Callable[[ApiClient, Kubectl, str], DriverHarness]
HARNESSES: dict[str, HarnessFactory] = {
    "Simulated": lambda client, kubectl, namespace: SimulatedHarness(client, kubectl, namespace),
    # Its Nodes from the operator's watch (WatchedNodes), not a list per call.
    "Simulated-watched": lambda client, kubectl, namespace: WatchedSimulatedHarness(
        client, kubectl, namespace
    ),
    "ClusterAPI": lambda client, kubectl, namespace: ClusterApiHarness(client, kubectl, namespace),
    "Karpenter": lambda client, kubectl, namespace: KarpenterHarness(client, kubectl, namespace),
    # GKE through CAPG, against Cluster API v1.13.2's MachinePool CRD (CAPG's) and v1.14.2's.
    "ClusterAPIMachinePool-capi1.13": lambda client, kubectl, namespace: MachinePoolHarness(
        client, kubectl, namespace
    ),
    "ClusterAPIMachinePool-capi1.14": lambda client, kubectl, namespace: MachinePoolHarness(
        client, kubectl, namespace, capi="cluster-api"
    ),
    "EKS": eks_harness,
}


@pytest.fixture(params=sorted(HARNESSES))
def harness(
    request: pytest.FixtureRequest, api_client: ApiClient, kubectl: Kubectl, driver_namespace: str
) -> Iterator[DriverHarness]:
    made = HARNESSES[request.param](api_client, kubectl, driver_namespace)
    try:
        yield made
    finally:
        made.cleanup()
