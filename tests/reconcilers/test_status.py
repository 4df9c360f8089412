"""A pool's conditions from its plan (pure)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gpufleet.api.pool import ServingPoolStatus
from gpufleet.planner.types import NodePoolKey, Note, PoolKey, PoolPlan, Reason, frozen_map
from gpufleet.reconcilers.reporting.status import pool_conditions, pool_status

from .builders import minimal_pool

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


def test_a_pool_status_fits_the_model_that_generates_the_crd() -> None:
    spec = minimal_pool()
    plan = _plan(OUTSIDE)
    status = pool_status(
        None, 3, pool_conditions(spec, plan, None, None), 0.0, plan, 7.4, {}, {"de": 4}, 2.0
    )

    ServingPoolStatus.model_validate(status)
    with pytest.raises(ValidationError):
        ServingPoolStatus.model_validate({**status, "desiredReplica": 4})  # a misspelt field
