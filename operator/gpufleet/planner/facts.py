"""What the planner derives from a pool's spec alone, worked out once per spec object.

Every tick reads the same figures of every pool (its slowest declared rate, its declared
rates and watts, what decides its candidate node pools); at a thousand pools, working them
out again from the pydantic models each tick was a good part of a plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gpufleet.api.pool import Mode, ServingPoolSpec
from gpufleet.planner import behavior


@dataclass(frozen=True)
class PoolFacts:
    # The slowest declared rate (requests/s) among the pool's GPU types; None: none declared.
    slowest: float | None
    # Requests/s per GPU type as declared (serviceRates), and the same sorted, as
    # ServiceMemory.rates records them.
    declared: Mapping[str, float]
    rates: tuple[tuple[str, float], ...]
    # Watts per busy GPU the pool declares, by GPU type (serviceRates[].wattsPerGpu).
    watts: Mapping[str, int]
    # What of the spec decides its candidate node pools (catalogs.signature_of, without the
    # namespace's terms): one tuple for pools alike, so that a plan can tell them by its
    # identity without hashing it.
    signature: tuple[object, ...]
    dry_run: bool
    warm_spares: bool  # warmSpares.enabled
    rules: behavior.Resolved  # its behaviour, the HPA's defaults filled in


_EMPTY: Mapping[str, Any] = MappingProxyType({})

# Facts by the identity of their (immutable) specs, which come back unchanged from one tick
# to the next; the entry holds the spec, so its identity cannot be recycled while it lives.
# Results never depend on the cache.
_FACTS: dict[int, tuple[ServingPoolSpec, PoolFacts]] = {}
# Each distinct signature once: pools alike share the tuple.
_SIGNATURES: dict[tuple[object, ...], tuple[object, ...]] = {}
_KEPT = 65536


def facts_of(spec: ServingPoolSpec) -> PoolFacts:
    hit = _FACTS.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    facts = _facts(spec)
    if len(_FACTS) >= _KEPT:
        _FACTS.clear()
    _FACTS[id(spec)] = (spec, facts)
    return facts


def _facts(spec: ServingPoolSpec) -> PoolFacts:
    rates = [
        r.requests_per_minute / 60.0 for r in spec.service_rates if r.gpu_type in spec.gpu_types
    ]
    declared = {r.gpu_type: r.requests_per_minute / 60.0 for r in spec.service_rates}
    policy, burst = spec.data_policy, spec.burst
    signature = (
        frozenset(spec.gpu_types),
        spec.gpus_per_replica,
        spec.allow_spot,
        spec.model_load_seconds,
        policy.data_class,
        tuple(policy.allowed_jurisdictions),
        policy.approved_subprocessors_only,
        burst.enabled,
        tuple(burst.providers),
        burst.max_lead_seconds,
    )
    if len(_SIGNATURES) >= _KEPT:
        _SIGNATURES.clear()
    watts = {r.gpu_type: r.watts_per_gpu for r in spec.service_rates if r.watts_per_gpu}
    return PoolFacts(
        slowest=min(rates) if rates else None,
        # Most pools declare neither: they share one empty mapping (fewer objects for the
        # garbage collector to walk, a thousand pools or more).
        declared=MappingProxyType(declared) if declared else _EMPTY,
        rates=tuple(sorted(declared.items())),
        watts=MappingProxyType(watts) if watts else _EMPTY,
        signature=_SIGNATURES.setdefault(signature, signature),
        dry_run=spec.mode == Mode.DRY_RUN,
        warm_spares=spec.warm_spares.enabled,
        rules=behavior.resolve(spec.behavior),
    )
