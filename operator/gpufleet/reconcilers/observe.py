"""One consistent Snapshot for the planner from the indexes, Prometheus and the drivers.

Reads only: nothing here writes to the cluster. Every slow call (Prometheus, drivers) runs
concurrently and fails per pool or per provider, never for the whole fleet.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gpufleet.api.pool import ServingPoolSpec
from gpufleet.api.power import MeasurementType, PowerBudgetSpec
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.drivers.base import NodePoolDriver, NodePoolRef, NodePoolState
from gpufleet.metrics import endpoint_picker
from gpufleet.metrics.confine import confine
from gpufleet.metrics.problems import MetricsReason, MetricsUnavailable
from gpufleet.metrics.source import MetricsSource, SeriesSource
from gpufleet.planner.types import (
    CapacityError,
    NodePoolKey,
    NodePoolObservation,
    PoolKey,
    PoolObservation,
    Snapshot,
    frozen_map,
)
from gpufleet.reconcilers.cache import NodeEntry, PodEntry, WorkloadEntry
from gpufleet.reconcilers.pod_index import selected
from gpufleet.reconcilers.power_draw import Labelled, attribute_draw
from gpufleet.reconcilers.problems import Problem

log = logging.getLogger(__name__)
CONCURRENCY = 16
_NO_PROMETHEUS = Problem(MetricsReason.NOT_CONFIGURED.value, "the operator has no Prometheus URL")
QUEUE_FIELD = "spec.queue.query"
# Without a query: the endpoint picker's queue of the InferencePool (docs/gateway.md).
EPP_QUEUE_FIELD = "spec.inferencePoolRef (its endpoint picker's queue metrics)"
BUDGET_FIELD = "spec.measurement.prometheus.query"


@dataclass(frozen=True)
class Observed:
    """The snapshot and what went wrong while taking it, for conditions. A value: the loop
    derives new ones (burst copies' replicas, their providers' problems), never edits it."""

    snapshot: Snapshot
    queue: Mapping[PoolKey, float | None] = field(default_factory=dict)
    arrival: Mapping[PoolKey, float | None] = field(default_factory=dict)
    metrics_errors: Mapping[PoolKey, Problem] = field(default_factory=dict)
    budget_errors: Mapping[str, Problem] = field(default_factory=dict)
    driver_errors: Mapping[str, Problem] = field(default_factory=dict)
    node_states: Mapping[NodePoolKey, NodePoolState] = field(default_factory=dict)
    current_by_provider: Mapping[PoolKey, Mapping[str, int]] = field(default_factory=dict)
    power_error: Problem | None = None  # the per-pod power query's, if it failed


async def _sample_all(
    source: MetricsSource | None, queries: list[str]
) -> dict[str, tuple[float | None, Problem | None]]:
    if source is None:
        return dict.fromkeys(queries, (None, _NO_PROMETHEUS))
    try:
        samples = await source.sample_many(queries)
    except Exception as exc:  # a bug in the source must not stop the fleet: hold everything
        log.exception("reading Prometheus failed")
        return dict.fromkeys(queries, (None, Problem.of(exc)))
    return {
        q: (None, Problem.of(r)) if isinstance(r, MetricsUnavailable) else (r.value, None)
        for q, r in samples.items()
    }


async def _series(
    source: MetricsSource | None, query: str | None
) -> tuple[Sequence[Labelled], Problem | None]:
    """The per-pod power series; none (every pool at the nameplate) when they cannot be read."""
    if query is None or source is None:
        return [], None
    if not isinstance(source, SeriesSource):
        return [], Problem(MetricsReason.NOT_CONFIGURED.value, "the source reads no series")
    try:
        found = await source.series(query)
    except Exception as exc:  # a bug in the source: pools count at the nameplate
        log.exception("reading the power query failed")
        return [], Problem.of(exc)
    if isinstance(found, MetricsUnavailable):
        return [], Problem.of(found)
    return found, None


def ref_for(provider: str, spec: CloudProviderSpec, node_pool: str) -> NodePoolRef:
    for candidate in spec.node_pools:
        if candidate.name == node_pool:
            return NodePoolRef(provider, node_pool, candidate.external_name or candidate.name)
    raise KeyError(node_pool)


def replicas_by_node_pool(
    workload: WorkloadEntry,
    node_pool_of: Mapping[str, NodePoolKey],
    last_placement: Mapping[NodePoolKey, int],
    *,
    selected_pods: Sequence[PodEntry],
) -> tuple[dict[NodePoolKey, int], int]:
    """Where the workload's replicas are: bound pods by their node's pool; the rest (not yet
    scheduled or created) where the last plan put them, so a scale-up in flight counts. And
    how many of its pods serve now (bound and Ready), from the same pass. `selected_pods`:
    those its selector picks (pod_index.selected), which are not matched again here; named
    at each call so that none passes a namespace's pods unfiltered."""
    counts: dict[NodePoolKey, int] = {}
    bound = ready = 0
    for pod in selected_pods:
        if pod.terminating or pod.node_name is None:
            continue
        ready += pod.ready
        key = node_pool_of.get(pod.node_name)
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        bound += 1
    unbound = max(0, workload.replicas - bound)
    for key, planned in sorted(last_placement.items()):
        if unbound <= 0:
            break
        extra = min(unbound, max(0, planned - counts.get(key, 0)))
        if extra:
            counts[key] = counts.get(key, 0) + extra
            unbound -= extra
    # Unbound replicas beyond what the last plan placed are not in flight by our doing (the
    # tenant raised spec.replicas): counting them would let them hold GPUs that replicas
    # of other pools run on. The plan sets the workload's size again anyway.
    return counts, ready


@functools.lru_cache(maxsize=8192)
def _confined(query: str, namespace: str, label: str | None) -> str | Problem:
    """A pool's query as it is sent: confined to its namespace's series (`label`), or
    why it is not sent. Without a label it is sent as written (promql.check still applies)."""
    if label is None:
        return query
    try:
        return confine(query, label=label, namespace=namespace)
    except MetricsUnavailable as exc:
        return Problem.of(exc)
    except Exception as exc:  # a bug confining one query: that pool's query is not sent
        log.exception("confining a query failed", extra={"namespace": namespace})
        return Problem.of(exc)


# A pool's query: its text as sent, or why it is not sent (outside its namespace).
_Query = str | Problem


def queue_query(key: PoolKey, spec: ServingPoolSpec, series_label: str) -> tuple[str, str]:
    """The pool's queue PromQL and the field a condition names for it: its own query, else
    its InferencePool's endpoint picker's (metrics/endpoint_picker.py), whose series carry
    their namespace in `series_label`."""
    if spec.queue.query is not None:
        return spec.queue.query, QUEUE_FIELD
    ref = spec.inference_pool_ref
    assert ref is not None  # the model requires one of the two
    return endpoint_picker.queue_query(key.namespace, ref.name, series_label), EPP_QUEUE_FIELD


@dataclass(frozen=True)
class _Queries:
    """Every PromQL query of the tick, by what it measures. Pools' queries are the tenants':
    with a namespace label each is confined to its pool's namespace here, before batching,
    where the namespace is known. Budgets' are the platform admin's, sent as written."""

    queue: dict[PoolKey, _Query]
    arrival: dict[PoolKey, _Query]
    tier: dict[tuple[PoolKey, str], _Query]
    budget: dict[str, str]
    # The field each pool's queue query comes from, for its condition's message.
    queue_field: dict[PoolKey, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        pools: Mapping[PoolKey, ServingPoolSpec],
        budgets: Mapping[str, PowerBudgetSpec],
        namespace_label: str | None = None,
        series_label: str = "namespace",
    ) -> _Queries:
        keys = sorted(pools)

        def pool(key: PoolKey, query: str) -> _Query:
            return _confined(query, key.namespace, namespace_label)

        queues = {k: queue_query(k, pools[k], namespace_label or series_label) for k in keys}
        return cls(
            {k: pool(k, queues[k][0]) for k in keys},
            {k: pool(k, q) for k in keys if (q := pools[k].queue.arrival_rate_query)},
            {
                (k, t.name): pool(k, t.arrival_rate_query)
                for k in keys
                for t in pools[k].tiers
                if t.arrival_rate_query
            },
            {
                n: b.measurement.prometheus.query
                for n, b in sorted(budgets.items())
                if b.measurement.type == MeasurementType.PROMETHEUS and b.measurement.prometheus
            },
            {k: queues[k][1] for k in keys},
        )

    def all(self) -> list[str]:
        sent = [*self.queue.values(), *self.arrival.values(), *self.tier.values()]
        return [*self.budget.values(), *(q for q in sent if isinstance(q, str))]


async def observe(
    pools: Mapping[PoolKey, ServingPoolSpec],
    workloads: Mapping[PoolKey, WorkloadEntry],
    providers: Mapping[str, CloudProviderSpec],
    budgets: Mapping[str, PowerBudgetSpec],
    nodes: Iterable[NodeEntry],
    pods: Mapping[str, Sequence[PodEntry]],
    drivers: Mapping[str, NodePoolDriver],
    unreachable: Iterable[str],
    capacity_errors: Mapping[NodePoolKey, CapacityError],
    last_placements: Mapping[PoolKey, Mapping[NodePoolKey, int]],
    source: MetricsSource | None,
    power_query: str | None = None,
    namespace_label: str | None = None,
    series_label: str = "namespace",
) -> Observed:
    """Prometheus and the drivers, read concurrently, with the indexes' nodes and pods.
    `power_query`: the admin's per-pod power query (None: pools count at the nameplate).
    `namespace_label`: confine each pool's queries to its namespace's series (None: not).
    `series_label`: the label of a series' namespace, which the queries gpufleet writes
    (an InferencePool's queue) always select by; `namespace_label` where that is set."""
    gate = asyncio.Semaphore(CONCURRENCY)
    queries = _Queries.of(pools, budgets, namespace_label, series_label)
    down = set(unreachable)
    refs = [
        (name, ref_for(name, spec, np.name))
        for name, spec in sorted(providers.items())
        if name in drivers and name not in down
        for np in spec.node_pools
    ]
    sampled, states, power = await asyncio.gather(
        _sample_all(source, queries.all()),
        asyncio.gather(*(_state(drivers[name], ref, gate) for name, ref in refs)),
        _series(source, power_query),
    )
    metrics_errors, budget_errors = _errors(queries, sampled)
    node_obs, node_states, driver_errors = _node_pools(refs, states, nodes, capacity_errors, down)
    pool_obs, current = _pools(queries, sampled, workloads, nodes, pods, last_placements)
    series, power_error = power
    if series:
        pool_obs = _with_draw(pool_obs, series, workloads, providers, nodes, pods)
    snapshot = Snapshot(
        pools=frozen_map(pool_obs),
        node_pools=frozen_map(node_obs),
        budget_watts=frozen_map({n: sampled[q][0] for n, q in queries.budget.items()}),
        unreachable_providers=frozenset(down),
    )
    return Observed(
        snapshot,
        queue={k: p.queue_depth for k, p in pool_obs.items()},
        arrival={k: pool_obs[k].arrival_rate for k in queries.arrival},
        metrics_errors=metrics_errors,
        budget_errors=budget_errors,
        driver_errors=driver_errors,
        node_states=node_states,
        current_by_provider=current,
        power_error=power_error,
    )


def _errors(
    queries: _Queries, sampled: _Sampled
) -> tuple[dict[PoolKey, Problem], dict[str, Problem]]:
    """Each pool's queue problem and each budget's, naming the field the query came from."""
    pools = {
        k: _naming(queries.queue_field.get(k, QUEUE_FIELD), e)
        for k, q in queries.queue.items()
        if (e := _read(sampled, q)[1])
    }
    budgets = {
        n: _naming(BUDGET_FIELD, e) for n, q in queries.budget.items() if (e := sampled[q][1])
    }
    return pools, budgets


def _with_draw(
    pool_obs: Mapping[PoolKey, PoolObservation],
    series: Iterable[Labelled],
    workloads: Mapping[PoolKey, WorkloadEntry],
    providers: Mapping[str, CloudProviderSpec],
    nodes: Iterable[NodeEntry],
    pods: Mapping[str, Sequence[PodEntry]],
) -> dict[PoolKey, PoolObservation]:
    """The observations with each pool's measured draw per GPU type (power_draw.py)."""
    gpu_type_of = {
        NodePoolKey(name, np.name): np.gpu_type
        for name, spec in providers.items()
        for np in spec.node_pools
    }
    node_pool_of = {e.name: NodePoolKey(e.provider, e.node_pool) for e in nodes}
    drawn = attribute_draw(series, workloads, pods, node_pool_of, gpu_type_of)
    return {
        k: dataclasses.replace(o, watts_per_gpu=frozen_map(drawn[k])) if k in drawn else o
        for k, o in pool_obs.items()
    }


_Sampled = Mapping[str, tuple[float | None, Problem | None]]


def _read(sampled: _Sampled, query: _Query) -> tuple[float | None, Problem | None]:
    return (None, query) if isinstance(query, Problem) else sampled[query]


def _naming(field_path: str, problem: Problem) -> Problem:
    """The problem as a condition says it: which field's query, then why."""
    return Problem(problem.reason, f"{field_path}: {problem.message}")


def _node_pools(
    refs: Sequence[tuple[str, NodePoolRef]],
    states: Sequence[tuple[NodePoolState | None, Problem | None]],
    nodes: Iterable[NodeEntry],
    capacity_errors: Mapping[NodePoolKey, CapacityError],
    down: set[str],
) -> tuple[
    dict[NodePoolKey, NodePoolObservation], dict[NodePoolKey, NodePoolState], dict[str, Problem]
]:
    """Each node pool as its driver reports it, and its state; a provider whose driver fails
    is down, and why."""
    node_obs: dict[NodePoolKey, NodePoolObservation] = {}
    node_states: dict[NodePoolKey, NodePoolState] = {}
    driver_errors: dict[str, Problem] = {}
    ready_count: dict[NodePoolKey, int] = {}
    for entry in nodes:
        if entry.ready:
            seen = NodePoolKey(entry.provider, entry.node_pool)
            ready_count[seen] = ready_count.get(seen, 0) + 1
    for (name, ref), (state, error) in zip(refs, states, strict=True):
        np_key = NodePoolKey(name, ref.node_pool)
        if error is not None:
            driver_errors[name] = error
            down.add(name)
            continue
        assert state is not None
        node_states[np_key] = state
        node_obs[np_key] = NodePoolObservation(
            ready_nodes=state.ready,
            target_nodes=state.target_size,
            last_error=capacity_errors.get(np_key),
        )
    for seen, count in ready_count.items():  # providers without a driver call: nodes as seen
        node_obs.setdefault(seen, NodePoolObservation(ready_nodes=count, target_nodes=count))
    return node_obs, node_states, driver_errors


def _pools(
    queries: _Queries,
    sampled: _Sampled,
    workloads: Mapping[PoolKey, WorkloadEntry],
    nodes: Iterable[NodeEntry],
    pods: Mapping[str, Sequence[PodEntry]],
    last_placements: Mapping[PoolKey, Mapping[NodePoolKey, int]],
) -> tuple[dict[PoolKey, PoolObservation], dict[PoolKey, Mapping[str, int]]]:
    """Each pool's queue, arrivals, tier rates and replicas by node pool; and its replicas
    by provider."""
    tier_rates: dict[PoolKey, dict[str, float]] = {}
    for (pool_key, tier_name), query in queries.tier.items():
        value = _read(sampled, query)[0]
        if value is not None:
            tier_rates.setdefault(pool_key, {})[tier_name] = value
    node_pool_of = {e.name: NodePoolKey(e.provider, e.node_pool) for e in nodes}
    pool_obs: dict[PoolKey, PoolObservation] = {}
    current: dict[PoolKey, Mapping[str, int]] = {}
    for key, query in queries.queue.items():
        workload = workloads.get(key)
        placed: dict[NodePoolKey, int] = {}
        ready: int | None = None
        if workload:
            placed, ready = replicas_by_node_pool(
                workload,
                node_pool_of,
                last_placements.get(key, {}),
                selected_pods=selected(pods, key.namespace, workload.selector),
            )
        by_provider: dict[str, int] = {}
        for np_key, count in placed.items():
            by_provider[np_key.provider] = by_provider.get(np_key.provider, 0) + count
        current[key] = by_provider
        arrival = queries.arrival.get(key)
        pool_obs[key] = PoolObservation(
            _read(sampled, query)[0],
            None if arrival is None else _read(sampled, arrival)[0],
            frozen_map(placed),
            frozen_map(tier_rates.get(key, {})),
            ready,
        )
    return pool_obs, current


async def _state(
    driver: NodePoolDriver, ref: NodePoolRef, gate: asyncio.Semaphore
) -> tuple[NodePoolState | None, Problem | None]:
    from gpufleet.drivers.base import DriverError

    async with gate:
        try:
            return await driver.get_pool(ref), None
        except DriverError as exc:
            return None, Problem.of(exc)
        except Exception as exc:  # an untyped driver bug: this provider only
            log.exception("driver of %s failed", ref.provider, extra={"provider": ref.provider})
            return None, Problem.of(exc)
