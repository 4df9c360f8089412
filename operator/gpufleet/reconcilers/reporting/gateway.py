"""The sustainable rate of every pool in one ConfigMap a gateway can read (docs/gateway.md).

Optional (`gpufleet run --gateway-config-map NAME`). The operator owns the ConfigMap, in its
own namespace; each ServingPool has one key, `<namespace>.<name>.json`, holding a small JSON
document: whether the pool is throttled, its sustainable and demanded requests per minute and
each tier's allowed rate, highest tier first (the figures of `status.throttle`), the reason,
and `observedAt`, the time these figures were computed. A pool that keeps up says
`"throttled": false` with null rates ("no limit"), so a gateway tells it from a missing key
("unknown"). A pool without fresh figures (metrics unavailable, spec invalid, target missing)
keeps its last document, as the planner holds capacity; the key of a deleted pool goes.

`documents` and `changes` are pure; `GatewayConfigMap` adds the Kubernetes calls, and writes
only the keys whose document changed: none in steady state.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from gpufleet.metrics.exporter import OperatorMetrics
from gpufleet.planner.types import FleetPlan, PoolKey, PoolPlan, Reason
from gpufleet.reconcilers.cache import View
from gpufleet.reconcilers.kube import Kube
from gpufleet.reconcilers.reporting.conditions import timestamp
from gpufleet.reconcilers.reporting.status import throttle_figures, throttled_reason

log = logging.getLogger(__name__)

SUFFIX = ".json"
MAX_KEY = 253  # a ConfigMap key: at most 253 of [-._a-zA-Z0-9]


def key_of(pool: PoolKey) -> str | None:
    """`<namespace>.<name>.json`; a namespace has no dots, so the first dot splits it.
    None when too long for a key (namespace and name over 247 characters together)."""
    key = f"{pool.namespace}.{pool.name}{SUFFIX}"
    return key if len(key) <= MAX_KEY else None


def document(plan: PoolPlan) -> dict[str, Any]:
    """What a gateway needs of one pool's plan, without `observedAt` (requests per minute,
    rounded as in `status.throttle`, so the document changes only when the status does)."""
    throttle = plan.throttle
    note = next((n.message for n in plan.notes if n.reason == Reason.THROTTLED), "")
    figures = (
        throttle_figures(throttle)
        if throttle is not None
        else {"sustainableRequestsPerMinute": None, "demandRequestsPerMinute": None, "tiers": []}
    )
    return {
        "namespace": plan.key.namespace,
        "name": plan.key.name,
        "throttled": throttle is not None,
        **figures,
        "reason": throttled_reason(throttle),
        "message": note,
    }


def dump(doc: Mapping[str, Any]) -> str:
    """Stable text: the same document is always the same bytes."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _figures(text: str) -> dict[str, Any] | None:
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    raw.pop("observedAt", None)
    return raw


def documents(
    known: Iterable[PoolKey],
    plans: Mapping[PoolKey, PoolPlan],
    previous: Mapping[str, str],
    now: float,
) -> dict[str, str]:
    """The ConfigMap's keys for the pools that exist (`known`), given what it holds now.

    A document whose figures did not change is kept as it is (its `observedAt` included);
    a pool without fresh figures keeps its previous document, if it had one."""
    out: dict[str, str] = {}
    for pool in sorted(set(known)):
        key = key_of(pool)
        if key is None:
            continue
        plan = plans.get(pool)
        old = previous.get(key)
        if plan is None or not plan.metrics_available:
            if old is not None:
                out[key] = old  # hold the last figures, as capacity is held
            continue
        doc = document(plan)
        if old is not None and _figures(old) == doc:
            out[key] = old
        else:
            out[key] = dump({**doc, "observedAt": timestamp(now)})
    return out


def changes(previous: Mapping[str, str], desired: Mapping[str, str]) -> dict[str, str | None]:
    """A merge patch of `data`: changed documents, and None for the keys of pools gone.
    Keys that are not ours (no `.json` suffix) are left alone."""
    patch: dict[str, str | None] = {k: v for k, v in desired.items() if previous.get(k) != v}
    patch.update({k: None for k in previous if k.endswith(SUFFIX) and k not in desired})
    return patch


@dataclass
class GatewayConfigMap:
    """The ConfigMap `namespace/name`; failures are logged and counted, never raised."""

    kube: Kube
    metrics: OperatorMetrics
    namespace: str
    name: str
    # Read the ConfigMap again after this long (someone may have edited or deleted it);
    # in between, compare with what was last read or written: no calls in steady state.
    verify_seconds: float = 60.0
    data: dict[str, str] | None = None
    version: str = ""
    read_at: float = 0.0
    skipped: set[PoolKey] = field(default_factory=set)
    error: str | None = None  # the last failure, logged once

    async def publish(self, view: View, plan: FleetPlan, now: float) -> None:
        known = [PoolKey(e.namespace, e.name) for e in view.pools]
        for pool in known:
            if key_of(pool) is None and pool not in self.skipped:
                self.skipped.add(pool)
                log.warning(
                    "pool %s: name too long for a key of the gateway ConfigMap",
                    pool,
                    extra={"pool": f"{pool.namespace}/{pool.name}"},
                )
        try:
            data = self.data
            if data is None or time.monotonic() - self.read_at >= self.verify_seconds:
                data = await self._read()
            patch = changes(data, documents(known, plan.pools, data, now))
            if patch:
                self.version = await self.kube.patch_config_map_data(
                    self.namespace, self.name, patch, self.version
                )
                self.data = {k: v for k, v in {**data, **patch}.items() if v is not None}
                log.debug(
                    "gateway ConfigMap %s/%s: %d keys written",
                    self.namespace,
                    self.name,
                    len(patch),
                    extra={"keys": sorted(patch)},
                )
        except Exception as exc:  # the gateway's copy must never stop the tick
            self.data = None  # read it again next tick
            self.metrics.reconcile_errors.labels("gateway").inc()
            # The reason only (an ApiException's text carries the whole reply), once per change.
            error = f"{exc.status} {exc.reason}" if isinstance(exc, ApiException) else str(exc)
            if error != self.error:
                log.warning(
                    "gateway ConfigMap %s/%s not written: %s",
                    self.namespace,
                    self.name,
                    error,
                    extra={"configMap": f"{self.namespace}/{self.name}", "error": error},
                )
            self.error = error
            return
        if self.error is not None:
            log.info("gateway ConfigMap %s/%s in sync again", self.namespace, self.name)
            self.error = None

    async def _read(self) -> dict[str, str]:
        try:
            self.data, self.version = await self.kube.read_config_map(self.namespace, self.name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            await self.kube.ensure_config_map(self.namespace, self.name)
            self.data, self.version = await self.kube.read_config_map(self.namespace, self.name)
        self.read_at = time.monotonic()
        return self.data
