"""The service rate a pool is sized with: declared, learnt from its queue, or between
(planner/service.py holds the estimator; this module feeds it one pool's observation)."""

from __future__ import annotations

import math
from dataclasses import replace

from gpufleet.api.pool import RateSource, ServingPoolSpec
from gpufleet.planner.facts import facts_of
from gpufleet.planner.ledger import Ledger
from gpufleet.planner.service import FACTOR_STEP, Reading, ServiceMemory, work_factor
from gpufleet.planner.service import observe as observe_service
from gpufleet.planner.types import PoolObservation, ServiceRate


def learn_service(
    spec: ServingPoolSpec,
    observation: PoolObservation,
    previous: ServiceMemory | None,
    ledger: Ledger,
    now: float,
) -> tuple[ServiceMemory | None, ServiceRate | None]:
    """The pool's work factor with this tick's queue and arrivals folded in
    (planner/service.py), and the service rate it sizes with; None for a pool without a
    declared rate or measured arrivals (queue depth alone sizes it)."""
    facts = facts_of(spec)
    slowest = facts.slowest
    if slowest is None:
        return None, None
    declared, rates = facts.declared, facts.rates
    if previous is not None and previous.rates != rates:
        previous = None  # what was learnt was against the rates the spec no longer declares
    arrival, queue = observation.arrival_rate, observation.queue_depth
    if not _usable(arrival) or not _usable(queue):
        # A gap in the metrics ends any window: what the queue did meanwhile is unknown.
        kept = previous
        if previous is not None and (previous.last is not None or previous.window is not None):
            kept = replace(previous, last=None, window=None)
        return kept, _rate(slowest, kept, now)
    assert arrival is not None and queue is not None
    running = {
        key: count
        for key, count in observation.replicas.items()
        if count and key in ledger.slots and ledger.slots[key].spec.gpu_type in declared
    }
    total = sum(running.values())
    per_replica = (
        sum(declared[ledger.slots[k].spec.gpu_type] * n for k, n in running.items()) / total
        if total
        else slowest
    )
    serving = observation.ready_replicas if observation.ready_replicas is not None else total
    servers = min(serving, total)
    reading = Reading(now, queue, arrival, servers * per_replica, servers)
    memory = observe_service(previous or ServiceMemory(rates=rates), reading)
    return memory, _rate(slowest, memory, now)


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value >= 0


def _rate(slowest: float, memory: ServiceMemory | None, now: float) -> ServiceRate:
    """What sizes the pool. The observed rate is reported only while it counts: once its
    samples have aged out, the pool is back on its declared rate and says nothing else."""
    factor = work_factor(memory, now)
    growth = memory.growth if memory is not None else 0.0
    if memory is None or memory.updated is None or factor == 1.0:
        return ServiceRate(slowest, None, slowest, RateSource.DECLARED, growth)
    believed = abs(factor - memory.factor) < FACTOR_STEP
    source = RateSource.OBSERVED if believed else RateSource.BLENDED
    return ServiceRate(slowest, slowest * memory.factor, slowest * factor, source, growth)
