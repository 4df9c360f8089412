"""kopf's start-up gate, made linear in the number of watched objects.

kopf holds every object's handlers until every index is filled: one toggle per object in a
`ToggleSet`, and each object's worker waits on the set's condition. Every toggle made or
dropped notifies that condition, which wakes every waiting worker to re-check the whole set:
objects x waiting workers wake-ups. At 1,000 pools, 1,000 Deployments and 2,000 pods a
restarted operator spent minutes here before its first tick (benchmarks/fleet_scale.py,
py-spy: nine tenths of its CPU in `make_toggle` and `wait_for`), and it grows with the
square of the fleet.

`install()` replaces `ToggleSet.wait_for` with the same wait done through one follower per
set: the follower alone waits on the condition and re-checks the set once per change, and
the workers wait on an event it sets when the state they want is reached. What is waited
for, and when it is reached, is unchanged; kopf's other uses of `ToggleSet` (pausing) take
the same path. The replaced method is checked when installing: a kopf whose `ToggleSet`
lacks what this relies on is left as it is, with a warning.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from kopf._cogs.aiokits import aiotoggles

log = logging.getLogger(__name__)
_ORIGINAL = aiotoggles.ToggleSet.wait_for
_NEEDED = ("_condition", "_toggles", "_fn", "is_on")


class _Follower:
    """Waits on a set's condition for all the workers that wait for one of its states."""

    def __init__(self, toggles: aiotoggles.ToggleSet) -> None:
        self._toggles = toggles
        self._reached = {True: asyncio.Event(), False: asyncio.Event()}
        self._waiting = 0
        self._task: asyncio.Task[None] | None = None

    async def wait_for(self, state: bool) -> None:
        self._waiting += 1
        try:
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._follow())
            while self._toggles.is_on() != state:
                await self._reached[state].wait()
                await asyncio.sleep(0)  # let the follower see a flip that came since
        finally:
            self._waiting -= 1
            if not self._waiting and self._task is not None:
                self._task.cancel()  # nobody waits: no task outlives the waits
                self._task = None

    async def _follow(self) -> None:
        condition: asyncio.Condition = self._toggles._condition
        async with condition:
            while True:
                on = self._toggles.is_on()
                self._reached[on].set()
                self._reached[not on].clear()
                await condition.wait()


_followers: weakref.WeakKeyDictionary[aiotoggles.ToggleSet, _Follower] = weakref.WeakKeyDictionary()


async def _wait_for(self: aiotoggles.ToggleSet, state: bool, /) -> None:
    if self.is_on() == bool(state):
        return
    follower = _followers.get(self)
    if follower is None:
        follower = _followers[self] = _Follower(self)
    await follower.wait_for(bool(state))


def install() -> bool:
    """Replace kopf's `ToggleSet.wait_for` (once); False where this kopf does not fit."""
    probe: Any = aiotoggles.ToggleSet(all)
    if not all(hasattr(probe, name) for name in _NEEDED) or not isinstance(
        probe._condition, asyncio.Condition
    ):
        log.warning("kopf's ToggleSet changed: its start-up gate is left as kopf has it")
        return False
    aiotoggles.ToggleSet.wait_for = _wait_for  # type: ignore[method-assign, assignment]
    return True


def uninstall() -> None:
    """kopf's own `wait_for` again (tests)."""
    aiotoggles.ToggleSet.wait_for = _ORIGINAL  # type: ignore[method-assign]
