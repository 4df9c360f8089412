"""Statuses from the plan (pure), built as the models that generate the CRDs."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import ValidationError

from gpufleet.api.pool import RateSource, ServingPoolStatus
from gpufleet.api.power import PowerBudgetStatus
from gpufleet.api.provider import CloudProviderStatus
from gpufleet.planner.types import (
    NodePoolKey,
    Note,
    PoolKey,
    PoolPlan,
    Reason,
    ServiceRate,
    frozen_map,
)
from gpufleet.reconcilers.reporting.conditions import Cond
from gpufleet.reconcilers.reporting.status import (
    budget_status,
    pool_conditions,
    pool_status,
    provider_status,
    same,
    wire,
)

from .builders import minimal_pool, simulated_provider

OUTSIDE = Note(
    Reason.OUTSIDE_DATA_POLICY,
    "replicas run where the data policy refuses (2 on us/h100): us: jurisdiction US ...",
)


def _plan(*notes: Note) -> PoolPlan:
    placements = frozen_map({NodePoolKey("de", "h100"): 4})
    return PoolPlan(PoolKey("ns", "chat"), 4, 6, placements, 4, 0, 0, 0.0, True, notes)


def test_pods_outside_the_data_policy_make_the_pool_not_ready_and_say_where() -> None:
    spec = minimal_pool()
    conditions = {c.type: c for c in pool_conditions(spec, _plan(OUTSIDE), None, None)}
    compliant = conditions["DataPolicyCompliant"]
    assert (compliant.status, compliant.reason) == (False, "PodsOutsideDataPolicy")
    assert "2 on us/h100" in compliant.message
    assert (conditions["Ready"].status, conditions["Ready"].reason) == (
        False,
        "PodsOutsideDataPolicy",
    )
    fine = {c.type: c for c in pool_conditions(spec, _plan(), None, None)}
    assert fine["DataPolicyCompliant"].status is True and fine["Ready"].status is True


def test_a_pool_status_is_written_as_the_model_that_generates_the_crd() -> None:
    spec = minimal_pool()
    plan = _plan(OUTSIDE)
    status = pool_status(
        None, 3, pool_conditions(spec, plan, None, None), 0.0, plan, 7.4, {}, {"de": 4}, 2.0
    )

    written = wire(status)

    assert ServingPoolStatus.model_validate(written) == status
    assert written["queueDepth"] == 7 and written["providers"][0]["currentReplicas"] == 4
    assert written["conditions"][0]["lastTransitionTime"] == "1970-01-01T00:00:00Z"


def test_a_misspelt_or_out_of_range_status_field_fails_when_it_is_built() -> None:
    with pytest.raises(ValidationError, match="desiredReplica"):
        ServingPoolStatus.model_validate({"desiredReplica": 4})
    with pytest.raises(ValidationError):
        ServingPoolStatus(queue_depth=-1)
    with pytest.raises(ValidationError):
        wire(ServingPoolStatus.model_validate({"burstPercent": 101}))


def test_a_status_that_says_only_what_went_wrong_keeps_the_figures_it_had() -> None:
    stored = wire(
        pool_status(None, 1, pool_conditions(minimal_pool(), _plan(), None, None), 0.0, _plan())
    )
    broken = Cond("TargetFound", False, "TargetNotFound", "gone")

    status = wire(pool_status({**stored, "retired": 1}, 2, [broken], 60.0))

    assert status["desiredReplicas"] == 4 and status["observedGeneration"] == 2
    assert "retired" not in status  # a field the model no longer has is dropped
    assert [c["type"] for c in status["conditions"]] == ["TargetFound"]


def test_an_unchanged_status_reads_back_the_same_and_is_not_written_again() -> None:
    plan = _plan()
    conds = pool_conditions(minimal_pool(), plan, None, None)
    first = wire(pool_status(None, 1, conds, 0.0, plan, 3.0, {}, {"de": 4}, 1.0))

    again = wire(pool_status(first, 1, conds, 600.0, plan, 3.0, {}, {"de": 4}, 1.0))

    assert same(first, again)


def test_budget_and_provider_statuses_are_their_models() -> None:
    budget = budget_status(None, 1, None, False, 0.0)
    provider = provider_status(None, 1, simulated_provider(), {}, {"h100": 2}, None, 0.0)

    assert isinstance(budget, PowerBudgetStatus) and isinstance(provider, CloudProviderStatus)
    assert wire(provider)["nodePools"] == [
        {"name": "h100", "desiredNodes": 0, "readyNodes": 2, "gpusAllocated": 0}
    ]


def test_a_pool_served_slower_than_declared_says_so_and_what_sized_it() -> None:
    rate = ServiceRate(declared=41.7, observed=26.0, used=26.0, source=RateSource.OBSERVED)
    plan = replace(_plan(), service=rate)

    conditions = {c.type: c for c in pool_conditions(minimal_pool(), plan, None, None)}
    status = wire(pool_status(None, 1, list(conditions.values()), 0.0, plan))

    accurate = conditions["ServiceRateAccurate"]
    assert (accurate.status, accurate.reason) == (False, "ObservedRateDiffers")
    assert "1,560 requests a minute, 0.62 times the declared 2,502" in accurate.message
    assert conditions["Ready"].status is True  # a wrong claim is corrected, not a failure
    assert status["serviceRate"] == {
        "declaredRequestsPerMinute": 2502,
        "observedRequestsPerMinute": 1560,
        "usedRequestsPerMinute": 1560,
        "source": "Observed",
    }
    close = replace(plan, service=replace(rate, observed=40.0, used=40.0))
    same_rate = {c.type: c for c in pool_conditions(minimal_pool(), close, None, None)}
    assert same_rate["ServiceRateAccurate"].reason == "AsDeclared"


def test_a_stored_field_the_model_rejects_is_dropped_alone() -> None:
    stored = wire(
        pool_status(None, 1, pool_conditions(minimal_pool(), _plan(), None, None), 0.0, _plan())
    )
    broken = Cond("TargetFound", False, "TargetNotFound", "gone")

    status = wire(pool_status({**stored, "burstPercent": 150}, 2, [broken], 60.0))

    assert "burstPercent" not in status and status["desiredReplicas"] == 4
