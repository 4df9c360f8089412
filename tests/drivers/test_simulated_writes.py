"""How the simulated cloud writes a node pool's Nodes: side by side, and none started after
a call that failed."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from gpufleet.api.parse import parse_provider
from gpufleet.drivers.simulated import SimulatedDriver
from gpufleet.drivers.simulated_state import Pending, Plan, PoolState
from gpufleet_testbed import fleets


class Core:
    """The API server's Node calls, each a short round trip; `refuse` fails a create."""

    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.created: list[str] = []
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()

    def create_node(self, node: Any, field_manager: str) -> None:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(0.02)
        with self.lock:
            self.in_flight -= 1
        if node.metadata.name == self.refuse:
            raise ApiException(status=500, reason="Internal Server Error")
        with self.lock:
            self.created.append(node.metadata.name)


def _driver(core: Core) -> SimulatedDriver:
    spec = parse_provider(
        fleets.cloud_provider(
            "sim",
            legal_entity="Cloud GmbH",
            node_pools=[
                fleets.node_pool(
                    "h100",
                    gpu_type="H100",
                    site="fra1",
                    max_nodes=64,
                    watts_per_gpu=700,
                    idle_watts_per_gpu=100,
                )
            ],
        )["spec"]
    ).value
    assert spec is not None
    driver = SimulatedDriver(ApiClient(), "sim", spec)
    driver._core = core  # type: ignore[assignment]
    return driver


def _launches(count: int) -> Plan:
    pending = tuple(Pending(f"sim-h100-{i}", 0.0) for i in range(count))
    return Plan(PoolState(target_size=count), pending, ())


@pytest.mark.asyncio
async def test_a_pools_nodes_are_created_side_by_side() -> None:
    core = Core()
    driver = _driver(core)
    # More threads than the driver asks for, as the operator has (reconcilers/threads.py).
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(16))

    await driver._act(driver._spec.node_pools[0], _launches(20))

    assert sorted(core.created) == sorted(f"sim-h100-{i}" for i in range(20))
    assert core.most_in_flight == 8


@pytest.mark.asyncio
async def test_a_refused_create_stops_the_rest_of_the_batch() -> None:
    core = Core(refuse="sim-h100-1")
    driver = _driver(core)

    with pytest.raises(ApiException):
        await driver._act(driver._spec.node_pools[0], _launches(40))
    await asyncio.sleep(0.3)  # the batch's other writes, had they gone on, would have landed by now

    # Those already in a thread when the refusal came finish; none starts after it.
    assert len(core.created) < 16
