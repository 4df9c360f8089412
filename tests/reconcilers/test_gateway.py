"""The gateway ConfigMap's documents (pure): one key per pool, the figures of
`status.throttle`, held without fresh figures, gone with the pool, and stable bytes."""

from __future__ import annotations

import json

import pytest
from kubernetes.client import ApiClient, Configuration

from gpufleet.metrics.exporter import OperatorMetrics
from gpufleet.planner.types import (
    FleetPlan,
    Note,
    PlannerState,
    PoolKey,
    PoolPlan,
    Reason,
    Throttle,
    TierAllowance,
)
from gpufleet.reconcilers.cache import View
from gpufleet.reconcilers.kube import Kube
from gpufleet.reconcilers.reporting.gateway import GatewayConfigMap, changes, documents, key_of

SHORT = PoolKey("team", "image")
FINE = PoolKey("team", "chat")
NOTE = "carries 9.50 of 20.00 req/s at the SLO; tiers cut: free"
T0 = 1_700_000_000.0
KEY = "team.image.json"


def _plan(key: PoolKey, throttle: Throttle | None = None, metrics: bool = True) -> PoolPlan:
    notes = (Note(Reason.THROTTLED, NOTE),) if throttle else ()
    return PoolPlan(key, 10, 10, {}, 10, 0, 0, 0.0, metrics, notes, throttle)


def _throttle(sustainable: float = 9.5, demand: float = 20.0) -> Throttle:
    paid = TierAllowance("paid", 5.0, 5.0)
    free = TierAllowance("free", demand - 5.0, sustainable - 5.0)
    return Throttle(sustainable, demand, (paid, free))


def test_a_throttled_pool_publishes_its_rates_per_minute_highest_tier_first() -> None:
    data = documents([SHORT], {SHORT: _plan(SHORT, _throttle())}, {}, T0)
    assert list(data) == ["team.image.json"]
    assert json.loads(data["team.image.json"]) == {
        "namespace": "team",
        "name": "image",
        "throttled": True,
        "sustainableRequestsPerMinute": 570,
        "demandRequestsPerMinute": 1200,
        "tiers": [
            {"name": "paid", "demandRequestsPerMinute": 300, "allowedRequestsPerMinute": 300},
            {"name": "free", "demandRequestsPerMinute": 900, "allowedRequestsPerMinute": 270},
        ],
        "reason": "DemandAboveCapacity",
        "message": NOTE,
        "observedAt": "2023-11-14T22:13:20Z",
    }


def test_a_pool_that_keeps_up_says_unthrottled_with_no_limit() -> None:
    doc = json.loads(documents([FINE], {FINE: _plan(FINE)}, {}, T0)["team.chat.json"])
    assert doc["throttled"] is False
    assert doc["sustainableRequestsPerMinute"] is None
    assert doc["demandRequestsPerMinute"] is None
    assert doc["tiers"] == [] and doc["reason"] == "DemandWithinCapacity"


def test_a_pool_throttled_while_its_replicas_start_says_so() -> None:
    starting = Throttle(2.0, 20.0, (TierAllowance("paid", 5.0, 2.0),), starting=True)
    doc = json.loads(documents([SHORT], {SHORT: _plan(SHORT, starting)}, {}, T0)[KEY])
    assert doc["throttled"] is True and doc["reason"] == "CapacityStarting"


def test_the_same_plan_on_the_next_tick_writes_nothing() -> None:
    plans = {SHORT: _plan(SHORT, _throttle()), FINE: _plan(FINE)}
    first = documents([SHORT, FINE], plans, {}, T0)
    assert changes({}, first) == first
    again = documents([SHORT, FINE], plans, first, T0 + 60)
    assert again == first  # observedAt too: it is when the figures were computed
    assert changes(first, again) == {}


def test_demand_jitter_below_a_request_per_minute_writes_nothing() -> None:
    first = documents([SHORT], {SHORT: _plan(SHORT, _throttle())}, {}, T0)
    jitter = {SHORT: _plan(SHORT, _throttle(sustainable=9.501, demand=20.001))}
    assert changes(first, documents([SHORT], jitter, first, T0 + 1)) == {}


def test_new_figures_are_written_with_the_time_they_were_computed() -> None:
    first = documents([SHORT], {SHORT: _plan(SHORT, _throttle())}, {}, T0)
    later = documents([SHORT], {SHORT: _plan(SHORT)}, first, T0 + 60)
    patch = changes(first, later)
    doc = json.loads(patch["team.image.json"] or "")
    assert doc["throttled"] is False and doc["observedAt"] == "2023-11-14T22:14:20Z"


def test_a_deleted_pools_key_is_removed_and_other_keys_are_left_alone() -> None:
    held = documents([SHORT, FINE], {SHORT: _plan(SHORT), FINE: _plan(FINE)}, {}, T0)
    previous = {**held, "README": "kept"}
    patch = changes(previous, documents([FINE], {FINE: _plan(FINE)}, previous, T0 + 1))
    assert patch == {"team.image.json": None}


def test_a_pool_without_fresh_figures_keeps_its_last_document() -> None:
    first = documents([SHORT], {SHORT: _plan(SHORT, _throttle())}, {}, T0)
    blind = {SHORT: _plan(SHORT, metrics=False)}
    assert documents([SHORT], blind, first, T0 + 1) == first
    assert documents([SHORT], {}, first, T0 + 1) == first  # invalid spec, no target
    assert documents([SHORT], blind, {}, T0 + 1) == {}  # never known: missing, not "no limit"


def test_unreadable_previous_text_is_replaced() -> None:
    fresh = documents([FINE], {FINE: _plan(FINE)}, {"team.chat.json": "{oops"}, T0)
    assert json.loads(fresh["team.chat.json"])["throttled"] is False


def test_keys_are_valid_configmap_keys_or_none_when_too_long() -> None:
    assert key_of(PoolKey("team", "image.v2")) == "team.image.v2.json"
    assert key_of(PoolKey("n" * 63, "p" * 184)) is not None
    assert key_of(PoolKey("n" * 63, "p" * 185)) is None


@pytest.mark.asyncio
async def test_a_failed_write_is_counted_and_never_stops_the_tick() -> None:
    config = Configuration(host="http://127.0.0.1:9")  # nothing listens: every call fails
    config.retries = 0
    metrics = OperatorMetrics()
    writer = GatewayConfigMap(
        Kube(ApiClient(config), "gpufleet-system"), metrics, "gpufleet-system", "gw"
    )
    plan = FleetPlan({SHORT: _plan(SHORT, _throttle())}, {}, {}, PlannerState())
    await writer.publish(View([], [], [], [], {}, {}), plan, T0)
    await writer.publish(View([], [], [], [], {}, {}), plan, T0 + 1)
    errors = metrics.registry.get_sample_value(
        "gpufleet_reconcile_errors_total", {"stage": "gateway"}
    )
    assert errors == 2 and writer.data is None and writer.error
