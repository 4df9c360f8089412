"""A ServingPool behind a Gateway API Inference Extension InferencePool (spec.inferencePoolRef).

An InferencePool has no scale subresource, so the workload (scaleTargetRef) is still what is
scaled; the InferencePool says which pods serve. The pool is planned only when the two agree:
- the InferencePool exists (`InferencePoolNotFound`: GIE is not installed, or a typo);
- the workload's pod template carries every label of its selector, so the replicas gpufleet
  adds are ones the gateway routes to;
- the selector matches no GPU pod outside the workload: the endpoint picker's queue is the
  whole InferencePool's, and another workload's replicas would serve part of it unseen (two
  ServingPools on one InferencePool, each with its own workload, both hit this).
Either of the last two is `InferencePoolSelectorMismatch`. As with a missing workload, the
pool is left out of the plan: it keeps its replicas, and the nodes under them.

When they agree, the pool's pods are the workload's pods the InferencePool selects: its
ready replicas and placement count only those (a pod of an older revision without the
labels gets no request through the gateway).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from gpufleet.api.pool import INFERENCE_POOL_GROUP, INFERENCE_POOL_VERSION, ServingPoolSpec
from gpufleet.planner.types import PoolKey
from gpufleet.reconcilers.cache import InferencePoolEntry, PodEntry, View, WorkloadEntry
from gpufleet.reconcilers.pod_index import selected
from gpufleet.reconcilers.problems import Problem
from gpufleet.reconcilers.selectors import Selector

INFERENCE_POOL_NOT_FOUND = "InferencePoolNotFound"
SELECTOR_MISMATCH = "InferencePoolSelectorMismatch"
FIELD = "spec.inferencePoolRef"
_SHOWN = 3


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f"{k}={v}" for k, v in pairs)


def _named(items: Sequence[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def mismatch(
    workload: WorkloadEntry, inference_pool: InferencePoolEntry, pods: Iterable[PodEntry]
) -> Problem | None:
    """Why the workload's pods and the InferencePool's selector disagree; None if they
    do not. `pods`: the namespace's GPU pods (those the InferencePool selects suffice)."""
    name = f"InferencePool {inference_pool.namespace}/{inference_pool.name}"
    target = f"{workload.kind} {workload.name}"
    if not inference_pool.match_labels:
        return Problem(SELECTOR_MISMATCH, f"{FIELD}: {name} has no selector.matchLabels")
    carried = dict(workload.template_labels)
    missing = [(k, v) for k, v in inference_pool.match_labels if carried.get(k) != v]
    if missing:
        return Problem(
            SELECTOR_MISMATCH,
            f"{FIELD}: {name} selects {_labels(inference_pool.match_labels)}, but the pod "
            f"template of {target} lacks {_labels(missing)}: the gateway would not route to "
            "the replicas gpufleet adds. Label the template or change the selector",
        )
    selector = inference_pool.selector
    outside = sorted(
        pod.name
        for pod in pods
        if not pod.terminating
        and not pod.finished
        and selector.matches(pod.labels)
        and not workload.selector.matches(pod.labels)
    )
    if outside:
        return Problem(
            SELECTOR_MISMATCH,
            f"{FIELD}: {name} also selects {len(outside)} GPU pods outside {target} "
            f"({_named(outside)}): its queue counts what they serve, so this pool cannot be "
            "sized from it. Narrow the selector, or relabel those pods",
        )
    return None


def serving(
    namespace: str,
    spec: ServingPoolSpec,
    workload: WorkloadEntry,
    inference_pools: Mapping[tuple[str, str], InferencePoolEntry],
    pods: Mapping[str, Sequence[PodEntry]],
) -> WorkloadEntry | Problem:
    """The workload as the plan counts its pods: unchanged without an inferencePoolRef;
    behind one, only the pods its InferencePool selects. Or why the pool cannot be planned."""
    ref = spec.inference_pool_ref
    if ref is None:
        return workload
    found = inference_pools.get((namespace, ref.name))
    if found is None:
        return Problem(
            INFERENCE_POOL_NOT_FOUND,
            f"{FIELD}: InferencePool {namespace}/{ref.name} not found "
            f"({INFERENCE_POOL_GROUP}/{INFERENCE_POOL_VERSION}: is the Gateway API Inference "
            "Extension installed?)",
        )
    problem = mismatch(workload, found, selected(pods, namespace, found.selector))
    if problem is not None:
        return problem
    narrowed = Selector(workload.selector.requirements + found.selector.requirements)
    return dataclasses.replace(workload, selector=narrowed)


def unserved(view: View, errors: Mapping[PoolKey, Problem]) -> list[WorkloadEntry]:
    """The workloads of the pools left out for their InferencePool: their pods still run,
    and no plan counts them, so the node pools under them must not shrink."""
    found: list[WorkloadEntry] = []
    for entry in view.pools:
        problem = errors.get(PoolKey(entry.namespace, entry.name))
        spec = entry.parsed.value
        if spec is None or problem is None:
            continue
        if problem.reason in (INFERENCE_POOL_NOT_FOUND, SELECTOR_MISMATCH):
            ref = spec.scale_target_ref
            workload = view.workloads.get((entry.namespace, ref.kind, ref.name))
            if workload is not None:
                found.append(workload)
    return found
