"""Lists the API server keeps as sets or maps reject repeats in our parser too."""

from __future__ import annotations

import pytest

from gpufleet.api import parse_budget, parse_pool

POOL = {
    "scaleTargetRef": {"name": "x"},
    "gpuTypes": ["H100"],
    "queue": {"query": "q", "targetPerReplica": 1},
    "maxReplicas": 3,
}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"dataPolicy": {"allowedJurisdictions": ["DE", "DE"]}}, "allowedJurisdictions"),
        ({"burst": {"providers": ["a", "a"]}}, "providers"),
        (
            {
                "serviceRates": [
                    {"gpuType": "H100", "requestsPerMinute": 1},
                    {"gpuType": "H100", "requestsPerMinute": 2},
                ]
            },
            "serviceRates",
        ),
    ],
)
def test_repeated_entries_in_a_pool_are_rejected_naming_the_list(
    extra: dict[str, object], field: str
) -> None:
    parsed = parse_pool({**POOL, **extra})
    assert parsed.value is None
    assert any(f"`{field}` must not repeat" in str(e) for e in parsed.errors)


def test_repeated_sites_in_a_budget_scope_are_rejected() -> None:
    parsed = parse_budget({"capKilowatts": 1, "scope": {"sites": ["fra1", "fra1"]}})
    assert parsed.value is None
    assert "`sites` must not repeat fra1" in str(parsed.errors[0])
