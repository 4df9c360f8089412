"""Retries with jittered back-off for transient driver errors, and only for those.

Throttling and 5xx answers usually clear within a second or two, so a few quick retries
inside one call save a whole reconcile tick. Capacity errors (InsufficientCapacity,
QuotaExceeded) are never retried here: the planner's capacity back-off moves the demand
to the next choice within the same reconcile, which a retry would only delay. The delays
are "full jitter" (uniform in [0, cap]) so that replicas and pools throttled together do
not retry in lockstep, and the total stays well under a tick.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from gpufleet.drivers.base import (
    NodePoolDriver,
    NodePoolRef,
    NodePoolState,
    ProviderUnavailable,
    Throttled,
)
from gpufleet.drivers.instrument import as_driver_error

T = TypeVar("T")
RETRIED = (Throttled, ProviderUnavailable)


@dataclass(frozen=True)
class Backoff:
    """At most `attempts` tries; before try n+1 a pause uniform in [0, min(cap, base*2^n)]."""

    attempts: int = 3
    base_seconds: float = 0.2
    cap_seconds: float = 2.0

    def delay(self, retry: int, draw: Callable[[float, float], float]) -> float:
        return draw(0.0, min(self.cap_seconds, self.base_seconds * 2**retry))


DEFAULT_BACKOFF = Backoff()


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    backoff: Backoff = DEFAULT_BACKOFF,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    draw: Callable[[float, float], float] = random.uniform,
) -> T:
    """`call()`, retried on Throttled and ProviderUnavailable; other errors at once.

    Untyped exceptions are typed first (as the instrumented wrapper does), so the choice
    to retry rests on the same reasons that conditions and metrics show.
    """
    retry = 0
    while True:
        try:
            return await call()
        except Exception as error:
            typed = as_driver_error(error, what)
            if not isinstance(typed, RETRIED) or retry + 1 >= backoff.attempts:
                if typed is error:
                    raise
                raise typed from None
        await sleep(backoff.delay(retry, draw))
        retry += 1


class RetryingDriver:
    """Wraps a NodePoolDriver so transient errors are retried with jittered back-off.

    Safe because every call is absolute or idempotent (see base.py): repeating "set 7" or
    "delete node-a" after a lost answer changes nothing.
    """

    def __init__(self, inner: NodePoolDriver, *, backoff: Backoff = DEFAULT_BACKOFF) -> None:
        self.inner = inner
        self.backoff = backoff

    async def get_pool(self, ref: NodePoolRef) -> NodePoolState:
        return await with_retries(
            lambda: self.inner.get_pool(ref), what="get_pool", backoff=self.backoff
        )

    async def set_target_size(self, ref: NodePoolRef, size: int, *, action_id: str) -> None:
        await with_retries(
            lambda: self.inner.set_target_size(ref, size, action_id=action_id),
            what="set_target_size",
            backoff=self.backoff,
        )

    async def delete_nodes(self, ref: NodePoolRef, names: Sequence[str], *, action_id: str) -> None:
        await with_retries(
            lambda: self.inner.delete_nodes(ref, names, action_id=action_id),
            what="delete_nodes",
            backoff=self.backoff,
        )
