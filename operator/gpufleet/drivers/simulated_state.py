"""The simulated cloud's state and its pure rules: ConfigMap encoding and the plan.

The simulated cloud keeps its state in one ConfigMap per provider, `gpufleet-sim-<provider>`
in the driver's namespace (default gpufleet-system; created on the first write), so that a
new driver instance (an operator restart, a second replica) sees what the last one did.
Per node pool (keys prefixed by the pool's name) the driver owns:

    <pool>.targetSize    decimal integer: the size last asked for (absent: never set, the
                         cloud adopts whatever Nodes it finds)
    <pool>.pending       JSON list of {"name", "readyAt" (RFC 3339 UTC), "actionId"}:
                         launched nodes whose Node object appears once readyAt has passed
    <pool>.deleting      JSON list of Node names chosen for deletion, recorded before the
                         deletes so a crash or a second replica cannot pick other victims
    <pool>.nextOrdinal   decimal integer: the number in the next node's name
    <pool>.lastActionId  the action id of the last call that changed the pool (audit)

and people or tests own the failure knobs, which the driver reads and never writes:

    <pool>.failWith      InsufficientCapacity | QuotaExceeded: every scale-up fails so
    <pool>.capacityNodes decimal integer: the most nodes the cloud grants; a larger size
                         is granted up to it and raises InsufficientCapacity

for example `kubectl -n gpufleet-system patch configmap gpufleet-sim-gpu-de --type merge
-p '{"data":{"h100-fra1.failWith":"InsufficientCapacity"}}'`; an empty value clears a knob.
The provider's `gpuQuota`, if set, is enforced too: a scale-up past it raises QuotaExceeded.

Nothing here does I/O or reads a clock: `now` is a parameter.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from gpufleet.drivers.base import (
    CapacityError,
    DriverError,
    InsufficientCapacity,
    QuotaExceeded,
)

TARGET_SIZE = "targetSize"
PENDING = "pending"
DELETING = "deleting"
NEXT_ORDINAL = "nextOrdinal"
LAST_ACTION_ID = "lastActionId"
FAIL_WITH = "failWith"
CAPACITY_NODES = "capacityNodes"
DRIVER_KEYS = (TARGET_SIZE, PENDING, DELETING, NEXT_ORDINAL, LAST_ACTION_ID)
FAILURES: dict[str, type[CapacityError]] = {
    "InsufficientCapacity": InsufficientCapacity,
    "QuotaExceeded": QuotaExceeded,
}
# Node names stay within 63 characters so they are valid hostname label values too.
_NAME_BASE_MAX = 48


class InvalidSimulation(DriverError):
    """The ConfigMap holds a value the simulated cloud cannot read; a person must fix it."""

    reason = "InvalidSimulation"
    transient = False


def key(pool: str, field: str) -> str:
    return f"{pool}.{field}"


@dataclass(frozen=True)
class Pending:
    """A launched node that is still booting."""

    name: str
    ready_at: float
    action_id: str = ""


@dataclass(frozen=True)
class PoolState:
    """What the simulated cloud records for one node pool."""

    target_size: int | None = None
    pending: tuple[Pending, ...] = ()
    deleting: tuple[str, ...] = ()
    next_ordinal: int = 0
    last_action_id: str = ""


@dataclass(frozen=True)
class Knobs:
    """Failure injection for one node pool."""

    fail_with: str | None = None
    capacity_nodes: int | None = None


@dataclass(frozen=True)
class ObservedNode:
    """A Node of the pool as listed from the API server."""

    name: str
    ordinal: int = -1
    ready: bool = False
    pods: int = 0


@dataclass(frozen=True)
class Plan:
    """The pool's next state and what to do to the cluster to match it."""

    state: PoolState
    create: tuple[Pending, ...]
    delete: tuple[str, ...]


def _timestamp(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _integer(data: Mapping[str, str], name: str) -> int | None:
    raw = data.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidSimulation(f"ConfigMap key {name} must be a non-negative integer")
    return value


def _json_list(data: Mapping[str, str], name: str) -> list[Any]:
    raw = data.get(name)
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, list):
        raise InvalidSimulation(f"ConfigMap key {name} must be a JSON list")
    return value


def decode(data: Mapping[str, str], pool: str) -> PoolState:
    try:
        pending = tuple(
            Pending(str(p["name"]), _seconds(str(p["readyAt"])), str(p.get("actionId", "")))
            for p in _json_list(data, key(pool, PENDING))
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InvalidSimulation(
            f"ConfigMap key {key(pool, PENDING)} needs name and readyAt in every entry"
        ) from None
    return PoolState(
        target_size=_integer(data, key(pool, TARGET_SIZE)),
        pending=pending,
        deleting=tuple(str(n) for n in _json_list(data, key(pool, DELETING))),
        next_ordinal=_integer(data, key(pool, NEXT_ORDINAL)) or 0,
        last_action_id=data.get(key(pool, LAST_ACTION_ID), ""),
    )


def encode(state: PoolState, pool: str) -> dict[str, str]:
    """The driver-owned keys of one pool; an unset target stays absent."""
    data = {
        key(pool, PENDING): json.dumps(
            [
                {"name": p.name, "readyAt": _timestamp(p.ready_at), "actionId": p.action_id}
                for p in state.pending
            ],
            separators=(",", ":"),
        ),
        key(pool, DELETING): json.dumps(list(state.deleting), separators=(",", ":")),
        key(pool, NEXT_ORDINAL): str(state.next_ordinal),
        key(pool, LAST_ACTION_ID): state.last_action_id,
    }
    if state.target_size is not None:
        data[key(pool, TARGET_SIZE)] = str(state.target_size)
    return data


def merge(data: Mapping[str, str], state: PoolState, pool: str) -> dict[str, str]:
    """`data` with the pool's driver-owned keys replaced; knobs and other pools kept."""
    merged = {k: v for k, v in data.items() if k not in {key(pool, f) for f in DRIVER_KEYS}}
    merged.update(encode(state, pool))
    return merged


def decode_knobs(data: Mapping[str, str], pool: str) -> Knobs:
    fail_with = data.get(key(pool, FAIL_WITH), "").strip() or None
    if fail_with is not None and fail_with not in FAILURES:
        raise InvalidSimulation(
            f"ConfigMap key {key(pool, FAIL_WITH)} must be one of {', '.join(FAILURES)}"
        )
    return Knobs(fail_with, _integer(data, key(pool, CAPACITY_NODES)))


def node_name(prefix: str, pool: str, ordinal: int) -> str:
    """`<prefix>-<pool>-<ordinal>`, shortened with a hash when the base is long."""
    base = f"{prefix}-{pool}"
    if len(base) > _NAME_BASE_MAX:
        digest = hashlib.sha256(base.encode()).hexdigest()[:8]
        base = f"{base[: _NAME_BASE_MAX - 9].rstrip('-.')}-{digest}"
    return f"{base}-{ordinal}"


def grant(current: int, requested: int, knobs: Knobs, quota_nodes: int | None) -> int:
    """The size the cloud grants for a request; the caller raises when it is short.

    Shrinking always succeeds. An injected failure or the quota rejects the whole
    request, as clouds do; missing capacity grants what there is, as a partly filled
    launch does, but never takes away nodes the pool already has.
    """
    if requested <= current:
        return requested
    if knobs.fail_with is not None:
        raise FAILURES[knobs.fail_with](
            f"the simulated cloud is set to fail scale-ups with {knobs.fail_with}"
        )
    if quota_nodes is not None and requested > quota_nodes:
        raise QuotaExceeded(f"the provider's GPU quota allows {quota_nodes} nodes in this pool")
    if knobs.capacity_nodes is None:
        return requested
    return max(current, min(requested, knobs.capacity_nodes))


def choose_deletions(live: Sequence[ObservedNode], count: int) -> list[str]:
    """Nodes to remove: idle ones (no pods bound) first, then the newest."""
    ranked = sorted(live, key=lambda n: (n.pods > 0, -n.ordinal, n.name))
    return [n.name for n in ranked[: max(count, 0)]]


def live_nodes(state: PoolState, nodes: Sequence[ObservedNode]) -> list[ObservedNode]:
    return [n for n in nodes if n.name not in state.deleting]


def plan(
    state: PoolState,
    nodes: Sequence[ObservedNode],
    *,
    now: float,
    boot_seconds: int,
    name_for: Callable[[int], str],
) -> Plan:
    """Reconciles launches and deletions with the target; level-based, so it is safe to
    run on every call. Pending entries stay until their Node is observed, so a crash
    between recording and creating loses nothing."""
    present = {n.name for n in nodes}
    deleting = tuple(n for n in state.deleting if n in present)
    live = [n for n in nodes if n.name not in deleting]
    pending = [p for p in state.pending if p.name not in present]
    next_ordinal = state.next_ordinal
    # An unset target adopts what is there: a lost record never deletes a fleet.
    target = state.target_size if state.target_size is not None else len(live) + len(pending)
    missing = target - len(live) - len(pending)
    if missing > 0:
        taken = present | {p.name for p in pending}
        ordinal = max([next_ordinal, *(n.ordinal + 1 for n in nodes)])
        for _ in range(missing):
            while name_for(ordinal) in taken:
                ordinal += 1
            name = name_for(ordinal)
            taken.add(name)
            pending.append(Pending(name, now + boot_seconds, state.last_action_id))
            ordinal += 1
        next_ordinal = ordinal
    elif missing < 0:
        # Cancelling a launch is cheaper than deleting a node: the furthest from ready go
        # first, then running nodes.
        cancel = {
            p.name
            for p in sorted(pending, key=lambda p: (p.ready_at, p.name), reverse=True)[:-missing]
        }
        pending = [p for p in pending if p.name not in cancel]
        deleting += tuple(choose_deletions(live, -missing - len(cancel)))
    new_state = replace(state, pending=tuple(pending), deleting=deleting, next_ordinal=next_ordinal)
    create = tuple(p for p in pending if p.ready_at <= now)
    return Plan(new_state, create, deleting)
