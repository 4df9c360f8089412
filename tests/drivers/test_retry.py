"""Jittered retries: transient errors are retried a few times, capacity errors never."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from gpufleet.drivers.base import (
    DriverError,
    InsufficientCapacity,
    NodePoolRef,
    NodePoolState,
    ProviderUnavailable,
    QuotaExceeded,
    Throttled,
)
from gpufleet.drivers.retry import Backoff, RetryingDriver, with_retries

REF = NodePoolRef("cloud", "gpu", "gpu")


class Flaky:
    """Fails with the given errors in turn, then succeeds."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def get_pool(self, ref: NodePoolRef) -> NodePoolState:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return NodePoolState(1, ("n",), ("n",))

    async def set_target_size(self, ref: NodePoolRef, size: int, *, action_id: str) -> None:
        await self.get_pool(ref)

    async def delete_nodes(self, ref: NodePoolRef, names: Sequence[str], *, action_id: str) -> None:
        await self.get_pool(ref)


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.mark.asyncio
async def test_transient_errors_are_retried_with_growing_jittered_delays() -> None:
    flaky, sleeps = Flaky(Throttled("slow down"), ProviderUnavailable("503")), Sleeps()
    draws: list[tuple[float, float]] = []

    def draw(low: float, high: float) -> float:
        draws.append((low, high))
        return high / 2

    state = await with_retries(
        lambda: flaky.get_pool(REF), what="get_pool", sleep=sleeps, draw=draw
    )

    assert state.ready == 1 and flaky.calls == 3
    assert draws == [(0.0, 0.2), (0.0, 0.4)]  # full jitter under a doubling cap
    assert sleeps.delays == [0.1, 0.2]


@pytest.mark.asyncio
@pytest.mark.parametrize("error", [InsufficientCapacity("none"), QuotaExceeded("quota")])
async def test_capacity_errors_are_raised_at_once_for_the_planner(error: DriverError) -> None:
    flaky, sleeps = Flaky(error), Sleeps()
    with pytest.raises(type(error)):
        await with_retries(lambda: flaky.get_pool(REF), what="get_pool", sleep=sleeps)
    assert flaky.calls == 1 and sleeps.delays == []


@pytest.mark.asyncio
async def test_gives_up_after_the_last_attempt_with_the_typed_error() -> None:
    flaky, sleeps = Flaky(*(Throttled(f"{i}") for i in range(5))), Sleeps()
    with pytest.raises(Throttled):
        await with_retries(
            lambda: flaky.get_pool(REF), what="x", backoff=Backoff(attempts=3), sleep=sleeps
        )
    assert flaky.calls == 3 and len(sleeps.delays) == 2


@pytest.mark.asyncio
async def test_untyped_errors_are_typed_before_deciding() -> None:
    class Http503(Exception):
        status = 503

    class Http400(Exception):
        status = 400

    flaky = Flaky(Http503("upstream text"), Http400("bad request text"))
    with pytest.raises(DriverError) as raised:
        await with_retries(lambda: flaky.get_pool(REF), what="get_pool", sleep=Sleeps())
    assert flaky.calls == 2  # 503 retried, 400 not
    assert "text" not in str(raised.value)
    assert raised.value.__cause__ is None


def test_delays_never_exceed_the_cap() -> None:
    backoff = Backoff(attempts=10, base_seconds=0.5, cap_seconds=2.0)
    assert max(backoff.delay(n, lambda low, high: high) for n in range(10)) == 2.0


@pytest.mark.asyncio
async def test_retrying_driver_retries_every_call() -> None:
    flaky = Flaky(Throttled("a"), Throttled("b"))
    driver = RetryingDriver(flaky, backoff=Backoff(attempts=3, base_seconds=0.0))
    await driver.set_target_size(REF, 2, action_id="x")
    await driver.delete_nodes(REF, ["n"], action_id="y")
    assert (await driver.get_pool(REF)).ready == 1
    assert flaky.calls == 5
