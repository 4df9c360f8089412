"""Each pool's measured draw per busy GPU, from per-pod power series (`--power-query`).

The query is the platform admin's (default: each pod's peak of DCGM_FI_DEV_POWER_USAGE over
the last hour); its series name a pod by `namespace` and `pod` labels, as the DCGM exporter
does when it maps GPUs to pods. A series counts for a pool only through the pods the
operator indexes: a pod of the pool's workload (its selector), bound to a node of a node
pool, gives that node pool's GPU type. A pool's figure per GPU type is the highest of its
pods': one replica that ran hot says what the others can draw. Series of pods that are gone,
of other namespaces, or without those labels count for no pool.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from gpufleet.planner.types import NodePoolKey, PoolKey
from gpufleet.reconcilers.cache import PodEntry, WorkloadEntry
from gpufleet.reconcilers.pod_index import selected

# The labels the DCGM exporter's Kubernetes mapping sets on a GPU's series.
NAMESPACE_LABEL = "namespace"
POD_LABEL = "pod"

Labelled = tuple[Mapping[str, str], float]


def peak_by_pod(series: Iterable[Labelled]) -> dict[tuple[str, str], float]:
    """The highest finite value per (namespace, pod); series without both labels dropped."""
    peaks: dict[tuple[str, str], float] = {}
    for labels, value in series:
        namespace, pod = labels.get(NAMESPACE_LABEL), labels.get(POD_LABEL)
        if not namespace or not pod or not math.isfinite(value) or value < 0:
            continue
        key = (namespace, pod)
        peaks[key] = max(value, peaks.get(key, value))
    return peaks


def attribute_draw(
    series: Iterable[Labelled],
    workloads: Mapping[PoolKey, WorkloadEntry],
    pods: Mapping[str, Sequence[PodEntry]],
    node_pool_of: Mapping[str, NodePoolKey],
    gpu_type_of: Mapping[NodePoolKey, str],
) -> dict[PoolKey, dict[str, float]]:
    """Per pool, the peak watts of one of its GPUs by GPU type; pools with no measured pod
    are absent (budgets then count them at the nameplate)."""
    peaks = peak_by_pod(series)
    if not peaks:
        return {}
    out: dict[PoolKey, dict[str, float]] = {}
    for key, workload in workloads.items():
        for pod in selected(pods, key.namespace, workload.selector):
            watts = peaks.get((pod.namespace, pod.name))
            # A terminating pod's peak still shows what the pool draws: it counts.
            if watts is None or pod.node_name is None:
                continue
            node_pool = node_pool_of.get(pod.node_name)
            gpu_type = gpu_type_of.get(node_pool) if node_pool is not None else None
            if gpu_type is None:
                continue
            figures = out.setdefault(key, {})
            figures[gpu_type] = max(watts, figures.get(gpu_type, watts))
    return out
