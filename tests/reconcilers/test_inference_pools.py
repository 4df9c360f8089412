"""A pool behind a GIE InferencePool: its workload is scaled only while the two agree, its
serving pods are the workload's pods the InferencePool selects, and its burst copies keep
the labels that selector needs."""

from __future__ import annotations

from typing import Any

from gpufleet.api import parse_pool
from gpufleet.api.provider import ClusterAccess
from gpufleet.planner.types import NodePoolKey, PoolKey
from gpufleet.reconcilers.burst.copies import copy_manifest
from gpufleet.reconcilers.cache import (
    InferencePoolEntry,
    NodeEntry,
    PodEntry,
    PoolEntry,
    View,
    inference_pool_entry,
    workload_entry,
)
from gpufleet.reconcilers.inference_pools import (
    INFERENCE_POOL_NOT_FOUND,
    SELECTOR_MISMATCH,
    unserved,
)
from gpufleet.reconcilers.loop import node_pools_under, scale_targets
from gpufleet.reconcilers.observe import replicas_by_node_pool
from gpufleet.reconcilers.pod_index import selected
from gpufleet.reconcilers.selectors import from_label_selector
from gpufleet_testbed import fleets

NS = "ns"
KEY = PoolKey(NS, "llm")
NODES = [NodeEntry("de-1", "de", "h100", True), NodeEntry("de-2", "de", "h200", True)]


def _gie(name: str = "llm-gie", **labels: str) -> dict[str, Any]:
    """An InferencePool as the API server serves it (inference.networking.k8s.io/v1)."""
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "selector": {"matchLabels": labels or {"app": "llm"}},
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {"name": f"{name}-epp", "port": {"number": 9002}},
        },
    }


def _deployment(name: str = "llm", **template_labels: str) -> dict[str, Any]:
    body = fleets.deployment(NS, name)
    if template_labels:
        body["spec"]["template"]["metadata"]["labels"] = template_labels
    return body


def _view(
    *,
    inference_pools: tuple[dict[str, Any], ...] = (),
    deployments: tuple[dict[str, Any], ...] = (),
    pods: tuple[PodEntry, ...] = (),
    ref: str = "llm-gie",
) -> View:
    spec = fleets.serving_pool(
        NS, "llm", gpu_types=["H100"], max_replicas=8, behavior=fleets.behavior()
    )["spec"]
    spec["inferencePoolRef"] = {"name": ref}
    del spec["queue"]["query"]
    entry = PoolEntry(NS, "llm", 1, parse_pool(spec), {}, "2026-12-06T10:00:00Z", "uid-llm")
    workloads = {
        (NS, "Deployment", d["metadata"]["name"]): workload_entry(
            "Deployment", NS, d["metadata"]["name"], d
        )
        for d in deployments or (_deployment(),)
    }
    gies = {
        (NS, g["metadata"]["name"]): inference_pool_entry(NS, g["metadata"]["name"], g)
        for g in inference_pools
    }
    return View([entry], [], [], NODES, {NS: list(pods)}, workloads, inference_pools=gies)


def _pod(name: str, node: str | None = "de-1", ready: bool = True, **labels: str) -> PodEntry:
    return PodEntry(NS, name, labels, node, False, ready)


def test_an_inference_pool_entry_keeps_its_match_labels() -> None:
    entry = inference_pool_entry(NS, "llm-gie", _gie(app="llm", model="llama"))

    assert entry == InferencePoolEntry(NS, "llm-gie", (("app", "llm"), ("model", "llama")))
    assert entry.selector.matches({"app": "llm", "model": "llama", "pod-template-hash": "x"})
    assert not entry.selector.matches({"app": "llm"})


def test_a_pool_naming_a_missing_inference_pool_is_not_planned_and_says_which() -> None:
    pools, targets, errors = scale_targets(_view(ref="no-such-pool"))

    assert pools == {} and targets == {}
    assert errors[KEY].reason == INFERENCE_POOL_NOT_FOUND
    assert errors[KEY].message.startswith("spec.inferencePoolRef: InferencePool ns/no-such-pool")


def test_a_template_without_the_selectors_labels_is_a_mismatch() -> None:
    view = _view(
        inference_pools=(_gie(app="llm", model="llama"),),
        deployments=(_deployment(app="llm"),),
    )

    pools, _, errors = scale_targets(view)

    assert pools == {}
    assert errors[KEY].reason == SELECTOR_MISMATCH
    assert "lacks model=llama" in errors[KEY].message


def test_a_selector_that_also_matches_another_workloads_pods_is_a_mismatch() -> None:
    view = _view(
        inference_pools=(_gie(model="llama"),),
        deployments=(_deployment(app="llm", model="llama"), _deployment("canary")),
        pods=(
            _pod("llm-1", app="llm", model="llama"),
            _pod("canary-1", app="canary", model="llama"),
        ),
    )

    pools, _, errors = scale_targets(view)

    assert pools == {}
    assert errors[KEY].reason == SELECTOR_MISMATCH
    assert "1 GPU pods outside Deployment llm (canary-1)" in errors[KEY].message


def test_an_agreeing_pool_counts_only_the_pods_its_inference_pool_selects() -> None:
    view = _view(
        inference_pools=(_gie(app="llm", model="llama"),),
        deployments=(_deployment(app="llm", model="llama"),),
        pods=(
            _pod("llm-new", app="llm", model="llama"),
            _pod("llm-new-2", node="de-2", ready=False, app="llm", model="llama"),
            _pod("llm-old", app="llm"),  # an older revision: the gateway skips it
        ),
    )

    pools, targets, errors = scale_targets(view)

    assert errors == {} and set(pools) == {KEY}
    node_pool_of = {n.name: NodePoolKey(n.provider, n.node_pool) for n in NODES}
    target = targets[KEY]
    placed, ready = replicas_by_node_pool(
        target, node_pool_of, {}, selected_pods=selected(view.pods, NS, target.selector)
    )
    assert placed == {NodePoolKey("de", "h100"): 1, NodePoolKey("de", "h200"): 1}
    assert ready == 1
    workload = view.workloads[NS, "Deployment", "llm"]
    pods = selected(view.pods, NS, workload.selector)
    assert replicas_by_node_pool(workload, node_pool_of, {}, selected_pods=pods)[1] == 2


def test_the_node_pools_under_a_mismatched_pools_pods_are_held() -> None:
    view = _view(
        inference_pools=(_gie(model="llama"),),
        deployments=(_deployment(app="llm"),),
        pods=(_pod("llm-1", node="de-2", app="llm"),),
    )
    _, _, errors = scale_targets(view)

    held = node_pools_under(unserved(view, errors), view.pods, view.nodes)

    assert held == {NodePoolKey("de", "h200")}


def test_a_burst_copy_keeps_the_labels_the_inference_pools_selector_needs() -> None:
    view = _view(
        inference_pools=(_gie(app="llm", model="llama"),),
        deployments=(_deployment(app="llm", model="llama"),),
    )
    _, targets, _ = scale_targets(view)
    gie = view.inference_pools[NS, "llm-gie"]

    copy = copy_manifest(KEY, targets[KEY], 2, "gpu-nl", ClusterAccess(), "install-1")

    pod_labels = copy["spec"]["template"]["metadata"]["labels"]
    assert gie.selector.matches(pod_labels)
    assert from_label_selector(copy["spec"]["selector"]).matches(pod_labels)
    # gpufleet's own labels go on the copy, not on its pods: the selector is the tenant's.
    assert pod_labels == {"app": "llm", "model": "llama"}
