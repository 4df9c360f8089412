"""How pools of equal priority share what is short: in rounds, never by name
(docs/preemption.md)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from gpufleet.api.provider import Role
from gpufleet.planner.placer import Placer
from gpufleet.planner.types import NodePoolKey, PoolKey

_SECONDARY = Role.SECONDARY  # bound once: an enum member read through its class is slow

# Turns in which pools of equal priority keep what runs (`share`): each turn every pool keeps
# up to 1/ROUNDS of its running replicas.
ROUNDS = 8


def stable_hash(key: PoolKey) -> int:
    """FNV-1a of the pool's key: the same in every process (unlike `hash`, which is salted).
    It orders turns only; who goes first in a turn gains at most one turn's slice."""
    return text_hash(f"{key.namespace}/{key.name}")


# Every plan orders every pool and namespace by its hash, and byte by byte that cost more
# than the rest of the ordering; the same keys come back each tick. Keyed by the pool's key
# itself, so that a lookup builds no `namespace/name` string.
_HASHES: dict[PoolKey | str, int] = {}
_HASHES_KEPT = 65536


def _cached_hash(key: PoolKey | str) -> int:
    """`stable_hash` of a pool's key, `text_hash` of a namespace."""
    value = _HASHES.get(key)
    if value is None:
        if len(_HASHES) >= _HASHES_KEPT:
            _HASHES.clear()
        value = text_hash(key) if isinstance(key, str) else stable_hash(key)
        _HASHES[key] = value
    return value


def priority_groups(
    keys: Iterable[PoolKey], priority: Callable[[PoolKey], int]
) -> list[list[PoolKey]]:
    """The pools by priority, highest first, each group of equal priority in an order no
    name can choose (a stable hash): the order equal priorities take turns in, here, in
    the simulator's scheduler and in its oracle (docs/preemption.md)."""
    by_priority: dict[int, list[PoolKey]] = {}
    for key in keys:
        by_priority.setdefault(priority(key), []).append(key)
    return [
        sorted(by_priority[p], key=lambda k: (_cached_hash(k), k))
        for p in sorted(by_priority, reverse=True)
    ]


def text_hash(text: str) -> int:
    value = 0x811C9DC5
    for byte in text.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def share(placers: list[Placer]) -> None:
    """Place a group of equal priority so that no pool gains from another's name or from
    how many pools its tenant splits its demand into (docs/preemption.md):

    1. Keep what runs, in turns: each pool keeps a slice of its running replicas per turn.
       Replicas that run all fit on the nodes they run on, so this matters only where the
       nodes no longer hold everyone (a node lost, replicas in flight): then each loses a
       share, and none evicts another (only strictly higher priority preempts: drain.py).
    2. Grow by namespace, max-min: every namespace that still wants GPUs gets the same
       amount per round (half the smallest need, so the smallest is met within a few
       rounds), spread over its pools, the first namespace of a round rotating. A pool that
       cannot use what is free (another GPU type, its data policy, its quota) is done and
       holds no one back."""
    if len(placers) == 1:
        placers[0].keep()
        placers[0].add()
        return
    _keep_in_turns(placers)
    _grow_by_namespace(placers)


def _keep_in_turns(placers: list[Placer]) -> None:
    keeping = [p.keeping for p in placers]
    active = [p for p, k in zip(placers, keeping, strict=True) if k]
    for placer, k in zip(placers, keeping, strict=True):
        if not k:
            placer.keep()  # nothing to keep: settles its state
    free = _free(active)
    if all(free):
        # Turns decide who loses where not all fit; where all do, each keeps all it runs
        # in whatever order (ROUNDS turns of every pool cost a fifth of a quiet plan).
        for placer in active:
            placer.keep(fitting=True)
        return
    steps = [max(1, math.ceil(sum(p.current.values()) / ROUNDS)) for p in active]
    # A free pool keeps all at once, and still takes its turns as it would have, keeping
    # nothing, until the turn it would have finished in: the others' order stays the same.
    rounds: list[int | None] = [None] * len(active)
    for j, placer in enumerate(active):
        if free[j]:
            asked = sum(n for _, n in placer.keep_asks() or ())
            rounds[j] = max(1, math.ceil(asked / steps[j]))
            placer.keep(fitting=True)
    start = 0
    while active:
        count = len(active)
        for i in range(count):
            j = (start + i) % count
            if rounds[j] is None:
                active[j].keep(steps[j])
        start += 1
        still = [
            i
            for i, p in enumerate(active)
            if (p.keeping if rounds[i] is None else start < (rounds[i] or 0))
        ]
        if len(still) < count:  # a set: a large group would test every pool against each
            left = set(still)
            for i, placer in enumerate(active):
                if i not in left and rounds[i] is None:
                    placer.keep(0)  # done keeping: settles its state
        active = [active[i] for i in still]
        steps, rounds = [steps[i] for i in still], [rounds[i] for i in still]


def _free(placers: list[Placer]) -> list[bool]:
    """Whether each placer keeps all it would keep, whatever the others do and in whatever
    order: no power budget can bind, its burst room holds its asks, and it asks only node
    pools where everyone's asks fit. None is free where what one would ask cannot be told
    (`keep_asks`)."""
    if not placers:
        return []
    asks = [placer.keep_asks() for placer in placers]
    if _free_with(placers, asks) == [True] * len(placers):
        return [True] * len(placers)  # no one is bound: each asks what keep_asks says
    # One that is bound asks its next node pools for what it could not keep: count the
    # most each could ask anywhere.
    return _free_with(placers, [placer.keep_reach() for placer in placers])


def _free_with(
    placers: list[Placer], asks: list[list[tuple[NodePoolKey, int]] | None]
) -> list[bool]:
    ledger = placers[0].ledger
    slots, watts = ledger.slots, bool(ledger.budget_used)  # no budget: watts count for none
    counted = []
    for placer, theirs in zip(placers, asks, strict=True):
        if theirs is None:
            return [False] * len(placers)
        gpus = placer.gpus
        counted += [(slots[k], gpus, n, placer.busy(k) if watts else None) for k, n in theirs]
    found = ledger.fitting(counted)
    if found is None:
        return [False] * len(placers)
    fitting, every_slot_fits = found
    # Most often every slot asked fits and none is a secondary's: then all are free, without
    # a look at each pool's asks.
    if every_slot_fits and not any(slots[k].provider.role == _SECONDARY for k in fitting):
        return [True] * len(placers)
    return [
        all(k in fitting for k, _ in theirs or ()) and placer.keep_asks_fit_burst(theirs or [])
        for placer, theirs in zip(placers, asks, strict=True)
    ]


# Rounds after which the namespaces still short take the rest one after another: a bound on
# the cost of a group of many namespaces whose needs differ widely.
MAX_ROUNDS = 32


def _grow_by_namespace(placers: list[Placer]) -> None:
    groups: dict[str, list[Placer]] = {}
    for placer in placers:
        if not placer.done:
            groups.setdefault(placer.namespace, []).append(placer)
    order = sorted(groups, key=lambda ns: (_cached_hash(ns), ns))
    rounds = 0
    while order:
        needs = [sum(p.remaining * p.gpus for p in groups[ns] if not p.done) for ns in order]
        alone = len(order) == 1 or rounds >= MAX_ROUNDS
        quantum = None if alone else max(1, math.ceil(min(needs) / 2))
        for i in range(len(order)):
            _give(groups[order[(rounds + i) % len(order)]], quantum, rounds)
        order = [ns for ns in order if any(not p.done for p in groups[ns])]
        rounds += 1


def _give(pools: list[Placer], gpus: int | None, turn: int) -> None:
    """Up to `gpus` more GPUs to a namespace's pools (None: all they want), a replica's
    worth at least, spread over them in turn."""
    active = [p for p in pools if not p.done]
    if gpus is None:
        for placer in active:
            placer.add()
        return
    left = gpus
    while left > 0 and active:
        placed_any = False
        count = len(active)
        for i in range(count):
            placer = active[(turn + i) % count]
            if left <= 0:
                break
            share = max(1, math.ceil(left / (placer.gpus * count)))
            placed = placer.add(share)
            left -= placed * placer.gpus
            placed_any = placed_any or placed > 0
        active = [p for p in active if not p.done]
        if not placed_any:
            break
