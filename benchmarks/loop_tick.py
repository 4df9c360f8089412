"""The fleet loop's own cost per quiet tick (issue 20), in one process, without a control plane:
`benchmarks/fleet_scale.py`'s fleet (the same providers, pools and Deployments), settled, as
the watches would hold it, ticked by the real FleetLoop.

What is real: the indexes' entries (built by the same functions kopf's index handlers call),
the View a tick reads (`handlers._Views`, so the pod index is carried over as in the
operator), observation, the planner, actuation's diffing, the reporter (statuses compared,
gauges set) and the heap freezing of `gpufleet run`. What is not: the API server (status
patches are kept in memory and fed back to the index, as a watch event would), Prometheus
(every queue reads its replicas), the node pools' driver (a size in memory), kopf and HTTP.
So it measures the loop's part of fleet_scale's quiet tick, in seconds, not minutes.

Each pool's replicas run on its provider's nodes, filled in order (pool i on provider
i mod --providers), all Ready. With `--spread K` they go round K providers from there, as a
fleet the operator grew itself spreads them (2 to 7 of 20 at 1,000 nodes). The loop ticks until a tick writes nothing (settled), then
`--ticks` quiet ticks are timed (process CPU seconds, each tick). Writes in the quiet ticks
must be 0. Ends with one JSON line of the figures.

    python benchmarks/loop_tick.py                  # 2,000 nodes, 1,000 pools, 20 providers
    python benchmarks/loop_tick.py --quick          # 16 nodes, 16 pools, 2 providers
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fleet_scale

from gpufleet.api import parse_pool, parse_provider
from gpufleet.drivers import simulated_state as sim
from gpufleet.drivers.base import NodePoolRef, NodePoolState
from gpufleet.metrics.batch import Sample
from gpufleet.metrics.exporter import OperatorMetrics
from gpufleet.reconcilers.cache import (
    NodeEntry,
    PoolEntry,
    ProviderEntry,
    pod_entry,
    workload_entry,
)
from gpufleet.reconcilers.handlers import INDEXES, _Views
from gpufleet.reconcilers.heap import HeapFreezer
from gpufleet.reconcilers.loop import FleetLoop

NODE_POOL = "h100"
SETTLE_TICKS = 10


class Kube:
    """The API server's side of a tick: what is written, kept as a watch would return it."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, ...]] = []
        self.statuses: dict[tuple[str, str, str], dict[str, Any]] = {}

    async def patch_status(
        self, plural: str, namespace: str | None, name: str, previous: Any, status: Any
    ) -> None:
        self.writes.append(("status", plural, name))
        self.statuses[plural, namespace or "", name] = dict(status)

    async def event(self, *args: Any, **kwargs: Any) -> None:
        self.writes.append(("event",))

    async def scale(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        self.writes.append(("scale", name, str(replicas)))

    async def evict(self, namespace: str, name: str, grace_seconds: int) -> bool:
        self.writes.append(("evict", name))
        return True

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return []

    async def list_node_names(self, label_selector: str) -> list[str]:
        return []


class Driver:
    """A node pool of a fixed size, all of it Ready."""

    def __init__(self, nodes: Sequence[str]) -> None:
        self.nodes = tuple(nodes)

    async def get_pool(self, ref: NodePoolRef) -> NodePoolState:
        return NodePoolState(len(self.nodes), self.nodes, self.nodes)

    async def set_target_size(self, ref: NodePoolRef, size: int, *, action_id: str) -> None:
        raise AssertionError(f"a settled fleet resized {ref.provider}/{ref.node_pool} to {size}")

    async def delete_nodes(self, ref: NodePoolRef, names: Sequence[str], *, action_id: str) -> None:
        raise AssertionError(f"a settled fleet deleted nodes of {ref.provider}")


class Queues:
    """Every pool's queue at its replicas (targetPerReplica 1): nothing moves."""

    def __init__(self, depth: float) -> None:
        self.depth = depth

    async def sample_many(self, queries: Sequence[str]) -> dict[str, Sample]:
        now = time.time()
        return {q: Sample(self.depth, now) for q in queries}


def _indexes(
    shape: fleet_scale.Shape, spread: int = 1
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The indexes as kopf's handlers would fill them for a settled fleet, and each
    provider's nodes. Pool i's replicas go round the `spread` providers from i (mod the
    providers), each provider's nodes filled in order."""
    setup, objects, _ = fleet_scale._fleet(shape)
    index: dict[str, dict[Any, list[Any]]] = {name: {} for name in INDEXES}
    providers = [o for o in setup if o["kind"] == "CloudProvider"]
    for body in providers:
        name = body["metadata"]["name"]
        parsed = parse_provider(body["spec"], name)
        index["gpufleet_providers"][name] = [ProviderEntry(name, 1, parsed, uid=name)]
    nodes: dict[str, list[str]] = {p["metadata"]["name"]: [] for p in providers}
    used = dict.fromkeys(nodes, 0)  # GPUs taken on each provider, filled in order
    replicas = shape.replicas_per_pool
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    for i, body in enumerate(deployments):
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        body["spec"]["replicas"] = replicas
        entry = workload_entry("Deployment", ns, name, body)
        index["gpufleet_deployments"][ns, "Deployment", name] = [entry]
        labels = dict(body["spec"]["template"]["metadata"]["labels"])
        for r in range(replicas):
            provider = providers[(i + r % spread) % len(providers)]["metadata"]["name"]
            node = sim.node_name(provider, NODE_POOL, used[provider] // fleet_scale.GPUS_PER_NODE)
            if not nodes[provider] or nodes[provider][-1] != node:
                nodes[provider].append(node)
            used[provider] += 1
            pod = {
                "metadata": {
                    "labels": labels,
                    "ownerReferences": [
                        {"controller": True, "kind": "ReplicaSet", "name": f"{name}-5d8f9"}
                    ],
                },
                "spec": {
                    "nodeName": node,
                    "containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}],
                },
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
            }
            entry_ = pod_entry(ns, f"{name}-5d8f9-{r:05d}", pod)
            index["gpufleet_pods"].setdefault(ns, []).append(entry_)
    for provider, names in nodes.items():
        for node in names:
            index["gpufleet_nodes"][node] = [NodeEntry(node, provider, NODE_POOL, True)]
    for body in (o for o in objects if o["kind"] == "ServingPool"):
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        parsed = parse_pool(body["spec"], name, ns)
        created = "2026-01-01T00:00:00Z"
        index["gpufleet_pools"][ns, name] = [PoolEntry(ns, name, 1, parsed, {}, created, name)]
    return index, nodes


def _feed_back(index: dict[str, Any], kube: Kube) -> None:
    """Statuses written come back as the watch would bring them: a new entry each."""
    for (plural, ns, name), status in kube.statuses.items():
        if plural == "servingpools":
            old = index["gpufleet_pools"][ns, name][0]
            if old.status != status:
                new = PoolEntry(ns, name, old.generation, old.parsed, status, old.created, old.uid)
                index["gpufleet_pools"][ns, name] = [new]
        elif plural == "cloudproviders":
            old = index["gpufleet_providers"][name][0]
            if old.status != status:
                new = ProviderEntry(name, old.generation, old.parsed, status, uid=old.uid)
                index["gpufleet_providers"][name] = [new]


def _nearest(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def _run(shape: fleet_scale.Shape, ticks: int, spread: int = 1) -> dict[str, Any]:
    index, nodes = _indexes(shape, spread)
    kube = Kube()
    drivers = {provider: Driver(names) for provider, names in nodes.items()}
    loop = FleetLoop(
        kube,  # type: ignore[arg-type]
        Queues(float(shape.replicas_per_pool)),
        lambda name, spec: drivers[name],
        OperatorMetrics(),
        pod_label_selector=fleet_scale.OPERATOR_ARGS[0].partition("=")[2],
    )
    views, heap = _Views(index), HeapFreezer()
    try:
        return await _tick(loop, views, heap, index, kube, nodes, shape, ticks, spread)
    finally:
        heap.release()  # the process may go on (the test suite runs this in its own)


async def _tick(
    loop: FleetLoop,
    views: _Views,
    heap: HeapFreezer,
    index: Any,
    kube: Kube,
    nodes: dict[str, list[str]],
    shape: fleet_scale.Shape,
    ticks: int,
    spread: int,
) -> dict[str, Any]:
    settle = 0
    first_cpu = 0.0
    while settle < SETTLE_TICKS:
        kube.writes.clear()
        started = time.process_time()
        await loop.tick(views())
        if settle == 0:
            first_cpu = time.process_time() - started
        heap.after_tick()
        _feed_back(index, kube)
        settle += 1
        if not kube.writes:
            break
    planned = len(loop.last_plan.pools) if loop.last_plan else 0
    kube.writes.clear()
    cpu: list[float] = []
    for _ in range(ticks):
        started = time.process_time()
        await loop.tick(views())
        heap.after_tick()
        cpu.append(time.process_time() - started)
        _feed_back(index, kube)
    return {
        "benchmark": "loop_tick",
        "nodes": sum(len(n) for n in nodes.values()),
        "pods": sum(len(p) for p in index["gpufleet_pods"].values()),
        "pools": shape.pools,
        "providers": shape.providers,
        "providers_per_pool": spread,
        "pools_planned": planned,
        "first_tick_cpu_s": round(first_cpu, 3),
        "settle_ticks": settle,
        "quiet_ticks": ticks,
        "cpu_s_per_tick_p50": round(_nearest(cpu, 0.5), 4),
        "cpu_s_per_tick_p95": round(_nearest(cpu, 0.95), 4),
        "cpu_s_per_tick_max": round(max(cpu), 4),
        "quiet_writes": len(kube.writes),
        "rss_max_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--pools", type=int, default=1000)
    parser.add_argument("--providers", type=int, default=20)
    parser.add_argument("--ticks", type=int, default=30, help="quiet ticks timed")
    parser.add_argument(
        "--spread",
        type=int,
        default=1,
        help="providers each pool's replicas go round (the live fleet, grown by the "
        "operator's own plans, had pools on 2 to 7 of 20)",
    )
    parser.add_argument("--quick", action="store_true", help="16 nodes, 16 pools, 2 providers")
    args = parser.parse_args(argv)
    if args.quick:
        shape, ticks = fleet_scale.Shape(16, 16, 2), 5
    else:
        shape, ticks = fleet_scale.Shape(args.nodes, args.pools, args.providers), args.ticks
    figures = asyncio.run(_run(shape, ticks, max(1, min(args.spread, shape.providers))))
    print(json.dumps(figures), flush=True)
    return figures


if __name__ == "__main__":
    main()
