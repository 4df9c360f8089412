"""The service rate a pool is sized with: declared, learnt from its queue, or between
(planner/service.py holds the estimator; this module feeds it one pool's observation)."""

from __future__ import annotations

import math

from gpufleet.api.pool import RateSource, ServingPoolSpec
from gpufleet.planner.demand import service_rate_per_second
from gpufleet.planner.ledger import Ledger
from gpufleet.planner.service import Reading, ServiceMemory, work_factor
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
    slowest = service_rate_per_second(spec)
    arrival, queue = observation.arrival_rate, observation.queue_depth
    if slowest is None or arrival is None or queue is None:
        return previous, None
    declared = {r.gpu_type: r.requests_per_minute / 60.0 for r in spec.service_rates}
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
    memory = observe_service(previous or ServiceMemory(), reading)
    factor = work_factor(memory, now)
    observed = slowest * memory.factor if memory.updated is not None else None
    if memory.updated is None or factor == 1.0:
        source = RateSource.DECLARED
    elif math.isclose(factor, memory.factor, rel_tol=1e-3):
        source = RateSource.OBSERVED
    else:
        source = RateSource.BLENDED
    return memory, ServiceRate(slowest, observed, slowest * factor, source)
