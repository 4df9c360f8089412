"""Threat: a tenant declares its data harmless (`dataClass: Public`,
`approvedSubprocessorsOnly: false`) to burst to an unapproved provider, or uses a provider
the platform keeps for other namespaces. The data policy that counts is the pool's narrowed
by its namespace's TenantPolicy terms, and a CloudProvider's `namespaces` admit only those."""

from __future__ import annotations

from gpufleet.api.pool import DataClass
from gpufleet.api.tenancy import NamespaceTerms
from gpufleet.planner import NodePoolKey, PlannerState, PoolKey, Reason, plan_fleet
from gpufleet.planner.catalogs import signature_of

from .planning import fleet, pool, provider, snapshot

EU = NodePoolKey("eu", "h100")
US = NodePoolKey("us", "h100")
TEAM = PoolKey("team-a", "image")
FLOOR = NamespaceTerms(
    policies=("regulated",),
    min_data_class=DataClass.CONFIDENTIAL,
    approved_subprocessors_only=True,
)
# What the attacker declares: nothing sensitive, any subprocessor, burst anywhere.
LAX = {
    "dataPolicy": {"dataClass": "Public", "approvedSubprocessorsOnly": False},
    "burst": {"enabled": True},
}


def _providers() -> dict[str, object]:
    return {
        "eu": provider(max_nodes=1),
        "us": provider(
            max_nodes=5,
            role="Secondary",
            legal_entity="Example Cloud Inc.",
            jurisdiction="US",
            approved=False,
            data_classes=("Public",),
        ),
    }


def test_a_pool_declaring_public_data_gets_nothing_on_the_unapproved_provider() -> None:
    plan = plan_fleet(
        fleet({TEAM: pool(**LAX)}, _providers(), terms={"team-a": FLOOR}),  # type: ignore[arg-type]
        snapshot({TEAM: 400}),
        PlannerState(),
        0.0,
    )
    image = plan.pools[TEAM]
    assert image.placements == {EU: 8}
    assert US not in image.placements
    assert Reason.BURST_BLOCKED_BY_NAMESPACE_POLICY in image.reasons
    assert Reason.BURST_BLOCKED_BY_DATA_POLICY not in image.reasons  # its own allows it
    message = next(
        n.message for n in image.notes if n.reason == Reason.BURST_BLOCKED_BY_NAMESPACE_POLICY
    )
    assert "TenantPolicy regulated" in message and "approvedSubprocessorsOnly" in message


def test_without_terms_the_same_pool_would_burst_there() -> None:
    # The control: the refusal above is the namespace's doing, not the capacity's.
    plan = plan_fleet(
        fleet({TEAM: pool(**LAX)}, _providers()),  # type: ignore[arg-type]
        snapshot({TEAM: 400}),
        PlannerState(),
        0.0,
    )
    assert plan.pools[TEAM].placements.get(US, 0) > 0


def test_the_pools_own_refusal_keeps_its_reason() -> None:
    own = {"dataPolicy": {"dataClass": "Internal"}, "burst": {"enabled": True}}
    plan = plan_fleet(
        fleet({TEAM: pool(**own)}, _providers(), terms={"team-a": FLOOR}),  # type: ignore[arg-type]
        snapshot({TEAM: 400}),
        PlannerState(),
        0.0,
    )
    assert Reason.BURST_BLOCKED_BY_DATA_POLICY in plan.pools[TEAM].reasons


def test_a_provider_kept_for_other_namespaces_is_never_used() -> None:
    providers = {
        "eu": provider(max_nodes=1),
        "reserved": provider(max_nodes=5, legal_entity="Reserved GmbH", namespaces=["other"]),
    }
    other = PoolKey("other", "image")
    plan = plan_fleet(
        fleet({TEAM: pool(), other: pool()}, providers),
        snapshot({TEAM: 400, other: 80}),
        PlannerState(),
        0.0,
    )
    team = plan.pools[TEAM]
    assert set(team.placements) == {EU}  # short, with 5 free nodes it may not use
    assert Reason.BURST_BLOCKED_BY_NAMESPACE_POLICY in team.reasons
    assert "CloudProvider reserved" in next(
        n.message for n in team.notes if n.reason == Reason.BURST_BLOCKED_BY_NAMESPACE_POLICY
    )
    assert plan.pools[other].placements.get(NodePoolKey("reserved", "h100"), 0) > 0


def test_a_burst_ban_and_a_burst_list_narrow_the_pools_own() -> None:
    banned = NamespaceTerms(policies=("no-burst",), burst_allowed=False)
    listed = NamespaceTerms(policies=("eu-only",), burst_providers=frozenset({"nl"}))
    providers = {
        "eu": provider(max_nodes=1),
        "us": provider(role="Secondary", legal_entity="Example Cloud Inc.", jurisdiction="US"),
    }
    for terms in (banned, listed):
        plan = plan_fleet(
            fleet({TEAM: pool(**LAX)}, providers, terms={"team-a": terms}),
            snapshot({TEAM: 400}),
            PlannerState(),
            0.0,
        )
        assert plan.pools[TEAM].placements == {EU: 8}
        assert Reason.BURST_BLOCKED_BY_NAMESPACE_POLICY in plan.pools[TEAM].reasons


def test_pools_alike_in_different_namespaces_do_not_share_candidates() -> None:
    spec = pool(**LAX)
    assert signature_of(spec, FLOOR) != signature_of(spec)
    assert signature_of(spec, FLOOR, "team-a") != signature_of(spec, FLOOR, "team-b")
