"""The I/O behind each typed change (reconcilers/actuation.py): drivers resize node pools,
the API server scales workloads (draining preempted replicas), remote clusters take burst
copies. Every failure stays with its change: logged, counted, and retried next tick."""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from gpufleet.drivers.base import CapacityError as DriverCapacityError
from gpufleet.drivers.base import DriverError, NodePoolDriver, QuotaExceeded
from gpufleet.metrics.exporter import OperatorMetrics
from gpufleet.planner.types import CapacityError, CapacityErrorKind, NodePoolKey
from gpufleet.reconcilers.actuation import (
    ApplyCopy,
    Change,
    DeleteCopy,
    MoveReplicas,
    ResizeNodePool,
    ScaleWorkload,
)
from gpufleet.reconcilers.burst.remote import RemoteClusters
from gpufleet.reconcilers.drain import Drainer
from gpufleet.reconcilers.kube import Workloads
from gpufleet.reconcilers.leader import NotLeading

log = logging.getLogger(__name__)


@dataclass
class Effects:
    """Applies one tick's changes; built per tick, as `now` is the tick's."""

    kube: Workloads
    drivers: Mapping[str, NodePoolDriver]
    drainer: Drainer
    remote: RemoteClusters | None
    metrics: OperatorMetrics
    # Where a node pool's refusal is kept for the planner to back off from (next tick).
    capacity_errors: MutableMapping[NodePoolKey, CapacityError]
    now: float

    async def apply(self, change: Change, size: int, action_id: str) -> bool:
        match change:
            case ResizeNodePool():
                return await self._resize_node_pool(change, size, action_id)
            case ScaleWorkload() | MoveReplicas():
                return await self._scale(change, size)
            case ApplyCopy(provider=provider, pool=pool, workload=workload, copy=copy):
                if self.remote is None:
                    return False
                return await self.remote.resize(provider, pool, copy, workload, size, action_id)
            case DeleteCopy(provider=provider, pool=pool, copy=copy):
                if self.remote is None:
                    return False
                return await self.remote.resize(provider, pool, copy, None, 0, action_id)

    async def _resize_node_pool(self, change: ResizeNodePool, size: int, action_id: str) -> bool:
        key = change.key
        driver = self.drivers.get(key.provider)
        if driver is None:
            return False
        try:
            doomed = change.remove[: max(change.current - size, 0)]
            if doomed:  # by name first; drivers lower the target by the nodes they remove
                await driver.delete_nodes(change.ref, doomed, action_id=action_id)
            await driver.set_target_size(change.ref, size, action_id=action_id)
        except NotLeading:  # the tick stops (actuation.py execute)
            raise
        except DriverError as exc:
            if isinstance(exc, DriverCapacityError):  # the planner backs the node pool off
                kind = (
                    CapacityErrorKind.QUOTA_EXCEEDED
                    if isinstance(exc, QuotaExceeded)
                    else CapacityErrorKind.INSUFFICIENT_CAPACITY
                )
                self.capacity_errors[key] = CapacityError(kind, self.now)
            else:
                self.metrics.reconcile_errors.labels("actuate").inc()
            log.warning(
                "node pool %s: %s",
                key,
                exc.reason,
                extra={"nodePool": str(key), "reason": exc.reason},
            )
            return False
        except Exception:  # untyped: this node pool only, next tick again
            self.metrics.reconcile_errors.labels("actuate").inc()
            log.exception("node pool %s: resize failed", key, extra={"nodePool": str(key)})
            return False
        return True

    async def _scale(self, change: ScaleWorkload | MoveReplicas, size: int) -> bool:
        """Set the workload's size; True only when it is set. A change that drains
        preempted replicas may stop short (retried next tick)."""
        workload, pool = change.workload, change.pool
        try:
            if change.drain is not None:
                return await self.drainer.resize(
                    self.kube, workload, pool, change.drain, size, self.now
                )
            await self.kube.scale(workload.kind, pool.namespace, workload.name, size)
        except NotLeading:  # the tick stops (actuation.py execute)
            raise
        except Exception as exc:  # one pool's failure must not stop the others
            self.metrics.reconcile_errors.labels("scale").inc()
            log.warning("scale %s failed: %s", pool, exc, extra={"pool": str(pool)})
            return False
        return True
