"""Calls side by side, a bounded number at once, none started after the first error."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable


async def side_by_side(calls: Iterable[Callable[[], Awaitable[None]]], limit: int) -> None:
    """Await each of `calls`, up to `limit` at once. The first error cancels those not yet
    done and is raised once they have stopped (a blocking call already in its thread still
    finishes there): a batch whose server pushes back stops loading it, and the next tick,
    level-based, asks again for what is missing."""
    gate = asyncio.Semaphore(limit)

    async def gated(call: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await call()

    tasks = [asyncio.ensure_future(gated(call)) for call in calls]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
