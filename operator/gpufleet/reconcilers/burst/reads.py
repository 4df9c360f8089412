"""Reads of remote clusters at a bounded rate.

Each tick read every remote cluster again: its copies (a list per workload kind) and each of
its node pools through the provider's driver. With 20 providers at a 1 s period that is a
steady load on every remote API server for answers that rarely change. Here an answer is
reused for `seconds` (`--remote-read-seconds`) unless this operator wrote to that cluster
since: a write is followed by a fresh read on the next tick, so the operator's own changes
are seen at once and only what others change there (a copy's pods becoming ready, a node
joining) is seen up to `seconds` late.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gpufleet.drivers.base import NodePoolDriver, NodePoolRef, NodePoolState

T = TypeVar("T")


@dataclass
class Reused(Generic[T]):
    """Answers by key, each reused for `seconds` after it was read, until `forget`."""

    seconds: float
    clock: Callable[[], float] = time.monotonic
    _answers: dict[Hashable, tuple[float, T]] = field(default_factory=dict)

    def get(self, key: Hashable) -> T | None:
        found = self._answers.get(key)
        if found is None or self.clock() - found[0] >= self.seconds:
            return None
        return found[1]

    def put(self, key: Hashable, answer: T) -> T:
        if self.seconds > 0:
            now = self.clock()
            # Keys that changed (a new connection, other pools) leave old answers behind.
            self.forget(lambda k: now - self._answers[k][0] >= self.seconds)
            self._answers[key] = (now, answer)
        return answer

    def forget(self, match: Callable[[Hashable], bool] = lambda _: True) -> None:
        for key in [k for k in self._answers if match(k)]:
            del self._answers[key]


class ReadLimitedDriver:
    """A remote provider's driver whose node pool states are reused as `Reused` says; a
    resize or a node deletion through it is followed by a fresh read of that node pool."""

    def __init__(self, driver: NodePoolDriver, reused: Reused[NodePoolState]) -> None:
        self.inner = driver
        self._reused = reused

    async def get_pool(self, ref: NodePoolRef) -> NodePoolState:
        found = self._reused.get(ref)
        if found is not None:
            return found
        return self._reused.put(ref, await self.inner.get_pool(ref))

    async def set_target_size(self, ref: NodePoolRef, size: int, *, action_id: str) -> None:
        self._reused.forget(lambda key: key == ref)
        await self.inner.set_target_size(ref, size, action_id=action_id)

    async def delete_nodes(self, ref: NodePoolRef, names: Sequence[str], *, action_id: str) -> None:
        self._reused.forget(lambda key: key == ref)
        await self.inner.delete_nodes(ref, names, action_id=action_id)
