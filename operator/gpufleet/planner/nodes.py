"""Node pools across ticks: capacity back-off, the scale-down delay, and their plans.

A node that demand stops needing stays for the node pool's scale-down delay (`Catalog.delays`;
by default its bootSeconds: one needed again within its boot time costs less kept than
booted again), and serves warm spares meanwhile, except for the delay's last
`PROBE_SECONDS` (at most half of it): the spares leave first, so that the replicas demand
needs are seen carrying the load alone while the node can still take the others back in a
model load. Spares that served until the node went made every scale-down a cliff: load
they carried that the model did not count (work heavier than declared) showed only once
the node was gone, and its replacement cost a boot.

The planner remembers, per node pool, the nodes its demand needed lately as a falling
sequence of (until, nodes), the current need last: the most needed within the delay is its
first entry, and the sequence stays short however long the delay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from gpufleet.planner.ledger import Ledger
from gpufleet.planner.types import (
    Backoff,
    NodePoolKey,
    NodePoolPlan,
    Note,
    Reason,
    Settings,
    Snapshot,
)

Needs = Mapping[NodePoolKey, tuple[tuple[float, int], ...]]

# Long enough for a scrape, the service estimate's busy window (planner/service.py) and a
# plan to see the remaining replicas fall short.
PROBE_SECONDS = 120.0


def update_backoffs(
    previous: Mapping[NodePoolKey, Backoff], snapshot: Snapshot, now: float, settings: Settings
) -> dict[NodePoolKey, Backoff]:
    """Capacity back-off per node pool: doubling from the initial period up to the maximum."""
    result: dict[NodePoolKey, Backoff] = {}
    # Only node pools in back-off or with an error can have one: not every node pool.
    erred = {k for k, o in snapshot.node_pools.items() if o.last_error is not None}
    for key in sorted(erred.union(previous)):
        prior = previous.get(key)
        observed = snapshot.node_pools.get(key)
        error = observed.last_error if observed else None
        if error is not None and (prior is None or error.time > prior.error_time):
            recent = prior is not None and error.time < prior.until + settings.backoff_max_seconds
            failures = prior.failures + 1 if prior is not None and recent else 1
            period = min(
                settings.backoff_initial_seconds * 2 ** (failures - 1), settings.backoff_max_seconds
            )
            result[key] = Backoff(
                until=error.time + period, failures=failures, error_time=error.time
            )
        elif prior is not None and now < prior.until + settings.backoff_max_seconds:
            result[key] = prior
    return result


def recent_needs(
    previous: Needs, delays: Mapping[NodePoolKey, float], now: float
) -> dict[NodePoolKey, tuple[tuple[float, int], ...]]:
    """The needs still within each node pool's delay (the current one never expires)."""
    out = {}
    for key, entries in previous.items():
        delay = delays.get(key, 0.0)
        if now - entries[0][0] >= delay:  # the oldest expired: the rest may have too
            entries = tuple(e for e in entries if now - e[0] < delay)
            if not entries:
                continue
        out[key] = entries
    return out


def kept_nodes(
    needs: Needs, delays: Mapping[NodePoolKey, float], now: float
) -> dict[NodePoolKey, tuple[int, int]]:
    """Per node pool with needs still within its delay (`recent_needs`): the nodes kept,
    and of those the nodes spares may fill (needed until more than the probe ago)."""
    out = {}
    for key, entries in needs.items():
        delay = delays.get(key, 0.0)
        warm_after = now - (delay - min(PROBE_SECONDS, delay / 2))
        # The last entry never ends (until +inf): it is the default only for a malformed state.
        warm = next((n for until, n in entries if until > warm_after), entries[-1][1])
        out[key] = (entries[0][1], warm)
    return out


def record_needs(
    needs: Needs, ledger: Ledger, delays: Mapping[NodePoolKey, float], now: float
) -> dict[NodePoolKey, tuple[tuple[float, int], ...]]:
    """Add what demand needs now, as the last entry (time +inf: it holds while it lasts);
    a need it replaces is remembered until now. Unchanged needs reuse their entries, so a
    steady fleet allocates nothing here."""
    out = {}
    for key, slot in ledger.slots.items():
        previous = needs.get(key)
        needed = slot.needed
        if (not previous and needed <= slot.spec.min_nodes) or delays.get(key, 0.0) <= 0:
            continue  # nothing above minNodes to remember
        if previous and previous[-1][1] == needed:
            out[key] = previous
            continue
        head: tuple[tuple[float, int], ...] = ()
        if previous:
            head, last = previous[:-1], previous[-1][1]
            if last > needed:  # falling: the old need counts until now
                head = (*head, (now, last))
            else:  # rising: what it covers goes
                head = tuple(e for e in head if e[1] > needed)
        if needed > slot.spec.min_nodes or head:
            out[key] = (*head, (math.inf, needed))
    return out


def node_plans(
    ledger: Ledger,
    snapshot: Snapshot,
    needs: Mapping[NodePoolKey, tuple[tuple[float, int], ...]],
) -> dict[NodePoolKey, NodePoolPlan]:
    plans = {}
    observed_nodes = snapshot.node_pools
    for key, slot in ledger.slots.items():
        observed = observed_nodes.get(key)
        current = observed.target_nodes if observed else 0
        nodes = slot.nodes
        if not (slot.held or slot.backoff or slot.kept):  # no notes: most node pools
            plans[key] = NodePoolPlan(key, nodes, current, slot.gpus_allocated, ())
            continue
        notes: list[Note] = []
        if slot.held:
            notes.append(
                Note(
                    Reason.PROVIDER_UNAVAILABLE,
                    f"{key.provider} unreachable: holding {current} nodes",
                )
            )
        if slot.backoff:
            notes.append(
                Note(
                    Reason.CAPACITY_BACKOFF,
                    f"capacity error: no growth beyond {slot.existing_nodes} ready nodes",
                )
            )
        if slot.kept and nodes == slot.kept and not slot.held:
            entries = needs.get(key)
            needed = max(entries[-1][1] if entries else nodes, slot.spec.min_nodes)
            if nodes > needed:
                probing = nodes - max(slot.warm, needed, slot.spec.min_nodes)
                probe = (
                    f"; {probing} without spares, to see the rest carry the load before they go"
                    if probing > 0
                    else ""
                )
                notes.append(
                    Note(
                        Reason.SCALE_DOWN_DELAYED,
                        f"keeping {nodes} nodes where demand needs {needed}: "
                        f"within the scale-down delay{probe}",
                    )
                )
        plans[key] = NodePoolPlan(key, nodes, current, slot.gpus_allocated, tuple(notes))
    return plans
