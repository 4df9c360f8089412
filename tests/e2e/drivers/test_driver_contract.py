"""The contract every NodePoolDriver passes, against a real API server and kwok.

Each test gets a fresh node pool from its driver's harness (see conftest.HARNESSES).
Waits poll `get_pool`, as the fleet loop does every tick, until a deadline.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from driver_harness import DriverHarness, eventually
from kubernetes.client import ApiClient, CoreV1Api, V1Node, V1Pod

from gpufleet.drivers.base import (
    CapacityError,
    InsufficientCapacity,
    NodePoolDriver,
    NodePoolNotFound,
    NodePoolState,
    QuotaExceeded,
)
from gpufleet.drivers.registry import removes_named_nodes

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio, pytest.mark.timeout(120)]


async def ready_nodes(driver: NodePoolDriver, harness: DriverHarness, count: int) -> NodePoolState:
    async def probe() -> NodePoolState | None:
        state = await driver.get_pool(harness.ref)
        return state if state.ready == count and len(state.all_nodes) == count else None

    # kwok marks a node Ready on its own schedule, slower on a loaded machine (one run timed
    # out at 30 s while helm rendered charts beside it).
    return await eventually(
        probe, within=60.0, what=f"{count} Ready nodes in {harness.ref.node_pool}"
    )


async def nodes_of(api_client: ApiClient, harness: DriverHarness) -> list[V1Node]:
    selector = ",".join(f"{k}={v}" for k, v in harness.node_selector.items())
    listed = await asyncio.to_thread(CoreV1Api(api_client).list_node, label_selector=selector)
    return list(listed.items)


async def test_target_size_reads_back_and_nodes_appear_after_boot(
    harness: DriverHarness, api_client: ApiClient
) -> None:
    driver = harness.new_driver()
    await driver.set_target_size(harness.ref, 2, action_id=f"up-{uuid.uuid4().hex[:6]}")

    assert (await driver.get_pool(harness.ref)).target_size == 2
    await harness.finish_boot()
    state = await ready_nodes(driver, harness, 2)

    nodes = await nodes_of(api_client, harness)
    assert sorted(n.metadata.name for n in nodes) == list(state.ready_nodes)
    for node in nodes:
        assert harness.expected.labels.items() <= (node.metadata.labels or {}).items()
        taints = [
            {k: v for k, v in t.to_dict().items() if k in ("key", "value", "effect") and v}
            for t in node.spec.taints or []
        ]
        assert all(t in taints for t in harness.expected.taints), taints
        assert node.status.capacity["nvidia.com/gpu"] == str(harness.expected.gpus)
        assert node.status.allocatable["nvidia.com/gpu"] == str(harness.expected.gpus)


async def test_setting_the_same_size_again_is_harmless(harness: DriverHarness) -> None:
    driver = harness.new_driver()
    await driver.set_target_size(harness.ref, 1, action_id="same")
    await harness.finish_boot()
    first = await ready_nodes(driver, harness, 1)

    await driver.set_target_size(harness.ref, 1, action_id="same")
    await driver.set_target_size(harness.ref, 1, action_id="same")
    again = await driver.get_pool(harness.ref)

    assert again.target_size == 1
    assert again.all_nodes == first.all_nodes


async def test_scale_to_zero_removes_nodes(harness: DriverHarness, api_client: ApiClient) -> None:
    driver = harness.new_driver()
    await driver.set_target_size(harness.ref, 2, action_id="up")
    await harness.finish_boot()
    await ready_nodes(driver, harness, 2)

    await driver.set_target_size(harness.ref, 0, action_id="down")

    async def gone() -> bool:
        state = await driver.get_pool(harness.ref)
        return (
            state.target_size == 0
            and not state.all_nodes
            and not await nodes_of(api_client, harness)
        )

    await eventually(gone, what="no nodes left")


async def test_a_shrink_by_name_then_to_its_size_removes_only_the_named_node(
    harness: DriverHarness,
) -> None:
    """What the fleet loop does on a shrink (reconcilers/apply.py) where the driver says it
    removes the very nodes named (`removes_named_nodes`): the node it chose by name, then
    the size; that node goes, and the backend takes no other."""
    if not removes_named_nodes(harness.spec):
        pytest.skip("the fleet loop lets this backend choose the nodes a shrink removes")
    driver = harness.new_driver()
    await driver.set_target_size(harness.ref, 3, action_id="up-3")
    await harness.finish_boot()
    names = (await ready_nodes(driver, harness, 3)).ready_nodes
    doomed = names[1]

    await driver.delete_nodes(harness.ref, [doomed], action_id="down-2")
    await driver.set_target_size(harness.ref, 2, action_id="down-2")

    async def settled() -> NodePoolState | None:
        state = await driver.get_pool(harness.ref)
        return state if set(state.all_nodes) == set(names) - {doomed} else None

    assert (await eventually(settled, what=f"only {doomed} gone")).target_size == 2


async def test_deleting_a_gone_node_succeeds(harness: DriverHarness) -> None:
    driver = harness.new_driver()
    await driver.set_target_size(harness.ref, 1, action_id="up")
    await harness.finish_boot()
    (name,) = (await ready_nodes(driver, harness, 1)).ready_nodes

    await driver.delete_nodes(harness.ref, [name], action_id="del-1")
    await driver.delete_nodes(harness.ref, [name], action_id="del-1")  # a retry
    await driver.delete_nodes(harness.ref, ["never-existed"], action_id="del-2")

    async def gone() -> NodePoolState | None:
        state = await driver.get_pool(harness.ref)
        return state if name not in state.all_nodes else None

    assert (await eventually(gone, what=f"{name} gone")).target_size == 0


async def test_unknown_node_pool_raises_not_found(harness: DriverHarness) -> None:
    driver = harness.new_driver()
    calls: list[Any] = [
        driver.get_pool(harness.unknown_ref),
        driver.set_target_size(harness.unknown_ref, 1, action_id="x"),
        driver.delete_nodes(harness.unknown_ref, ["n"], action_id="x"),
    ]
    for call in calls:
        with pytest.raises(NodePoolNotFound) as raised:
            await call
        assert raised.value.reason == "NodePoolNotFound"


@pytest.mark.parametrize(
    ("failure", "error"),
    [("InsufficientCapacity", InsufficientCapacity), ("QuotaExceeded", QuotaExceeded)],
)
async def test_injected_failure_raises_its_typed_error(
    harness: DriverHarness, failure: str, error: type[CapacityError]
) -> None:
    driver = harness.new_driver()
    await driver.set_target_size(harness.ref, 1, action_id="before")
    await harness.inject(failure)

    with pytest.raises(error) as raised:
        await driver.set_target_size(harness.ref, 3, action_id="after")

    assert raised.value.reason == failure
    assert isinstance(raised.value, CapacityError)
    assert not raised.value.transient
    assert (await driver.get_pool(harness.ref)).target_size < 3


async def test_a_fresh_driver_sees_the_same_state(harness: DriverHarness) -> None:
    first = harness.new_driver()
    await first.set_target_size(harness.ref, 2, action_id="up")

    second = harness.new_driver()  # an operator restart: nothing carried over in memory
    assert (await second.get_pool(harness.ref)).target_size == 2
    await harness.finish_boot()
    made = await ready_nodes(second, harness, 2)

    assert (await first.get_pool(harness.ref)).all_nodes == made.all_nodes


async def test_gpu_pod_runs_on_a_created_node(
    harness: DriverHarness, api_client: ApiClient, namespace: str
) -> None:
    driver = harness.new_driver()
    await driver.set_target_size(harness.ref, 1, action_id="up")
    await harness.finish_boot()
    (node_name,) = (await ready_nodes(driver, harness, 1)).ready_nodes
    core = CoreV1Api(api_client)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "inference"},
        "spec": {
            "nodeSelector": harness.node_selector,
            "tolerations": [
                {"key": t["key"], "operator": "Exists", "effect": t["effect"]}
                for t in harness.expected.taints
            ],
            "containers": [
                {
                    "name": "server",
                    "image": "registry.invalid/inference-server:test",
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ],
        },
    }
    await asyncio.to_thread(core.create_namespaced_pod, namespace, V1Pod.model_validate(pod))

    async def running() -> Any:
        got = await asyncio.to_thread(core.read_namespaced_pod, "inference", namespace)
        return got if got.status and got.status.phase == "Running" else None

    assert (await eventually(running, what="GPU pod Running")).spec.node_name == node_name
