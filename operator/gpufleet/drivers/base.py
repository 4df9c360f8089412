"""The driver seam: one narrow Protocol every node-pool backend implements.

Sizes are absolute, never deltas: a retried "set 7" is harmless where "+3" is not. Every
call carries an action id so a backend (or its audit log) can tell a retry from a new
decision. Errors are typed with a CamelCase reason that conditions and metrics use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class NodePoolRef:
    """Which node pool a call is about, with what the backend needs to find it."""

    provider: str
    node_pool: str
    external_name: str


@dataclass(frozen=True)
class NodePoolState:
    """What the backend reports: the size asked for and the nodes that are Ready."""

    target_size: int
    ready_nodes: tuple[str, ...]
    all_nodes: tuple[str, ...]

    @property
    def ready(self) -> int:
        return len(self.ready_nodes)


class DriverError(Exception):
    """A backend call failed; `reason` is CamelCase, for conditions and metrics."""

    reason = "DriverError"
    transient = True

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class CapacityError(DriverError):
    """The backend cannot supply nodes now: the planner backs off this node pool."""

    transient = False


class InsufficientCapacity(CapacityError):
    reason = "InsufficientCapacity"


class QuotaExceeded(CapacityError):
    reason = "QuotaExceeded"


class Throttled(DriverError):
    reason = "Throttled"


class ProviderUnavailable(DriverError):
    reason = "ProviderUnavailable"


class NodePoolNotFound(DriverError):
    reason = "NodePoolNotFound"
    transient = False


@runtime_checkable
class NodePoolDriver(Protocol):
    """What tests/e2e/drivers checks of every backend (the contract suite)."""

    async def get_pool(self, ref: NodePoolRef) -> NodePoolState:
        """The backend's target and nodes; `all_nodes` includes nodes still booting.

        Raises NodePoolNotFound for a pool the backend does not have.
        """
        ...

    async def set_target_size(self, ref: NodePoolRef, size: int, *, action_id: str) -> None:
        """Sets the absolute size; repeating a call is harmless. A backend that grants
        less raises a CapacityError (after recording what it did grant)."""
        ...

    async def delete_nodes(self, ref: NodePoolRef, names: Sequence[str], *, action_id: str) -> None:
        """Removes these nodes and lowers the target by as many, so they are not
        replaced. Names already gone (or never in the pool) succeed and count nothing,
        so a retry never shrinks the pool twice."""
        ...
