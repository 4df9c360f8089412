"""`gpufleet status` and `explain` read what the operator wrote; tested on canned objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from gpufleet.cli.inspect import explain_lines, fleet_tables, status_console
from gpufleet.manifests import read_documents

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _objects(kind: str) -> list[dict[str, Any]]:
    return [d for d in read_documents(EXAMPLES) if d.get("kind") == kind]


def _pool(name: str) -> dict[str, Any]:
    pool = next(p for p in _objects("ServingPool") if p["metadata"]["name"] == name)
    pool["status"] = {
        "desiredReplicas": 12,
        "currentReplicas": 8,
        "queueDepth": 48,
        "providers": [
            {"provider": "gpu-de", "desiredReplicas": 8, "currentReplicas": 8},
            {"provider": "gpu-nl", "desiredReplicas": 4, "currentReplicas": 0},
        ],
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Ready", "message": ""},
            {
                "type": "PowerLimited",
                "status": "True",
                "reason": "LimitedByPower",
                "message": "LimitedByPower on gpu-de/h100-fra1",
            },
            {
                "type": "BurstActive",
                "status": "True",
                "reason": "BurstActive",
                "message": "4 replicas on secondary providers",
            },
        ],
    }
    return pool


def test_explain_names_the_limiting_layers_and_the_data_policy() -> None:
    lines = "\n".join(
        explain_lines(_pool("image-gen"), _objects("CloudProvider"), _objects("PowerBudget"))
    )
    assert "12 wanted" in lines
    assert "power: PowerLimited=True (LimitedByPower)" in lines
    assert "burst: BurstActive=True" in lines
    assert "gpu-us (Secondary) refused by the data policy" in lines
    assert "gpu-nl (Secondary) allowed" in lines


def test_explain_names_the_platform_rule_that_keeps_a_provider_from_the_pool() -> None:
    chat = _pool("chat")
    # The tenant opens burst and widens its own data policy; its TenantPolicy does not.
    chat["spec"]["burst"] = {"enabled": True}
    chat["spec"]["dataPolicy"] = {"dataClass": "Internal", "allowedJurisdictions": ["DE", "NL"]}
    lines = "\n".join(
        explain_lines(
            chat, _objects("CloudProvider"), _objects("PowerBudget"), _objects("TenantPolicy")
        )
    )
    assert "gpu-nl (Secondary) refused by the platform: TenantPolicy chat: burst.allowed" in lines


def test_explain_reports_an_invalid_spec_instead_of_failing() -> None:
    pool = _pool("image-gen")
    pool["spec"]["minReplicas"] = 500
    lines = explain_lines(pool, [], [])
    assert "invalid" in lines[-1]
    assert "minReplicas" in lines[-1]


def test_status_tables_show_every_object() -> None:
    console = Console(width=200, record=True)
    for table in fleet_tables(
        [_pool("image-gen")], _objects("CloudProvider"), _objects("PowerBudget")
    ):
        console.print(table)
    text = console.export_text()
    for name in ("image-gen/image-gen", "gpu-de", "gpu-nl", "gpu-us", "site-fra1", "region-de"):
        assert name in text
    assert "gpu-de: 8/8" in text


def test_explain_says_what_a_throttled_pool_admits_and_what_would_lift_it() -> None:
    pool = _pool("image-gen")
    pool["status"]["throttle"] = {
        "sustainableRequestsPerMinute": 300,
        "demandRequestsPerMinute": 1200,
        "tiers": [
            {"name": "paid", "demandRequestsPerMinute": 240, "allowedRequestsPerMinute": 240},
            {"name": "free", "demandRequestsPerMinute": 960, "allowedRequestsPerMinute": 60},
        ],
    }
    lines = "\n".join(explain_lines(pool, _objects("CloudProvider"), _objects("PowerBudget")))
    assert "carries 300 of 1200 requests/min" in lines
    assert "free 60/960 per min" in lines
    assert "lifted by more quota" in lines


def test_explain_says_which_service_rate_sized_the_pool_and_why() -> None:
    pool = _pool("image-gen")
    pool["status"]["serviceRate"] = {
        "declaredRequestsPerMinute": 2500,
        "observedRequestsPerMinute": 1560,
        "usedRequestsPerMinute": 1560,
        "source": "Observed",
    }
    pool["status"]["conditions"].append(
        {
            "type": "ServiceRateAccurate",
            "status": "False",
            "reason": "ObservedRateDiffers",
            "message": "replicas serve 1,560 requests a minute, 0.62 times the declared 2,500",
            "lastTransitionTime": "2026-12-06T00:00:00Z",
            "observedGeneration": 1,
        }
    )

    text = "\n".join(explain_lines(pool, [], []))

    assert "sized at 1560 requests/min a replica (Observed; declared 2500, observed 1560)" in text
    assert "ServiceRateAccurate=False (ObservedRateDiffers)" in text


def test_piped_status_tables_keep_every_name_whole() -> None:
    console = status_console(terminal=False)
    with console.capture() as captured:
        for table in fleet_tables(
            [_pool("image-gen")], _objects("CloudProvider"), _objects("PowerBudget")
        ):
            console.print(table)
    text = captured.get()

    assert "CloudProvider" in text and "…" not in text
