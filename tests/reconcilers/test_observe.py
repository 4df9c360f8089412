"""Observation fails per provider: a driver that raises what nobody typed marks its own
provider down, with a condition's reason, and the others are observed in the same tick."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gpufleet.drivers.base import NodePoolRef, NodePoolState
from gpufleet.planner.types import NodePoolKey
from gpufleet.reconcilers.observe import observe
from gpufleet.reconcilers.problems import UNEXPECTED

from .builders import simulated_provider


class SizedDriver:
    async def get_pool(self, ref: NodePoolRef) -> NodePoolState:
        return NodePoolState(3, ("n1", "n2"), ("n1", "n2", "n3"))

    async def set_target_size(self, ref: NodePoolRef, size: int, *, action_id: str) -> None:
        pass

    async def delete_nodes(self, ref: NodePoolRef, names: Sequence[str], *, action_id: str) -> None:
        pass


class BuggyDriver(SizedDriver):
    async def get_pool(self, ref: NodePoolRef) -> NodePoolState:
        raise KeyError("secret-token-in-a-message")


def test_an_untyped_driver_error_marks_only_its_provider_down() -> None:
    providers = {"good": simulated_provider("good"), "bad": simulated_provider("bad")}
    drivers = {"good": SizedDriver(), "bad": BuggyDriver()}

    observed = asyncio.run(
        observe({}, {}, providers, {}, [], {}, drivers, [], {}, {}, None)  # type: ignore[arg-type]
    )

    assert observed.snapshot.unreachable_providers == {"bad"}
    assert observed.node_states[NodePoolKey("good", "h100")].target_size == 3
    problem = observed.driver_errors["bad"]
    assert problem.reason == UNEXPECTED
    assert "secret-token" not in problem.message  # only the class: the log has the rest
