"""Which pools the loop may scale: a workload two pools name is scaled by neither."""

from __future__ import annotations

from gpufleet.api import parse_pool
from gpufleet.planner.types import NodePoolKey, PoolKey
from gpufleet.reconcilers.cache import NodeEntry, PodEntry, PoolEntry, View, workload_entry
from gpufleet.reconcilers.loop import (
    TARGET_SHARED,
    node_pools_under,
    scale_targets,
    shared_workloads,
)
from gpufleet_testbed import fleets


def _view(*pools: tuple[str, str]) -> View:
    entries = []
    for name, target in pools:
        spec = fleets.serving_pool(
            "ns",
            name,
            target=target,
            gpu_types=["H100"],
            max_replicas=8,
            behavior=fleets.behavior(),
        )["spec"]
        entries.append(PoolEntry("ns", name, 1, parse_pool(spec), {}))
    workloads = {
        ("ns", "Deployment", name): workload_entry(
            "Deployment", "ns", name, fleets.deployment("ns", name)
        )
        for name in ("chat", "image")
    }
    return View(entries, [], [], [], {}, workloads)


def test_two_pools_on_one_deployment_scale_it_neither_and_say_so() -> None:
    pools, targets, errors = scale_targets(_view(("a", "chat"), ("b", "chat"), ("c", "image")))

    assert set(pools) == set(targets) == {PoolKey("ns", "c")}
    assert {k.name: e.reason for k, e in errors.items()} == {"a": TARGET_SHARED, "b": TARGET_SHARED}
    assert "b" in errors[PoolKey("ns", "a")].message


def test_a_missing_target_is_not_found() -> None:
    _, _, errors = scale_targets(_view(("a", "nothing")))

    assert errors[PoolKey("ns", "a")].reason == "TargetNotFound"


def test_only_the_node_pools_under_a_shared_workload_are_held() -> None:
    view = _view(("a", "chat"), ("b", "chat"), ("c", "image"))
    _, _, errors = scale_targets(view)
    pods = {
        "ns": [
            PodEntry("ns", "chat-1", {"app": "chat"}, "de-1", False),
            PodEntry("ns", "image-1", {"app": "image"}, "nl-1", False),
        ]
    }
    nodes = [NodeEntry("de-1", "de", "h100", True), NodeEntry("nl-1", "nl", "h100", True)]

    held = node_pools_under(shared_workloads(view, errors), pods, nodes)

    assert held == {NodePoolKey("de", "h100")}
