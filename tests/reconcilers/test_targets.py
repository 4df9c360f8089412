"""Which pools the loop may scale: a workload two pools name is scaled by the older."""

from __future__ import annotations

from gpufleet.api import parse_pool
from gpufleet.planner.types import NodePoolKey, PoolKey
from gpufleet.reconcilers.cache import NodeEntry, PodEntry, PoolEntry, View, workload_entry
from gpufleet.reconcilers.loop import PODS_NOT_WATCHED, node_pools_under, scale_targets
from gpufleet.reconcilers.targets import TARGET_CONFLICT
from gpufleet_testbed import fleets


def _view(*pools: tuple[str, str]) -> View:
    entries = []
    for second, (name, target) in enumerate(pools):
        spec = fleets.serving_pool(
            "ns",
            name,
            target=target,
            gpu_types=["H100"],
            max_replicas=8,
            behavior=fleets.behavior(),
        )["spec"]
        created = f"2026-12-06T10:00:{second:02d}Z"  # listed oldest first
        entries.append(PoolEntry("ns", name, 1, parse_pool(spec), {}, created, f"uid-{name}"))
    workloads = {
        ("ns", "Deployment", name): workload_entry(
            "Deployment", "ns", name, fleets.deployment("ns", name)
        )
        for name in ("chat", "image")
    }
    return View(entries, [], [], [], {}, workloads)


def test_of_two_pools_on_one_deployment_the_older_scales_it_and_the_other_says_so() -> None:
    pools, targets, errors = scale_targets(_view(("a", "chat"), ("b", "chat"), ("c", "image")))

    assert set(pools) == set(targets) == {PoolKey("ns", "a"), PoolKey("ns", "c")}
    assert {k.name: e.reason for k, e in errors.items()} == {"b": TARGET_CONFLICT}
    assert "ServingPool a" in errors[PoolKey("ns", "b")].message


def test_a_missing_target_is_not_found() -> None:
    _, _, errors = scale_targets(_view(("a", "nothing")))

    assert errors[PoolKey("ns", "a")].reason == "TargetNotFound"


def test_only_the_node_pools_under_a_left_out_workload_are_held() -> None:
    view = _view(("a", "chat"), ("c", "image"))
    pods = {
        "ns": [
            PodEntry("ns", "chat-1", {"app": "chat"}, "de-1", False),
            PodEntry("ns", "image-1", {"app": "image"}, "nl-1", False),
        ]
    }
    nodes = [NodeEntry("de-1", "de", "h100", True), NodeEntry("nl-1", "nl", "h100", True)]

    held = node_pools_under([view.workloads["ns", "Deployment", "chat"]], pods, nodes)

    assert held == {NodePoolKey("de", "h100")}


def test_with_pods_watched_by_label_a_pool_whose_template_lacks_it_is_left_out() -> None:
    view = _view(("a", "chat"))

    pools, _, errors = scale_targets(view, "app=image")
    assert not pools
    assert errors[PoolKey("ns", "a")].reason == PODS_NOT_WATCHED
    assert "app=image" in errors[PoolKey("ns", "a")].message

    pools, _, errors = scale_targets(view, "app in (chat,image)")
    assert set(pools) == {PoolKey("ns", "a")} and not errors
