"""How one pool's replicas are placed on its candidate node pools, step by step (`Placer`).

Keep what runs, then fill free GPUs on existing nodes, then grow new nodes, burst within its
cap; the candidates and their order come from planner/placement.py. A pool alone is placed
in one step; pools of equal priority interleave smaller steps (planner/sharing.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gpufleet.api.pool import ServingPoolSpec
from gpufleet.api.provider import Role
from gpufleet.planner.ledger import Ledger, Limit
from gpufleet.planner.placement import Candidates, Progress
from gpufleet.planner.power import NAMEPLATE_ONLY, PoolDraw, busy_watts
from gpufleet.planner.types import NodePoolKey, Note, Reason

# An enum member read through its class costs several times a global's on Python 3.11 (the
# enum metaclass defines __getattr__): members read for every pool of every plan are bound once.
_SECONDARY = Role.SECONDARY

_NO_COUNTS: Mapping[NodePoolKey, int] = MappingProxyType({})

_LIMIT_REASON = {
    Limit.NODE_POOL_MAX: Reason.LIMITED_BY_NODE_POOL_MAX,
    Limit.QUOTA: Reason.LIMITED_BY_QUOTA,
    Limit.POWER: Reason.LIMITED_BY_POWER,
    Limit.BACKOFF: Reason.CAPACITY_BACKOFF,
    Limit.HELD: Reason.PROVIDER_UNAVAILABLE,
}


# Not frozen: one is built for every pool each tick and read once, and a frozen dataclass
# sets each field through object.__setattr__ (several times the cost on Python 3.11).
@dataclass
class Placement:
    placements: dict[NodePoolKey, int]
    unplaced: int
    burst: int
    notes: tuple[Note, ...]
    # Current replicas per node pool that no longer fit on its existing nodes because pools
    # placed earlier (higher priority) took the room; some may be placed again on new nodes.
    preempted: dict[NodePoolKey, int] = field(default_factory=dict)
    # Replicas of `want` not placed because new nodes would come after the need has passed.
    held: int = 0


def _names(keys: set[str] | list[str]) -> str:
    ordered = sorted(keys)
    more = f" and {len(ordered) - 3} more" if len(ordered) > 3 else ""
    return ", ".join(ordered[:3]) + more


class Placer:
    """Places one pool's `want` replicas in steps: `keep` what runs, then `add` up to a
    number more at a time (fill free GPUs on existing nodes first, then grow), then
    `result`. One `add(None)` after `keep` is the whole placement of a pool on its own;
    pools of equal priority interleave smaller steps (planner/sharing.py).

    New nodes take no more than `grow_to` replicas in all (None: no bound): the rest of
    `want` runs only where GPUs exist and is not short of capacity (`Placement.held`).
    `draw`: what the pool's busy GPUs count at (`power.pool_draw`; default the nameplate).
    `namespace`: where its GPUs count against `Ledger.namespace_gpus`; the replicas that
    run now are counted there already (`current`), so only more than those are charged.
    """

    def __init__(
        self,
        ledger: Ledger,
        pool: ServingPoolSpec,
        want: int,
        current: Mapping[NodePoolKey, int],
        options: Candidates,
        progress: Progress,
        grow_to: int | None = None,
        draw: PoolDraw = NAMEPLATE_ONLY,
        namespace: str = "",
    ) -> None:
        self.ledger, self.pool, self.want, self.current = ledger, pool, want, current
        self.options, self.progress, self.grow_to, self.draw = options, progress, grow_to, draw
        self.namespace = namespace
        self.gpus = pool.gpus_per_replica
        self.placed: dict[NodePoolKey, int] = {}
        self.total = 0  # replicas placed so far
        self.running = sum(current.values())  # already counted against the namespace quota
        # Created when first needed, as are `displaced` and `kept_count`: most pools have
        # nothing to put in them, and a priority group's placers all live until it is placed.
        self.limits: dict[Reason, set[str]] | None = None
        self.burst_room = pool.burst.max_replicas if pool.burst.max_replicas is not None else want
        self.burst = 0
        self.displaced: dict[NodePoolKey, int] | None = None
        self.kept_count: Mapping[NodePoolKey, int] = _NO_COUNTS
        self.done = want <= 0
        self.quota_short = False  # the namespace's quota stopped an addition
        # (node pool, replicas still to keep) in preference order; None before `keep`.
        self._to_keep: list[tuple[NodePoolKey, int]] | None = None
        self._budget = 0  # what the step under way may still place
        self._kept_keys: list[NodePoolKey] | None = None  # `_kept`, once worked out

    @property
    def remaining(self) -> int:
        return self.want - self.total

    def _limited(self, reason: Reason, key: NodePoolKey) -> None:
        if self.limits is None:
            self.limits = {}
        self.limits.setdefault(reason, set()).add(str(key))

    def _take(
        self,
        key: NodePoolKey,
        count: int,
        new_nodes: bool,
        keep: bool = False,
    ) -> tuple[bool, Reason | None]:
        """Place up to `count` on one node pool; say whether it is now full, and why."""
        slot = self.ledger.slots[key]
        if slot.held and not keep:
            # An unreachable provider can neither start nor stop replicas: hold, never add.
            self._limited(Reason.PROVIDER_UNAVAILABLE, key)
            return True, Reason.PROVIDER_UNAVAILABLE
        secondary = slot.provider.role == _SECONDARY
        if secondary:
            count = min(count, self.burst_room - self.burst)
            if count <= 0:
                self._limited(Reason.LIMITED_BY_BURST_MAX, key)
                return False, None
        asked = min(count, self._budget)
        busy = self.busy(key)  # None: nameplate
        fitted, limit = self.ledger.fit(slot, self.gpus, asked, new_nodes, busy)
        reason = _LIMIT_REASON[limit] if limit is not None else None
        if reason is not None:
            self._limited(reason, key)
        if keep and limit is None and fitted < asked:
            # The existing nodes are full with replicas of pools placed before this one.
            if self.displaced is None:
                self.displaced = {}
            self.displaced[key] = asked - fitted
        if fitted:
            self.ledger.commit(slot, self.gpus, fitted, busy)
            self.placed[key] = self.placed.get(key, 0) + fitted
            self.total += fitted
            self._budget -= fitted
            if secondary:
                self.burst += fitted
        return fitted < asked, reason

    def keep(self, count: int | None = None, *, fitting: bool = False) -> None:
        """Keep up to `count` more of the replicas that run (None: all) where the pool may
        still run, as far as they fit, most preferred node pools first. Pools of equal
        priority keep in turns (planner/sharing.py), so none keeps what the others run.
        `fitting` (all at once, `count` None): all its asks fit as they are, whatever the
        others keep (`sharing._free`), so the ledger is not asked what fits: it would say
        all of it (at 1,000 pools spread over 7 node pools each, those checks were a fifth
        of a quiet plan: benchmarks/loop_tick.py)."""
        if self._to_keep is None:
            self._start_keep()
        assert self._to_keep is not None
        if fitting:
            assert count is None, "a pool whose asks all fit keeps all at once"
            self._keep_fitting()
            return
        budget = self.remaining if count is None else min(count, self.remaining)
        for index, (key, left) in enumerate(self._to_keep):
            if budget <= 0:
                break
            if left <= 0:
                continue
            asked = min(left, budget)
            self._budget = asked
            before = self.total
            self._take(key, asked, new_nodes=False, keep=True)
            fitted = self.total - before
            budget -= fitted
            if fitted < asked:
                # The existing nodes are full: with pools placed before this one (higher
                # priority) or beside it (equal, in turns); the rest of them go.
                if self.displaced is not None and key in self.displaced:
                    self.displaced[key] = min(left, self.remaining + fitted) - fitted
                self._to_keep[index] = (key, 0)
            else:
                self._to_keep[index] = (key, left - fitted)
        self._budget = 0
        if count is None or not self.keeping:
            self._end_keep()

    def _keep_fitting(self) -> None:
        """`keep()` of all that runs, where all of it fits (`sharing._free`): what `_take`
        would do, without the checks that can bind none of these asks. Most pools of a quiet
        fleet keep this way every tick."""
        assert self._to_keep is not None
        ledger, slots, placed, gpus = self.ledger, self.ledger.slots, self.placed, self.gpus
        budget = self.remaining
        for index, (key, left) in enumerate(self._to_keep):
            if budget <= 0:
                break
            if left <= 0:
                continue
            asked = min(left, budget)
            slot = slots[key]
            secondary = slot.provider.role == _SECONDARY
            if secondary:
                room = self.burst_room - self.burst
                if room <= 0:
                    self._limited(Reason.LIMITED_BY_BURST_MAX, key)
                    self._to_keep[index] = (key, 0)
                    continue
                fitted = min(asked, room)
            else:
                fitted = asked
            ledger.commit(slot, gpus, fitted, self.busy(key))
            placed[key] = placed.get(key, 0) + fitted
            self.total += fitted
            budget -= fitted
            if secondary:
                self.burst += fitted
            self._to_keep[index] = (key, 0 if fitted < asked else left - fitted)
        self._end_keep()

    def keep_asks(self) -> list[tuple[NodePoolKey, int]] | None:
        """What `keep()` would ask each node pool for, were nothing to bind it; None where
        that cannot be told without keeping (an unreachable provider's replicas are held
        first, unasked). Changes nothing."""
        pending = self._pending()
        if pending is None:
            return None
        asks, budget = [], self.remaining
        for key, left in pending:
            if budget <= 0:
                break
            if left > 0:
                ask = min(left, budget)
                asks.append((key, ask))
                budget -= ask
        return asks

    def keep_reach(self) -> list[tuple[NodePoolKey, int]] | None:
        """The most `keep()` could ask each node pool for, whatever binds it: what one node
        pool cannot take it asks the next for. None where `keep_asks` is."""
        pending = self._pending()
        if pending is None:
            return None
        budget = self.remaining
        return [(key, min(left, budget)) for key, left in pending if left > 0 and budget > 0]

    def _pending(self) -> list[tuple[NodePoolKey, int]] | None:
        """What is still to keep on each node pool, most preferred first; None where an
        unreachable provider's replicas would be held first, unasked."""
        if self._to_keep is not None:
            return self._to_keep
        kept, slots, current = self._kept(), self.ledger.slots, self.current
        if any(slots[k].held and current[k] > 0 for k in kept):
            return None
        return [(k, current[k]) for k in kept if current[k] > 0]

    def _kept(self) -> list[NodePoolKey]:
        """The node pools the pool runs on that it may still run on, most preferred first."""
        if self._kept_keys is None:  # asked up to three times a plan (asks, reach, keep)
            rank = self.options.rank
            self._kept_keys = sorted((k for k in self.current if k in rank), key=rank.__getitem__)
        return self._kept_keys

    def keep_asks_fit_burst(self, asks: list[tuple[NodePoolKey, int]]) -> bool:
        """Whether the asks on secondary providers stay within the pool's burst room."""
        slots = self.ledger.slots
        burst = sum(n for key, n in asks if slots[key].provider.role == _SECONDARY)
        return burst == 0 or self.burst + burst <= self.burst_room

    def busy(self, key: NodePoolKey) -> float | None:
        """What a busy GPU of the pool adds on that node pool (None: the nameplate)."""
        return busy_watts(self.draw, self.ledger.slots[key].spec) if self.draw else None

    @property
    def keeping(self) -> bool:
        """Whether replicas that run are still to be kept (`keep` in turns)."""
        if self._to_keep is None:
            return self.remaining > 0 and any(self.current.values())
        return self.remaining > 0 and any(left > 0 for _, left in self._to_keep)

    def _start_keep(self) -> None:
        if not self.current:  # nothing runs: nothing to keep, nor to sort
            self._to_keep = []
            return
        current, ledger = self.current, self.ledger
        kept = self._kept()
        # An unreachable provider can be neither scaled down nor watched: its replicas stay.
        for key in kept:
            slot = ledger.slots[key]
            if slot.held and current[key] > 0:
                ledger.commit(slot, self.gpus, current[key])  # held: at full load already
                self.placed[key] = current[key]
                self.total += current[key]
                self._limited(Reason.PROVIDER_UNAVAILABLE, key)
        self._to_keep = [(k, current[k]) for k in kept if k not in self.placed and current[k] > 0]

    def _end_keep(self) -> None:
        if self.displaced:
            self.kept_count = {key: self.placed.get(key, 0) for key in self.displaced}
        self.done = self.remaining <= 0

    def _quota_room(self) -> int | None:
        """Replicas the namespace's quota lets the pool still place (None: no quota)."""
        room = self.ledger.namespace_room(self.namespace)
        if room is None:
            return None
        return max(0, self.running - self.total) + room // self.gpus

    def add(self, count: int | None = None) -> int:
        """Place up to `count` more (None: all it still wants); what it placed. A step that
        places less than it asked sets `done`: the ledger only fills, so no later step could."""
        if self.done:
            return 0
        budget = self.remaining if count is None else min(count, self.remaining)
        room = self._quota_room()
        if room is not None and room < budget:
            budget, self.quota_short = room, True
        before = self.total
        self._budget = budget
        progress = self.progress
        for new_nodes, order in ((False, self.options.fill), (True, self.options.grow)):
            if new_nodes and self.grow_to is not None:
                self._budget = min(self._budget, max(0, self.grow_to - self.total))
            index = progress.find(new_nodes, 0)
            while index < len(order) and self._budget > 0:
                full, reason = self._take(order[index], self._budget, new_nodes)
                if full:
                    progress.close(new_nodes, index, order[index], reason)
                index = progress.find(new_nodes, index + 1)
        self._budget = 0
        placed = self.total - before
        beyond = max(0, self.total - max(self.running, before))
        self.ledger.charge_namespace(self.namespace, beyond * self.gpus)
        if placed < budget or self.quota_short or self.remaining <= 0:
            self.done = True
        return placed

    def result(self) -> Placement:
        pool, options, placed = self.pool, self.options, self.placed
        short = max(0, self.remaining)
        held = 0
        if self.grow_to is not None:
            held = min(short, max(0, self.want - self.grow_to))
        remaining = short - held
        if remaining <= 0 and self.limits is None and not self.burst and not self.displaced:
            # Placed in full, nothing to say: what most pools get, without the checks below.
            return Placement({k: v for k, v in placed.items() if v}, remaining, 0, (), {}, held)
        limits = self.limits if self.limits is not None else {}
        if remaining > 0:
            for reason, keys in self.progress.full.items():
                limits.setdefault(reason, set()).update(keys)
        notes = [
            Note(reason, f"{reason.value} on {_names(limits[reason])}") for reason in sorted(limits)
        ]
        if remaining > 0 and self.quota_short:
            # First: the quota, not the capacity it left unused, is why these are short.
            quota = self.ledger.namespace_gpus.get(self.namespace, 0)
            used = self.ledger.namespace_used.get(self.namespace, 0)
            notes.insert(
                0,
                Note(
                    Reason.LIMITED_BY_NAMESPACE_QUOTA,
                    f"namespace {self.namespace}'s ResourceQuota leaves its pools {quota} GPUs "
                    f"(requests.nvidia.com/gpu, net of other pods); they hold or were given "
                    f"{used}: {remaining} more replicas of {self.gpus} GPUs would be refused",
                ),
            )
        if remaining > 0 and options.blocked:
            notes.append(
                Note(
                    Reason.BURST_BLOCKED_BY_DATA_POLICY,
                    "no burst to " + "; ".join(f"{name}: {why}" for name, why in options.blocked),
                )
            )
        if remaining > 0 and options.denied:
            notes.append(
                Note(
                    Reason.BURST_BLOCKED_BY_NAMESPACE_POLICY,
                    "not allowed to " + "; ".join(f"{name}: {why}" for name, why in options.denied),
                )
            )
        if remaining > 0 and options.burst_disabled:
            notes.append(
                Note(Reason.BURST_DISABLED, "secondary providers exist but burst.enabled is false")
            )
        if remaining > 0 and not options.fill:
            notes.append(
                Note(
                    Reason.NO_MATCHING_NODE_POOL,
                    f"no node pool offers {pool.gpu_types} with "
                    f"{self.gpus} GPUs per node under the data policy",
                )
            )
        if self.burst > 0:
            notes.append(Note(Reason.BURST_ACTIVE, f"{self.burst} replicas on secondary providers"))
        # Replicas placed there again go to new nodes of the same node pool: they still leave
        # the existing ones now (a move), or the higher-priority pool waits a boot for them.
        displaced = self.displaced if self.displaced is not None else {}
        if displaced:
            moved = sum(min(n, placed.get(k, 0) - self.kept_count[k]) for k, n in displaced.items())
            notes.append(
                Note(
                    Reason.PREEMPTED,
                    f"{sum(displaced.values())} replicas on {_names([str(k) for k in displaced])} "
                    "yield to higher-priority pools: their existing nodes are full"
                    + (f"; {moved} of them restart on new nodes" if moved else ""),
                )
            )
        return Placement(
            {k: v for k, v in placed.items() if v},
            remaining,
            self.burst,
            tuple(notes),
            displaced,
            held,
        )


def place(
    ledger: Ledger,
    pool: ServingPoolSpec,
    want: int,
    current: Mapping[NodePoolKey, int],
    options: Candidates,
    progress: Progress,
    grow_to: int | None = None,
    draw: PoolDraw = NAMEPLATE_ONLY,
    namespace: str = "",
) -> Placement:
    """Place `want` replicas of one pool on its own: keep, then fill, then grow (`Placer`)."""
    placer = Placer(ledger, pool, want, current, options, progress, grow_to, draw, namespace)
    placer.keep()
    placer.add()
    return placer.result()
