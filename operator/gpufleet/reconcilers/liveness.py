"""/healthz: unhealthy only when the fleet loop is stuck, not when a tick fails.

A tick that raises is logged and the next one tries again; restarting the process would not
help. A tick that never returns (a call without a timeout, a deadlock) stops every pool, and
only a restart helps: that is what the liveness probe reports. So does a fleet loop that no
longer goes round at all (its task died, or the indexes never filled): `beat` once a round,
leader or not."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


class LoopStuck(Exception):
    pass


@dataclass
class TickWatch:
    stuck_after: float
    clock: Callable[[], float] = time.monotonic
    _started: float | None = field(default=None, init=False)
    _beat: float | None = field(default=None, init=False)

    def beat(self) -> None:
        """The fleet loop went round (whether or not it leads and ticked)."""
        self._beat = self.clock()

    def begin(self) -> None:
        self._started = self.clock()

    def end(self) -> None:
        self._started = None

    def check(self) -> None:
        """Raises while a tick has run longer than `stuck_after` seconds."""
        if self._started is not None and self.clock() - self._started > self.stuck_after:
            raise LoopStuck(f"a fleet tick has run for {self.clock() - self._started:.0f} s")
        if self._beat is not None and self.clock() - self._beat > self.stuck_after:
            raise LoopStuck(
                f"the fleet loop has not gone round for {self.clock() - self._beat:.0f} s"
            )
