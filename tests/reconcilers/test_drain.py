"""The pure parts of draining preempted replicas: what a plan asks to drain, which pods go,
how a refused eviction reads, and the `Preempted` condition (the calls run in e2e)."""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client.exceptions import ApiException

from gpufleet.api import parse_pool, parse_provider
from gpufleet.api.pool import ServingPoolSpec
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.planner import (
    Fleet,
    NodePoolKey,
    NodePoolObservation,
    PlannerState,
    PoolObservation,
    Snapshot,
    plan_fleet,
)
from gpufleet.planner.types import Note, PoolKey, PoolPlan, Reason, frozen_map
from gpufleet.reconcilers.drain import (
    MOVE_HOLD_SECONDS,
    Drainer,
    DrainOutcome,
    _Pod,
    pick,
    request_for,
    selector_text,
)
from gpufleet.reconcilers.kube import _refusal
from gpufleet.reconcilers.reporting.status import preempted_condition
from gpufleet.reconcilers.selectors import from_label_selector
from gpufleet_testbed import fleets

A = NodePoolKey("a", "h100")
FAST = {"scaleUp": {"policies": [{"type": "Pods", "value": 100, "periodSeconds": 1}]}}


def _pool(**extra: Any) -> ServingPoolSpec:
    parsed = parse_pool(
        {
            "scaleTargetRef": {"name": "model"},
            "gpuTypes": ["H100"],
            "queue": {"query": "q", "targetPerReplica": 10},
            "maxReplicas": 100,
            "behavior": FAST,
            **extra,
        }
    )
    assert parsed.value is not None, parsed.errors
    return parsed.value


def _provider() -> CloudProviderSpec:
    h100 = fleets.node_pool(
        "h100",
        gpu_type="H100",
        site="fra1",
        max_nodes=2,
        watts_per_gpu=700,
        idle_watts_per_gpu=100,
        boot_seconds=300,  # the API's default, as before
    )
    parsed = parse_provider(
        fleets.cloud_provider("a", legal_entity="Cloud GmbH", node_pools=[h100])["spec"]
    )
    assert parsed.value is not None, parsed.errors
    return parsed.value


def _plan(preempted: dict[NodePoolKey, int] | None = None) -> PoolPlan:
    notes = (
        (Note(Reason.PREEMPTED, "4 replicas on a/h100 yield to higher-priority pools"),)
        if preempted
        else ()
    )
    return PoolPlan(
        PoolKey("ns", "batch"),
        12,
        16,
        {A: 12},
        16,
        4,
        0,
        0.0,
        True,
        notes,
        preempted=frozen_map(preempted or {}),
    )


def test_a_preempted_pool_asks_to_drain_its_local_replicas_naming_who_took_them() -> None:
    chat, batch = PoolKey("ns", "chat"), PoolKey("ns", "batch")
    f = Fleet(
        pools=frozen_map({chat: _pool(), batch: _pool(preemption={"drainTimeoutSeconds": 0})}),
        providers=frozen_map({"a": _provider()}),
        priorities=frozen_map({chat: 1000, batch: 1}),  # from their PriorityClasses
    )
    snapshot = Snapshot(
        pools=frozen_map(
            {
                chat: PoolObservation(queue_depth=40),
                batch: PoolObservation(queue_depth=160, replicas=frozen_map({A: 16})),
            }
        ),
        node_pools=frozen_map({A: NodePoolObservation(ready_nodes=2, target_nodes=2)}),
    )
    plan = plan_fleet(f, snapshot, PlannerState(), 0.0)
    request = request_for(batch, plan, f, snapshot)
    assert request is not None
    assert request.node_pools == {A: 4}
    assert request.by == ("ns/chat",)
    assert request.timeout_seconds == 1  # 0 would be a forced delete
    assert request_for(chat, plan, f, snapshot) is None


def test_pods_on_the_preempted_nodes_go_not_ready_first_then_newest() -> None:
    pods = [
        _Pod("old", "n1", True, "2026-01-01T00:00:00Z"),
        _Pod("new", "n1", True, "2026-01-02T00:00:00Z"),
        _Pod("starting", "n1", False, "2026-01-01T00:00:00Z"),
        _Pod("elsewhere", "n9", False, "2026-01-03T00:00:00Z"),
        _Pod("pending", None, False, "2026-01-03T00:00:00Z"),
    ]
    chosen = pick(pods, {A: {"n1"}}, {A: 2})
    assert [p.name for p in chosen] == ["starting", "new"]


def test_a_selector_is_listed_in_its_string_form() -> None:
    selector = from_label_selector(
        {
            "matchLabels": {"app": "batch"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["b", "a"]},
                {"key": "canary", "operator": "DoesNotExist"},
            ],
        }
    )
    assert selector_text(selector) == "app=batch,tier in (a,b),!canary"


def test_a_refusal_by_a_disruption_budget_names_the_budget() -> None:
    body = {
        "kind": "Status",
        "message": "Cannot evict pod as it would violate the pod's disruption budget.",
        "reason": "TooManyRequests",
        "details": {
            "causes": [
                {
                    "reason": "DisruptionBudget",
                    "message": "The disruption budget batch needs 16 healthy pods and has 16",
                }
            ]
        },
        "code": 429,
    }
    message, budget = _refusal(ApiException(status=429, body=json.dumps(body)))
    assert budget and "disruption budget batch needs 16" in message
    throttled = ApiException(status=429, body=json.dumps({"message": "Too many requests"}))
    assert _refusal(throttled) == ("Too many requests", False)


def test_the_preempted_condition_says_how_the_drain_goes() -> None:
    assert preempted_condition(_plan(), None).status is False
    assert preempted_condition(_plan(), None).reason == "NotPreempted"
    plain = preempted_condition(_plan({A: 4}), None)
    assert (plain.status, plain.reason) == (True, "Preempted")
    blocked = preempted_condition(
        _plan({A: 4}), DrainOutcome(wanted=4, blocked="The disruption budget batch needs 16")
    )
    assert (blocked.status, blocked.reason) == (True, "DrainBlockedByDisruptionBudget")
    assert "0 of 4 replicas drained" in blocked.message and "budget batch" in blocked.message
    draining = preempted_condition(
        _plan(), DrainOutcome(wanted=4, evicted=4, draining=4, by=("ns/chat",))
    )
    assert (draining.status, draining.reason) == (True, "Draining")
    assert "ns/chat" in draining.message


def test_a_moved_pool_waits_until_the_pools_it_yielded_to_are_scheduled() -> None:
    drainer = Drainer()
    batch, chat = PoolKey("ns", "batch"), PoolKey("ns", "chat")
    drainer.moved[batch] = ((chat,), 100.0)
    pending = {chat: 2}
    assert drainer.holds(batch, lambda k: pending.get(k, 0), 101.0)
    pending[chat] = 0
    assert not drainer.holds(batch, lambda k: pending.get(k, 0), 102.0)
    assert batch not in drainer.moved  # the wait is over for good
    assert not drainer.holds(chat, lambda k: 5, 102.0)  # only pools that moved wait


def test_a_moved_pool_waits_a_minute_at_most() -> None:
    drainer = Drainer()
    batch, chat = PoolKey("ns", "batch"), PoolKey("ns", "chat")
    drainer.moved[batch] = ((chat,), 100.0)
    assert not drainer.holds(batch, lambda k: 1, 100.0 + MOVE_HOLD_SECONDS)


def test_a_scale_down_event_says_when_a_disruption_budget_holds_the_replicas() -> None:
    from gpufleet.reconcilers.reporting.reporter import scale_event

    reason, message = scale_event(_plan({A: 4}), None)
    assert reason == "Preempted" and "evictions" not in message
    held = DrainOutcome(wanted=4, blocked="The disruption budget batch needs 16 healthy pods")
    reason, message = scale_event(_plan({A: 4}), held)
    assert reason == "Preempted"
    assert message.endswith("replicas stay until evictions are allowed: " + held.blocked)


def test_a_leader_that_takes_over_keeps_a_moves_wait_but_not_an_expired_one() -> None:
    before = Drainer()
    batch, chat = PoolKey("ns", "batch"), PoolKey("ns", "chat")
    before.moved[batch] = ((chat,), 100.0)
    recorded = before.waiting(110.0)
    assert [(m.pool, m.to, m.since) for m in recorded] == [("ns/batch", ("ns/chat",), 100.0)]
    after = Drainer()
    after.take_over(recorded, 130.0)
    assert after.holds(batch, lambda k: 1, 130.0)  # chat's pods still unscheduled
    late = Drainer()
    late.take_over(recorded, 100.0 + 61)
    assert not late.holds(batch, lambda k: 1, 161.0)
    assert before.waiting(161.0) == ()
