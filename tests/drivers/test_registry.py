"""The factory: a CloudProviderSpec's driver type picks the driver, always instrumented."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client import ApiClient
from prometheus_client import CollectorRegistry

from gpufleet.api.provider import CloudProviderSpec
from gpufleet.drivers.instrument import InstrumentedDriver
from gpufleet.drivers.registry import DriverNotAvailable, make_driver
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


def test_simulated_spec_makes_an_instrumented_simulated_driver() -> None:
    with ApiClient() as client:
        driver = make_driver(
            "cloud", spec({"type": "Simulated"}), api_client=client, registry=CollectorRegistry()
        )
    assert isinstance(driver, InstrumentedDriver)
    assert isinstance(driver.inner, SimulatedDriver)
    assert driver.driver == "Simulated"


def test_a_driver_type_not_built_yet_is_a_typed_error() -> None:
    karpenter = spec({"type": "Karpenter"})
    with ApiClient() as client, pytest.raises(DriverNotAvailable) as raised:
        make_driver("cloud", karpenter, api_client=client, registry=CollectorRegistry())
    assert raised.value.reason == "DriverNotAvailable"
    assert not raised.value.transient
