"""What only the simulated cloud does: boot delay by clock, capacity and quota limits,
idle-first scale-down, concurrent writers, and its ConfigMap contract."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from driver_harness import BOOT_SECONDS, SimulatedHarness, eventually
from kubernetes.client import ApiClient, CoreV1Api, V1Pod

from gpufleet.drivers.base import (
    InsufficientCapacity,
    NodePoolRef,
    NodePoolState,
    QuotaExceeded,
)
from gpufleet_testbed.kubectl import Kubectl

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio, pytest.mark.timeout(120)]


@pytest.fixture
def cloud(
    api_client: ApiClient, kubectl: Kubectl, driver_namespace: str
) -> Iterator[SimulatedHarness]:
    made = SimulatedHarness(api_client, kubectl, driver_namespace, gpu_quota=6)
    try:
        yield made
    finally:
        made.cleanup()


async def pool_with(cloud: SimulatedHarness, count: int) -> NodePoolState:
    driver = cloud.new_driver()

    async def probe() -> NodePoolState | None:
        state = await driver.get_pool(cloud.ref)
        return state if state.ready == count and len(state.all_nodes) == count else None

    return await eventually(probe, what=f"{count} Ready nodes")


async def test_nodes_wait_for_the_boot_time(cloud: SimulatedHarness) -> None:
    driver = cloud.new_driver()
    await driver.set_target_size(cloud.ref, 1, action_id="up")

    cloud.clock.advance(BOOT_SECONDS - 1)
    booting = await driver.get_pool(cloud.ref)
    assert (booting.target_size, booting.ready, len(booting.all_nodes)) == (1, 0, 1)
    listed = await asyncio.to_thread(
        cloud.kubectl.json, "get", "nodes", "-l", f"gpufleet.io/provider={cloud.provider}"
    )
    assert listed["items"] == []

    cloud.clock.advance(1)
    await pool_with(cloud, 1)


async def test_config_map_records_target_and_launches(cloud: SimulatedHarness) -> None:
    await cloud.new_driver().set_target_size(cloud.ref, 2, action_id="act-7")

    data = await cloud.config_map_data()

    assert data["gpu.targetSize"] == "2"
    assert data["gpu.lastActionId"] == "act-7"
    assert data["gpu.nextOrdinal"] == "2"
    pending = json.loads(data["gpu.pending"])
    assert [p["name"] for p in pending] == [f"{cloud.provider}-gpu-0", f"{cloud.provider}-gpu-1"]
    assert all(p["readyAt"].endswith("Z") and p["actionId"] == "act-7" for p in pending)


async def test_limited_capacity_grants_what_there_is(cloud: SimulatedHarness) -> None:
    await cloud.set_knob("capacityNodes", "1")
    driver = cloud.new_driver()

    with pytest.raises(InsufficientCapacity, match="capacity for 1 nodes, 2 were asked"):
        await driver.set_target_size(cloud.ref, 2, action_id="up")

    assert (await driver.get_pool(cloud.ref)).target_size == 1


async def test_gpu_quota_rejects_the_whole_request(cloud: SimulatedHarness) -> None:
    driver = cloud.new_driver()
    await driver.set_target_size(cloud.ref, 3, action_id="fits")  # 3 nodes x 2 GPUs = quota

    with pytest.raises(QuotaExceeded):
        await driver.set_target_size(cloud.ref, 4, action_id="too-many")

    assert (await driver.get_pool(cloud.ref)).target_size == 3


async def test_scale_down_keeps_busy_nodes(
    cloud: SimulatedHarness, api_client: ApiClient, namespace: str
) -> None:
    driver = cloud.new_driver()
    await driver.set_target_size(cloud.ref, 2, action_id="up")
    cloud.clock.advance(BOOT_SECONDS)
    older, newest = sorted((await pool_with(cloud, 2)).ready_nodes)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "busy"},
        "spec": {
            "nodeName": newest,  # bound directly: the newest node is the busy one
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "c", "image": "registry.invalid/x:test"}],
        },
    }
    await asyncio.to_thread(
        CoreV1Api(api_client).create_namespaced_pod, namespace, V1Pod.model_validate(pod)
    )

    await driver.set_target_size(cloud.ref, 1, action_id="down")

    assert (await pool_with(cloud, 1)).ready_nodes == (newest,)
    assert older != newest


async def test_concurrent_writers_lose_no_update(cloud: SimulatedHarness) -> None:
    # Two instances write the same ConfigMap for different pools at once; without the
    # resourceVersion precondition the later write would drop the earlier one's keys.
    other = NodePoolRef(cloud.provider, "other", "other")
    first, second = cloud.new_driver(), cloud.new_driver()

    for size in (1, 2, 1):
        await asyncio.gather(
            first.set_target_size(cloud.ref, size, action_id=f"gpu-{size}"),
            second.set_target_size(other, size, action_id=f"other-{size}"),
        )
        data = await cloud.config_map_data()
        assert (data["gpu.targetSize"], data["other.targetSize"]) == (str(size), str(size))


async def test_zero_boot_seconds_makes_nodes_at_once(cloud: SimulatedHarness) -> None:
    other = NodePoolRef(cloud.provider, "other", "other")
    driver = cloud.new_driver()
    await driver.set_target_size(other, 2, action_id="up")

    async def ready() -> NodePoolState | None:
        state = await driver.get_pool(other)
        return state if state.ready == 2 else None

    await eventually(ready, what="2 Ready nodes without moving the clock")
