"""Candidate lists reused across plans: catalogs of provider sets and pool signatures."""

from __future__ import annotations

from collections.abc import Mapping

from gpufleet.api.pool import ServingPoolSpec
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.api.tenancy import UNGOVERNED, NamespaceTerms
from gpufleet.planner.facts import facts_of
from gpufleet.planner.placement import Catalog

# Catalogs of recent provider sets, by the identity of their (immutable) specs. The fleet loop
# parses a spec once per change, so from one tick to the next the same objects come back and
# the candidate lists built from them can be reused; the cache holds the specs themselves, so
# an identity cannot be recycled while its entry lives. Results never depend on the cache.
_CATALOGS: dict[tuple[tuple[str, int], ...], tuple[Mapping[str, CloudProviderSpec], Catalog]] = {}
_CATALOGS_KEPT = 4


def catalog_of(providers: Mapping[str, CloudProviderSpec]) -> Catalog:
    key = tuple((name, id(spec)) for name, spec in sorted(providers.items()))
    hit = _CATALOGS.get(key)
    if hit is not None:
        return hit[1]
    catalog = Catalog(providers)
    if len(_CATALOGS) >= _CATALOGS_KEPT:
        _CATALOGS.pop(next(iter(_CATALOGS)))
    _CATALOGS[key] = (dict(providers), catalog)
    return catalog


def signature_of(
    spec: ServingPoolSpec, terms: NamespaceTerms = UNGOVERNED, namespace: str | None = None
) -> tuple[object, ...]:
    """What decides a pool's candidate node pools; pools that share it share the list.
    `terms`: its namespace's (they narrow the data policy and name the policies in the
    reasons); `namespace`: its namespace where some provider admits only some, else None."""
    return (terms, namespace, *facts_of(spec).signature)
