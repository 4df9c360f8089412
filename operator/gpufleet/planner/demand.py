"""Replicas a pool needs: from queue depth, from a queueing model, and ahead of demand.

Queue depth gives KEDA's answer, ceil(queue / target). When arrivals and service rate are
known, an M/M/c model sizes for the wait SLO itself (Erlang C), plus enough spare rate to
drain the backlog within the SLO. A GPU node takes minutes to boot and a model tens of
seconds to load, so the signal is also projected over that lead time with Holt's linear
trend: O(1) per tick, no history kept, and it reacts to a ramp within a few samples. The
same lead time says which replicas are worth new nodes: a backlog that existing capacity
clears before new nodes could serve is theirs alone (`Demand.lasting_replicas`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from gpufleet.api.pool import ServingPoolSpec
from gpufleet.planner.facts import facts_of
from gpufleet.planner.types import Forecast, Note, PoolObservation, Reason, Settings

# A forecast may not promise more than this multiple of the present: trend on a noisy signal
# must not buy a fleet.
FORECAST_MAX_GROWTH = 2.0
_MAX_SERVERS = 1_000_000


# Not frozen: one is built for every pool each tick and read once, and a frozen dataclass
# sets each field through object.__setattr__ (several times the cost on Python 3.11).
@dataclass
class Demand:
    now_replicas: int
    ahead_replicas: int
    forecast: Forecast | None
    notes: tuple[Note, ...]
    # Of the replicas, those worth new nodes: demand that lasts until new nodes could serve.
    # None where no model tells lasting demand from a passing backlog (queue depth only).
    lasting_replicas: int | None = None
    # The queue grows past the SLO with every replica busy: the model was wrong, and the
    # replicas asked for are asked at once, past the scale-up rate policies (`QueueGrowing`).
    panic: bool = False

    @property
    def replicas(self) -> int:
        return max(self.now_replicas, self.ahead_replicas)


def service_rate_per_second(spec: ServingPoolSpec, factor: float = 1.0) -> float | None:
    """The slowest declared rate among the pool's GPU types (sizing must hold wherever it
    lands), times the work factor learnt from the queue (planner/service.py)."""
    slowest = facts_of(spec).slowest
    return slowest * factor if slowest is not None else None


def erlang_tail(arrival: float, service: float, servers: int, wait_seconds: float) -> float:
    """P(wait > wait_seconds) in an M/M/c queue; 1 when the servers cannot keep up."""
    if arrival <= 0:
        return 0.0
    load = arrival / service
    if servers <= load:
        return 1.0
    blocking = 1.0
    for c in range(1, servers + 1):
        blocking = load * blocking / (c + load * blocking)
    wait_probability = servers * blocking / (servers - load * (1.0 - blocking))
    return wait_probability * math.exp(-(servers * service - arrival) * wait_seconds)


# Cached: a pool's arrivals change once a scrape while the loop ticks every second, so most
# ticks ask again what the last one worked out, one step per server.
@functools.lru_cache(maxsize=16384)
def erlang_c_servers(arrival: float, service: float, wait_seconds: float, target: float) -> int:
    """Fewest servers c with P(wait > wait_seconds) <= 1 - target in an M/M/c queue.

    Erlang B is built up by its recurrence, one step per server, and turned into Erlang C:
    linear in the answer, without factorials that overflow.
    """
    if arrival <= 0:
        return 0
    load = arrival / service
    allowed = 1.0 - target
    blocking = 1.0
    for c in range(1, _MAX_SERVERS):
        blocking = load * blocking / (c + load * blocking)
        if c <= load:
            continue
        wait_probability = c * blocking / (c - load * (1.0 - blocking))
        tail = wait_probability * math.exp(-(c * service - arrival) * wait_seconds)
        if tail <= allowed:
            return c
    return _MAX_SERVERS


def _from_queue(spec: ServingPoolSpec, queue: float) -> int:
    return math.ceil(queue / spec.queue.target_per_replica - 1e-9)


# Not frozen: built for every pool with a model each tick and read once (see Demand).
@dataclass
class _Model:
    """Replicas for the wait SLO at one arrival rate, and to drain a backlog on top."""

    steady: int
    arrival: float
    service: float
    wait: float

    def draining(self, queue: float, lead_seconds: float = 0.0) -> int:
        """With the backlog served within the SLO by replicas that serve now, or, for
        capacity `lead_seconds` away, by the time it could serve (a backlog is new nodes'
        work only if it outlasts their boot)."""
        rate = self.arrival + queue / (self.wait + lead_seconds)
        return max(self.steady, math.ceil(rate / self.service - 1e-9))


def _model(spec: ServingPoolSpec, arrival: float, factor: float) -> _Model | None:
    service = service_rate_per_second(spec, factor)
    if service is None or spec.slo is None:
        return None
    wait = float(spec.slo.queue_wait_seconds)
    target = spec.slo.target_percent / 100.0
    steady = erlang_c_servers(arrival, service, wait, min(target, 0.9999))
    return _Model(steady, arrival, service, wait)


def _serving(observation: PoolObservation) -> int:
    if observation.ready_replicas is not None:
        return observation.ready_replicas
    return observation.total_replicas


def _growing(observation: PoolObservation, model: _Model, growth: float) -> bool:
    """The queue grows while every replica is busy, and is already more than the serving
    replicas clear within the SLO: a short-lived rise that they clear in time is what the
    queueing model allows for."""
    queue = observation.queue_depth
    if growth <= 0 or queue is None:
        return False
    return queue > _serving(observation) * model.service * model.wait


def _arrivals_behind_growth(
    observation: PoolObservation, model: _Model, arrival: float, growth: float
) -> tuple[float, Note | None]:
    """A queue that grows while every replica is busy says how much arrives: what the
    serving replicas serve plus the growth. The arrival rate is a minute's average and lags a
    sudden step by that much; the growth does not."""
    serving = _serving(observation)
    seen = serving * model.service + growth
    if seen <= arrival:
        return arrival, None
    return seen, Note(
        Reason.QUEUE_GROWING,
        f"the queue grows by {growth:.1f}/s with {serving} replicas busy: sized for "
        f"{seen:.1f} requests/s arriving, above the {arrival:.1f} measured",
    )


def update_forecast(
    previous: Forecast | None, value: float, now: float, settings: Settings
) -> Forecast:
    if previous is None:
        return Forecast(level=value, trend=0.0, time=now, samples=1)
    if now <= previous.time:
        return previous
    dt = now - previous.time
    alpha = 1.0 - math.exp(-dt / settings.forecast_level_seconds)
    beta = 1.0 - math.exp(-dt / settings.forecast_trend_seconds)
    predicted = previous.level + previous.trend * dt
    error = value - predicted
    level = alpha * value + (1 - alpha) * predicted
    trend = beta * (level - previous.level) / dt + (1 - beta) * previous.trend
    variance = alpha * error * error + (1 - alpha) * previous.error_variance
    return Forecast(level, trend, now, previous.samples + 1, variance)


def project(
    forecast: Forecast | None, present: float, lead_seconds: float, settings: Settings
) -> float | None:
    """The signal expected after the lead time, or None while there is no clear rise.

    A trend counts only when the rise it predicts over the lead time stands clear of the
    signal's own noise: a noisy flat signal must not buy nodes for a surge that is not
    coming.
    """
    if forecast is None or forecast.samples < settings.forecast_min_samples or forecast.trend <= 0:
        return None
    rise = forecast.trend * lead_seconds
    if rise <= settings.forecast_significance * math.sqrt(forecast.error_variance):
        return None
    ahead = forecast.level + rise
    return min(ahead, max(present, forecast.level) * FORECAST_MAX_GROWTH)


def demand(
    spec: ServingPoolSpec,
    observation: PoolObservation,
    previous: Forecast | None,
    lead_seconds: float,
    now: float,
    settings: Settings,
    factor: float = 1.0,
    burst_queue: float | None = None,
    growth: float = 0.0,
) -> Demand | None:
    """Replicas needed now and after the lead time; None when the queue signal is missing.
    `factor`: observed / declared service rate (planner/service.py); `burst_queue`: the
    backlog of a typical recurring burst (planner/bursts.py); `growth`: requests/s the queue
    grows by while every replica is busy."""
    queue = observation.queue_depth
    if queue is None or not math.isfinite(queue) or queue < 0:
        return None
    arrival = observation.arrival_rate
    if arrival is not None and (not math.isfinite(arrival) or arrival < 0):
        arrival = None
    notes: list[Note] = []
    now_replicas = _from_queue(spec, queue)
    model = _model(spec, arrival, factor) if arrival is not None else None
    backlog, drain_seconds, panic = queue, lead_seconds, False
    if model is not None and arrival is not None and _growing(observation, model, growth):
        panic = True
        # Until new capacity serves, the backlog goes on growing; once it serves, every
        # request that arrives waits behind the backlog and misses, so new nodes are bought
        # to clear it within the SLO, as the replicas that serve now are for the queue
        # present (bounded by maxReplicas, quotas, power and data policy): each second of
        # draining costs a second of arrivals.
        backlog = queue + growth * lead_seconds
        drain_seconds = 0.0
        arrival, note = _arrivals_behind_growth(observation, model, arrival, growth)
        if note is not None:
            notes.append(note)
            model = _model(spec, arrival, factor)
    modelled = model.draining(queue) if model is not None else None
    if modelled is not None:
        now_replicas = max(now_replicas, modelled)

    idle_arrivals = arrival is None or arrival == 0 or modelled is None
    if (
        observation.total_replicas == 0
        and queue <= spec.queue.activation_threshold
        and idle_arrivals
    ):
        notes.append(
            Note(
                Reason.BELOW_ACTIVATION,
                f"queue {queue:g} is at or below the activation "
                f"threshold {spec.queue.activation_threshold}",
            )
        )
        return Demand(0, 0, update_forecast(previous, 0.0, now, settings), tuple(notes))

    # Forecast arrivals where they are measured; otherwise the replica need itself.
    signal = arrival if modelled is not None and arrival is not None else float(now_replicas)
    forecast = update_forecast(previous, signal, now, settings)
    ahead_signal = project(forecast, signal, lead_seconds, settings)
    ahead = 0
    if ahead_signal is not None:
        if modelled is not None:
            ahead_model = _model(spec, ahead_signal, factor)
            ahead = ahead_model.steady if ahead_model is not None else 0
        else:
            ahead = math.ceil(ahead_signal - 1e-9)
        if ahead > now_replicas:
            notes.append(
                Note(
                    Reason.SCALED_AHEAD_OF_FORECAST,
                    f"demand projected {lead_seconds:.0f}s ahead "
                    f"needs {ahead} replicas (now {now_replicas})",
                )
            )
    lasting = None
    if model is not None:
        lasting = max(model.draining(backlog, drain_seconds), ahead)
        if burst_queue is not None:
            # Recurring bursts are demand: serve a typical one within the SLO.
            bursts = math.ceil(burst_queue / (model.service * model.wait) - 1e-9)
            if bursts > max(now_replicas, lasting):
                notes.append(
                    Note(
                        Reason.SIZED_FOR_BURSTS,
                        f"queue bursts of {burst_queue:.0f} recur: {bursts} replicas serve "
                        f"one within {model.wait:g}s",
                    )
                )
            now_replicas, lasting = max(now_replicas, bursts), max(lasting, bursts)
    return Demand(now_replicas, ahead, forecast, tuple(notes), lasting, panic)
