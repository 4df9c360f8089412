"""Plays the inference servers in a closed loop: demand arrives, Running replicas serve it.

Every step, each pool's queue grows by its arrivals and shrinks by what its Running pods
serve; the exporter publishes the queue, and per-GPU power for every GPU node (idle, or
loaded where a replica runs), so the operator sees what it would see from real servers
and the DCGM exporter. A pool behind a GIE InferencePool also gets its endpoint picker's
pair: the queue averaged over the Running replicas, and how many they are. Demand follows a
surge profile: baseline, ramp, hold, fall.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpufleet_testbed.exporter_client import ExporterClient
from gpufleet_testbed.kubectl import Kubectl

GPU = "nvidia.com/gpu"


@dataclass(frozen=True)
class Surge:
    """Arrivals per second: `base`, then x`factor` over a ramp, a hold, and back down."""

    base: float
    factor: float = 1.0
    start: float = 0.0
    ramp: float = 0.0
    hold: float = 0.0
    fall: float = 0.0

    def rate(self, t: float) -> float:
        peak = self.base * self.factor
        if t < self.start:
            return self.base
        t -= self.start
        if t < self.ramp:
            return self.base + (peak - self.base) * t / self.ramp
        t -= self.ramp
        if t < self.hold:
            return peak
        t -= self.hold
        if t < self.fall:
            return peak - (peak - self.base) * t / self.fall
        return self.base

    @property
    def ends(self) -> float:
        return self.start + self.ramp + self.hold + self.fall


@dataclass(frozen=True)
class PoolPlay:
    namespace: str
    pool: str
    app_label: str  # pods of the pool carry app=<app_label>
    demand: Surge
    per_replica: float  # requests/s one Running replica serves
    inference_pool: str | None = None  # the GIE InferencePool in front, if any


@dataclass(frozen=True)
class NodePower:
    idle_watts: float = 90.0
    busy_watts: float = 650.0


def _gpu_pods(pods: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[str, str, int]]]:
    """Running pods holding GPUs, per node: (namespace, name, GPUs)."""
    out: dict[str, list[tuple[str, str, int]]] = {}
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
            continue
        spec = pod.get("spec") or {}
        used = sum(
            int(((c.get("resources") or {}).get("limits") or {}).get(GPU, 0))
            for c in spec.get("containers") or ()
        )
        if spec.get("nodeName") and used:
            meta = pod["metadata"]
            out.setdefault(spec["nodeName"], []).append((meta["namespace"], meta["name"], used))
    return out


def _running(pods: Sequence[Mapping[str, Any]], app: str) -> tuple[int, dict[str, int]]:
    """Running replicas of `app`, and GPUs in use per node (all apps)."""
    count = 0
    gpus: dict[str, int] = {}
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
            continue
        spec = pod.get("spec") or {}
        node = spec.get("nodeName")
        used = 0
        for container in spec.get("containers") or ():
            limits = (container.get("resources") or {}).get("limits") or {}
            used += int(limits.get(GPU, 0))
        if node and used:
            gpus[node] = gpus.get(node, 0) + used
        if (pod["metadata"].get("labels") or {}).get("app") == app:
            count += 1
    return count, gpus


class Player:
    """Steps the queues and power; `step(t, dt)` is called by the demo or a test."""

    def __init__(
        self,
        kubectl: Kubectl,
        exporter: ExporterClient,
        pools: Sequence[PoolPlay],
        power: NodePower = NodePower(),
    ) -> None:
        self.kubectl = kubectl
        self.exporter = exporter
        self.pools = list(pools)
        self.power = power
        self.queues = {(p.namespace, p.pool): 0.0 for p in self.pools}
        self.replicas = {(p.namespace, p.pool): 0 for p in self.pools}
        self.served = dict.fromkeys(self.queues, 0.0)
        self.arrived = dict.fromkeys(self.queues, 0.0)
        self.averages: dict[tuple[str, str], float] = {}

    def step(self, t: float, dt: float) -> None:
        pods = self.kubectl.json("get", "pods", "-A").get("items", [])
        for play in self.pools:
            key = (play.namespace, play.pool)
            replicas, _ = _running(
                [p for p in pods if p["metadata"]["namespace"] == play.namespace], play.app_label
            )
            arrivals = play.demand.rate(t) * dt
            capacity = replicas * play.per_replica * dt
            backlog = self.queues[key] + arrivals
            served = min(backlog, capacity)
            self.queues[key] = backlog - served
            self.replicas[key] = replicas
            self.arrived[key] += arrivals
            self.served[key] += served
            self.exporter.set_queue(play.namespace, play.pool, round(self.queues[key], 3))
            if play.inference_pool is not None:
                self._endpoint_picker(play, self.queues[key], replicas)
        self._power(_gpu_pods(pods))

    def _endpoint_picker(self, play: PoolPlay, queue: float, replicas: int) -> None:
        """As GIE's EPP reports the InferencePool: with no server up it reports 0 ready and
        keeps its last average (the product, the queue it sees, is 0)."""
        assert play.inference_pool is not None
        last = self.averages.get((play.namespace, play.inference_pool), 0.0)
        average = queue / replicas if replicas else last
        self.averages[(play.namespace, play.inference_pool)] = average
        self.exporter.set_endpoint_picker(
            play.namespace, play.inference_pool, round(average, 3), replicas
        )

    def _power(self, pods_by_node: Mapping[str, Sequence[tuple[str, str, int]]]) -> None:
        nodes = self.kubectl.json("get", "nodes", "-l", "gpufleet.io/node-pool").get("items", [])
        for node in nodes:
            name = node["metadata"]["name"]
            total = int((node.get("status") or {}).get("capacity", {}).get(GPU, 0) or 0)
            if total <= 0:
                continue
            # One series per GPU, as the DCGM exporter publishes: all idle, then the busy
            # ones, labelled with the pod that holds them (its Kubernetes mapping).
            self.exporter.set_power(name, self.power.idle_watts, gpus=total)
            index = 0
            for namespace, pod, used in pods_by_node.get(name, ()):
                for _ in range(used):
                    if index >= total:
                        break
                    self.exporter.set_power(
                        name, self.power.busy_watts, gpu=index, gpus=total, pod=(namespace, pod)
                    )
                    index += 1
