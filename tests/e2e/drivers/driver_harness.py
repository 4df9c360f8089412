"""What the contract suite needs from each driver's test set-up.

A harness owns one freshly named node pool in one backend, makes fresh driver instances
for it, finishes boots (the simulated cloud by moving its clock; a real backend by
waiting) and injects failures where the backend can. A driver that cannot inject a
failure skips that test from `inject`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from kubernetes.client import ApiClient
from prometheus_client import CollectorRegistry

from gpufleet.api.labels import PROVIDER_LABEL
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.drivers.base import NodePoolDriver, NodePoolRef, NodePoolState
from gpufleet.drivers.registry import make_driver
from gpufleet.drivers.simulated import WatchedNodes, config_map_name
from gpufleet.reconcilers.cache import node_entry
from gpufleet_testbed.kubectl import Kubectl

T = TypeVar("T")
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@dataclass(frozen=True)
class ExpectedNode:
    """What every Node of the harness's pool must carry."""

    labels: dict[str, str]
    taints: list[dict[str, str]]
    gpus: int


class DriverHarness(Protocol):
    kind: str
    spec: CloudProviderSpec
    ref: NodePoolRef
    unknown_ref: NodePoolRef
    expected: ExpectedNode
    node_selector: dict[str, str]

    def new_driver(self) -> NodePoolDriver: ...

    async def finish_boot(self) -> None: ...

    async def inject(self, failure: str) -> None: ...

    async def config_map_data(self) -> dict[str, str]:
        found = await asyncio.to_thread(
            self.kubectl.json,
            "get",
            "configmap",
            config_map_name(self.provider),
            "-n",
            self.namespace,
        )
        return dict(found.get("data", {}))

    def cleanup(self) -> None: ...


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, within: float = 30.0, what: str = "condition"
) -> T:
    """Polls `probe` until it returns something truthy; fails at the deadline."""
    deadline = time.monotonic() + within
    last: object = None
    while True:
        try:
            value = await probe()
        except Exception as error:  # the contract's typed errors are "not yet" too
            last = error
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {within:.0f}s waiting for {what}; last: {last!r}"
            )
        await asyncio.sleep(0.2)


@dataclass
class FakeClock:
    """Seconds since the epoch that move only when told; starts at the real time so the
    ConfigMap's timestamps read sensibly."""

    now: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


BOOT_SECONDS = 300


@dataclass
class SimulatedHarness:
    """The Simulated driver against the test bed's API server and kwok."""

    api_client: ApiClient
    kubectl: Kubectl
    namespace: str
    kind: str = "Simulated"
    provider: str = field(default_factory=lambda: f"contract-{uuid.uuid4().hex[:6]}")
    clock: FakeClock = field(default_factory=FakeClock)
    gpu_quota: int | None = None

    def __post_init__(self) -> None:
        self.spec = CloudProviderSpec.model_validate(
            {
                "subprocessor": {"legalEntity": "Contract Suite", "jurisdiction": "DE"},
                "driver": {"type": "Simulated"},
                "gpuQuota": self.gpu_quota,
                "nodePools": [
                    {
                        "name": "gpu",
                        "gpuType": "H100",
                        "gpusPerNode": 2,
                        "wattsPerGpu": 700,
                        "idleWattsPerGpu": 90,
                        "maxNodes": 4,
                        "bootSeconds": BOOT_SECONDS,
                        "site": "test",
                        "labels": [{"key": "gpufleet.io/contract", "value": "yes"}],
                        "taints": [GPU_TAINT],
                    },
                    # A second pool shares the ConfigMap and boots at once.
                    {
                        "name": "other",
                        "gpuType": "L40S",
                        "gpusPerNode": 1,
                        "wattsPerGpu": 350,
                        "idleWattsPerGpu": 35,
                        "maxNodes": 4,
                        "bootSeconds": 0,
                        "site": "test",
                    },
                ],
            }
        )
        self.ref = NodePoolRef(self.provider, "gpu", "gpu")
        self.unknown_ref = NodePoolRef(self.provider, "no-such-pool", "no-such-pool")
        self.expected = ExpectedNode(
            labels={
                "gpufleet.io/contract": "yes",
                PROVIDER_LABEL: self.provider,
                "gpufleet.io/node-pool": "gpu",
                "gpufleet.io/gpu-type": "H100",
                "nvidia.com/gpu.present": "true",
            },
            taints=[GPU_TAINT],
            gpus=2,
        )
        self.node_selector = {PROVIDER_LABEL: self.provider}

    def new_driver(self) -> NodePoolDriver:
        return self._driver()

    def _driver(self, watched: WatchedNodes | None = None) -> NodePoolDriver:
        return make_driver(
            self.provider,
            self.spec,
            api_client=self.api_client,
            clock=self.clock,
            registry=CollectorRegistry(),
            simulated_namespace=self.namespace,
            watched_nodes=watched,
        )

    async def finish_boot(self) -> None:
        self.clock.advance(BOOT_SECONDS)

    async def inject(self, failure: str) -> None:
        await self.set_knob("failWith", failure)

    async def set_knob(self, knob: str, value: str) -> None:
        # The documented control surface: a knob key in the provider's ConfigMap.
        manifest: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": config_map_name(self.provider), "namespace": self.namespace},
            "data": {f"{self.ref.node_pool}.{knob}": value},
        }
        await asyncio.to_thread(self.kubectl.apply, json.dumps(manifest), "--force-conflicts")

    async def config_map_data(self) -> dict[str, str]:
        found = await asyncio.to_thread(
            self.kubectl.json,
            "get",
            "configmap",
            config_map_name(self.provider),
            "-n",
            self.namespace,
        )
        return dict(found.get("data", {}))

    def cleanup(self) -> None:
        selector = f"{PROVIDER_LABEL}={self.provider}"
        self.kubectl.run("delete", "nodes", "-l", selector, "--wait=false")
        self.kubectl.run(
            "delete",
            "configmap",
            config_map_name(self.provider),
            "-n",
            self.namespace,
            "--ignore-not-found",
        )


@dataclass
class WatchedSimulatedHarness(SimulatedHarness):
    """The Simulated driver reading its Nodes from `WatchedNodes`, as the operator runs it
    on its own cluster: fed before every call from the API server, as the operator's node
    index would be once the watch delivered."""

    def new_driver(self) -> NodePoolDriver:
        watched = WatchedNodes()
        return _Fed(self._driver(watched), watched, self.kubectl, self.node_selector)


@dataclass
class _Fed:
    inner: NodePoolDriver
    watched: WatchedNodes
    kubectl: Kubectl
    selector: dict[str, str]

    async def _feed(self) -> None:
        labels = ",".join(f"{k}={v}" for k, v in self.selector.items())
        listed = await asyncio.to_thread(self.kubectl.json, "get", "nodes", "-l", labels)
        self.watched.update(node_entry(n["metadata"]["name"], n) for n in listed["items"])

    async def get_pool(self, ref: NodePoolRef) -> NodePoolState:
        await self._feed()
        return await self.inner.get_pool(ref)

    async def set_target_size(self, ref: NodePoolRef, size: int, *, action_id: str) -> None:
        await self._feed()
        await self.inner.set_target_size(ref, size, action_id=action_id)

    async def delete_nodes(self, ref: NodePoolRef, names: Sequence[str], *, action_id: str) -> None:
        await self._feed()
        await self.inner.delete_nodes(ref, names, action_id=action_id)
