"""Actuation as data: the typed changes a tick makes, their order, and the executor.

`reconcilers/changes.py` turns the plan and the observation into changes (pure); `execute`
records the resizes in the intent journal, applies every change in `Phase` order through an
`Applier` (reconcilers/apply.py does the I/O) and records what was done. The order is tested
with an in-memory driver and scaler, with no cluster.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from gpufleet.drivers.base import NodePoolRef
from gpufleet.drivers.side_by_side import side_by_side
from gpufleet.planner.types import NodePoolKey, PoolKey
from gpufleet.reconcilers.burst.copies import Copy
from gpufleet.reconcilers.burst.copies import target as copy_target
from gpufleet.reconcilers.cache import WorkloadEntry
from gpufleet.reconcilers.drain import DrainRequest
from gpufleet.reconcilers.intent import Action, Journal
from gpufleet.reconcilers.leader import NotLeading

log = logging.getLogger(__name__)
NODE_POOL_PREFIX = "nodepool/"
# The size the journal records for a burst copy about to be deleted: it differs from the
# wanted 0 even when the copy has no replicas left, so the delete is recorded and retried.
COPY_PRESENT = -1
# Workload scales in flight at once (`batches`): the client's thread pool bounds it anyway.
WRITE_CONCURRENCY = 8


class Phase(IntEnum):
    """Node pools grow before the replicas that need the room, and shrink after the replicas
    (local and burst copies) have left, so no running pod loses its node first. Moves and
    re-applied copies keep their size: they come last, once every resize is recorded done."""

    GROW_NODES = 0
    REPLICAS = 1
    SHRINK_NODES = 2
    MOVES = 3
    REFRESH = 4


def node_pool_target(key: NodePoolKey) -> str:
    return f"{NODE_POOL_PREFIX}{key.provider}/{key.node_pool}"


def workload_target(kind: str, namespace: str, name: str) -> str:
    return f"{kind}/{namespace}/{name}"


@dataclass(frozen=True)
class ResizeNodePool:
    key: NodePoolKey
    ref: NodePoolRef
    current: int
    size: int
    # On a shrink, the nodes to remove by name (reconcilers/changes.py `removal_order`);
    # empty where the loop cannot see what runs on them: the backend then chooses.
    remove: tuple[str, ...] = ()

    @property
    def target(self) -> str:
        return node_pool_target(self.key)

    @property
    def phase(self) -> Phase:
        return Phase.GROW_NODES if self.size > self.current else Phase.SHRINK_NODES


@dataclass(frozen=True)
class ScaleWorkload:
    """Set the pool's local workload to `size`; with `drain`, the preempted replicas go
    first (reconcilers/drain.py)."""

    pool: PoolKey
    workload: WorkloadEntry
    current: int
    size: int
    drain: DrainRequest | None = None

    @property
    def target(self) -> str:
        return workload_target(self.workload.kind, self.pool.namespace, self.workload.name)

    @property
    def phase(self) -> Phase:
        return Phase.REPLICAS


@dataclass(frozen=True)
class MoveReplicas:
    """The pool keeps its size while its preempted replicas are evicted and recreated (to
    wait for new nodes): a drain, not a resize."""

    pool: PoolKey
    workload: WorkloadEntry
    drain: DrainRequest

    @property
    def current(self) -> int:
        return self.workload.replicas

    @property
    def size(self) -> int:
        return self.workload.replicas

    @property
    def target(self) -> str:
        return workload_target(self.workload.kind, self.pool.namespace, self.workload.name)

    @property
    def phase(self) -> Phase:
        return Phase.MOVES


@dataclass(frozen=True)
class ApplyCopy:
    """Apply the burst copy of the pool's workload in `provider`'s cluster at `size`; at its
    own size when the copy no longer matches the workload (a refresh)."""

    provider: str
    pool: PoolKey
    workload: WorkloadEntry
    copy: Copy | None
    current: int
    size: int

    @property
    def target(self) -> str:
        return copy_target(self.provider, self.pool.namespace, self.workload.name)

    @property
    def phase(self) -> Phase:
        return Phase.REPLICAS if self.size != self.current else Phase.REFRESH


@dataclass(frozen=True)
class DeleteCopy:
    """Delete the pool's burst copies in `provider`'s cluster."""

    provider: str
    pool: PoolKey
    copy: Copy

    current = COPY_PRESENT
    size = 0

    @property
    def target(self) -> str:
        return copy_target(self.provider, self.pool.namespace, self.copy.name)

    @property
    def phase(self) -> Phase:
        return Phase.REPLICAS


Change = ResizeNodePool | ScaleWorkload | MoveReplicas | ApplyCopy | DeleteCopy


def journaled(change: Change) -> bool:
    """A change of size goes through the journal; one at the same size is a re-application."""
    return change.size != change.current


def ordered(changes: Iterable[Change]) -> tuple[Change, ...]:
    """Phase order, then by target for a stable order."""
    return tuple(sorted(changes, key=lambda c: (c.phase, c.target)))


class Applier(Protocol):
    async def apply(self, change: Change, size: int, action_id: str) -> bool:
        """Make one change at `size` under `action_id`; True once it is done."""
        ...


async def execute(
    changes: Sequence[Change],
    applier: Applier,
    journal: Journal | None,
    now: float,
    fresh: Callable[[], object] | None = None,
) -> set[str] | None:
    """Record the resizes, apply every change in phase order (a phase's plain workload
    scales together, `batches`), record what was done; the ids done, or None when another
    writer recorded first (it acts, this replica does not).

    `fresh` (the fence's, reconcilers/leader.py) is checked before each change: driver and
    remote-cluster calls are not fenced themselves, so a term lost mid-tick stops the rest of
    the tick here (NotLeading propagates) rather than after it.

    A retried action keeps its recorded id; a re-application is named after its target and
    the tick."""
    resizes = [c for c in changes if journaled(c)]
    planned = {c.target: c.size for c in resizes}
    if journal is None:
        actions: tuple[Action, ...] | None = tuple(
            Action(f"{t}={n}@{int(now)}", t, n) for t, n in planned.items()
        )
    else:
        actions = await journal.begin(planned, {c.target: c.current for c in resizes})
    if actions is None:
        return None
    by_target = {a.target: a for a in actions}
    done: set[str] = set()

    async def one(change: Change) -> None:
        action = by_target.get(change.target) if journaled(change) else None
        if journaled(change) and action is None:
            return
        if fresh is not None:
            fresh()
        size, action_id = (
            (action.size, action.id) if action else (change.size, f"{change.target}@{int(now)}")
        )
        if await _apply(applier, change, size, action_id):
            log.info(
                "applied %s",
                action_id,
                extra={"actionId": action_id, "target": change.target, "size": size},
            )
            if action is not None:
                done.add(action.id)

    for batch in batches(ordered(changes)):
        await _together(batch, one)
    if journal is not None:
        await journal.finish(done)
    return done


def concurrent(change: Change) -> bool:
    """A plain scale of a local workload: a fenced write of its own (reconcilers/kube.py),
    independent of every other. Node pools and remote copies are not fenced, so a term
    lost mid-tick must stop them one by one; a drain keeps its own order of evictions."""
    return isinstance(change, ScaleWorkload) and change.drain is None


def batches(changes: Sequence[Change]) -> list[tuple[Change, ...]]:
    """The changes in order, with each run of `concurrent` ones in a batch of its own and
    every other change alone: a tick that scales 1,000 workloads waits on 1,000 round trips
    otherwise (about 60 s here at 1,000 pools)."""
    out: list[tuple[Change, ...]] = []
    run: list[Change] = []
    for change in changes:
        if concurrent(change) and (not run or run[-1].phase == change.phase):
            run.append(change)
            continue
        if run:
            out.append(tuple(run))
            run = []
        if concurrent(change):
            run.append(change)
        else:
            out.append((change,))
    if run:
        out.append(tuple(run))
    return out


async def _together(batch: Sequence[Change], one: Callable[[Change], Awaitable[None]]) -> None:
    """Apply a batch, WRITE_CONCURRENCY at a time; the first error (a lost term) cancels the
    rest and is raised."""
    if len(batch) == 1:
        await one(batch[0])
        return
    await side_by_side([functools.partial(one, change) for change in batch], WRITE_CONCURRENCY)


async def _apply(applier: Applier, change: Change, size: int, action_id: str) -> bool:
    try:
        return await applier.apply(change, size, action_id)
    except NotLeading:  # the term is gone: no change of this tick may follow
        raise
    except Exception:  # an applier's own bug: this change only, the rest go on
        log.exception("applying %s failed", action_id, extra={"target": change.target})
        return False
