"""The driver wrapper: call time and errors by reason, and only typed errors out."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from gpufleet.drivers.base import (
    DriverError,
    NodePoolDriver,
    NodePoolRef,
    NodePoolState,
    ProviderUnavailable,
    QuotaExceeded,
    Throttled,
)
from gpufleet.drivers.instrument import InstrumentedDriver, driver_metrics

REF = NodePoolRef("cloud", "gpu", "gpu")
SECRET = "AKIA-not-a-real-key"


class SdkError(Exception):
    """Shaped like an SDK's HTTP error: a status and a body that must not leak."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}: body with token {SECRET}")
        self.status = status


class FakeDriver:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[tuple[str, object]] = []

    async def get_pool(self, ref: NodePoolRef) -> NodePoolState:
        self.calls.append(("get_pool", ref))
        if self.error:
            raise self.error
        return NodePoolState(1, ("n-0",), ("n-0",))

    async def set_target_size(self, ref: NodePoolRef, size: int, *, action_id: str) -> None:
        self.calls.append(("set_target_size", (size, action_id)))
        if self.error:
            raise self.error

    async def delete_nodes(self, ref: NodePoolRef, names: Sequence[str], *, action_id: str) -> None:
        self.calls.append(("delete_nodes", (tuple(names), action_id)))
        if self.error:
            raise self.error


def wrap(inner: FakeDriver) -> tuple[InstrumentedDriver, CollectorRegistry]:
    registry = CollectorRegistry()
    return InstrumentedDriver(inner, driver="Fake", registry=registry), registry


def errors(registry: CollectorRegistry, call: str, reason: str) -> float | None:
    return registry.get_sample_value(
        "gpufleet_driver_errors_total", {"driver": "Fake", "call": call, "reason": reason}
    )


def calls(registry: CollectorRegistry, call: str) -> float | None:
    return registry.get_sample_value(
        "gpufleet_driver_call_seconds_count", {"driver": "Fake", "call": call}
    )


def test_passes_calls_through_and_times_them() -> None:
    inner = FakeDriver()
    driver, registry = wrap(inner)
    assert isinstance(driver, NodePoolDriver)

    state = asyncio.run(driver.get_pool(REF))
    asyncio.run(driver.set_target_size(REF, 3, action_id="a1"))
    asyncio.run(driver.delete_nodes(REF, ["n-0"], action_id="a2"))

    assert state.ready == 1
    assert inner.calls[1:] == [("set_target_size", (3, "a1")), ("delete_nodes", (("n-0",), "a2"))]
    assert calls(registry, "get_pool") == 1
    assert calls(registry, "set_target_size") == 1
    assert calls(registry, "delete_nodes") == 1


def test_typed_errors_pass_unchanged_and_count_by_reason() -> None:
    quota = QuotaExceeded("no more GPUs")
    driver, registry = wrap(FakeDriver(quota))

    with pytest.raises(QuotaExceeded) as raised:
        asyncio.run(driver.set_target_size(REF, 9, action_id="a1"))

    assert raised.value is quota
    assert errors(registry, "set_target_size", "QuotaExceeded") == 1
    assert calls(registry, "set_target_size") == 1


@pytest.mark.parametrize(
    ("error", "expected", "reason"),
    [
        (SdkError(429), Throttled, "Throttled"),
        (SdkError(503), ProviderUnavailable, "ProviderUnavailable"),
        (
            ConnectionRefusedError(f"refused by {SECRET}"),
            ProviderUnavailable,
            "ProviderUnavailable",
        ),
        (SdkError(403), DriverError, "DriverError"),
        (KeyError(SECRET), DriverError, "DriverError"),
    ],
)
def test_untyped_errors_become_driver_errors_without_their_text(
    error: Exception, expected: type[DriverError], reason: str
) -> None:
    driver, registry = wrap(FakeDriver(error))

    with pytest.raises(expected) as raised:
        asyncio.run(driver.get_pool(REF))

    assert raised.value.reason == reason
    assert SECRET not in str(raised.value)
    assert type(error).__name__ in str(raised.value)
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__
    assert errors(registry, "get_pool", reason) == 1


def test_http_status_is_in_the_summary() -> None:
    driver, _ = wrap(FakeDriver(SdkError(503)))
    with pytest.raises(ProviderUnavailable, match=r"get_pool failed: SdkError \(HTTP 503\)"):
        asyncio.run(driver.get_pool(REF))


def test_one_registry_serves_many_drivers() -> None:
    registry = CollectorRegistry()
    first = InstrumentedDriver(FakeDriver(), driver="A", registry=registry)
    second = InstrumentedDriver(FakeDriver(), driver="B", registry=registry)
    asyncio.run(first.get_pool(REF))
    asyncio.run(second.get_pool(REF))
    assert driver_metrics(registry) is driver_metrics(registry)
    for name in ("A", "B"):
        labels = {"driver": name, "call": "get_pool"}
        assert registry.get_sample_value("gpufleet_driver_call_seconds_count", labels) == 1
