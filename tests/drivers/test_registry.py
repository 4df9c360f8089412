"""The factory: a CloudProviderSpec's driver type picks the driver, always instrumented."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client import ApiClient
from prometheus_client import CollectorRegistry

from gpufleet.api.provider import CloudProviderSpec
from gpufleet.drivers.clusterapi import ClusterApiDriver
from gpufleet.drivers.clusterapi_pool import ClusterApiMachinePoolDriver
from gpufleet.drivers.eks import EksDriver
from gpufleet.drivers.instrument import InstrumentedDriver
from gpufleet.drivers.karpenter import KarpenterDriver
from gpufleet.drivers.registry import make_driver, removes_named_nodes
from gpufleet.drivers.retry import RetryingDriver
from gpufleet.drivers.simulated import SimulatedDriver


def spec(driver: dict[str, Any]) -> CloudProviderSpec:
    return CloudProviderSpec.model_validate(
        {
            "subprocessor": {"legalEntity": "Example", "jurisdiction": "DE"},
            "driver": driver,
            "nodePools": [
                {
                    "name": "gpu",
                    "gpuType": "H100",
                    "gpusPerNode": 8,
                    "wattsPerGpu": 700,
                    "idleWattsPerGpu": 90,
                    "maxNodes": 4,
                    "site": "fra1",
                }
            ],
        }
    )


@pytest.mark.parametrize(
    ("driver", "inner"),
    [
        ({"type": "Simulated"}, SimulatedDriver),
        (
            {"type": "ClusterAPI", "clusterAPI": {"namespace": "capi", "clusterName": "c1"}},
            ClusterApiDriver,
        ),
        (
            {
                "type": "ClusterAPI",
                "clusterAPI": {"namespace": "capi", "clusterName": "c1", "kind": "MachinePool"},
            },
            ClusterApiMachinePoolDriver,
        ),
        ({"type": "Karpenter"}, KarpenterDriver),
        ({"type": "EKS", "eks": {"region": "eu-central-1", "clusterName": "c1"}}, EksDriver),
    ],
)
def test_each_driver_type_makes_an_instrumented_retrying_driver(
    driver: dict[str, Any], inner: type
) -> None:
    with ApiClient() as client:
        made = make_driver(
            "cloud",
            spec(driver),
            api_client=client,
            registry=CollectorRegistry(),
            aws_clients=lambda region, credentials: (None, None),
        )
    assert isinstance(made, InstrumentedDriver)
    assert isinstance(made.inner, RetryingDriver)
    assert isinstance(made.inner.inner, inner)
    assert made.driver == driver["type"]


def test_only_backends_that_remove_the_named_nodes_let_the_loop_choose() -> None:
    capi = {"namespace": "capi", "clusterName": "c1"}
    assert removes_named_nodes(spec({"type": "Simulated"}))
    assert removes_named_nodes(spec({"type": "ClusterAPI", "clusterAPI": capi}))
    # A MachinePool's provider picks the instances; an EKS Node outlives its termination;
    # Karpenter may launch a replacement between a claim's deletion and the lower limit.
    assert not removes_named_nodes(spec({"type": "Karpenter"}))
    pool = {**capi, "kind": "MachinePool"}
    assert not removes_named_nodes(spec({"type": "ClusterAPI", "clusterAPI": pool}))
    assert not removes_named_nodes(
        spec({"type": "EKS", "eks": {"region": "eu-central-1", "clusterName": "c1"}})
    )
