"""The benchmark's goals judge each pool against its own target and the fair comparison."""

from __future__ import annotations

from pathlib import Path

from gpufleet.sim import goals
from gpufleet.sim.metrics import PoolResult, RunResult
from gpufleet.sim.queue import WaitHistogram
from gpufleet.sim.scenario import Scenario, load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "examples" / "scenarios"
CHAT, IMAGE = "inference/chat", "inference/image-gen"


def _pool(share_within: float, requests: float = 10_000.0) -> PoolResult:
    waits = WaitHistogram()
    waits.add(0, requests * share_within)
    waits.add(600, requests * (1.0 - share_within))
    return PoolResult(slo_seconds=30.0, waits=waits)


def _run(
    policy: str, shares: dict[str, float], gpu_hours: float, over_cap: float = 0.0
) -> RunResult:
    requests = {CHAT: 1_000_000.0, IMAGE: 10_000.0}
    return RunResult(
        policy,
        "test",
        3600.0,
        pools={name: _pool(s, requests.get(name, 10_000.0)) for name, s in shares.items()},
        gpu_seconds=gpu_hours * 3600.0,
        over_cap_watt_seconds={"site": over_cap * 1000.0} if over_cap else {},
    )


def _beside_chat() -> Scenario:
    return load_scenario(SCENARIOS / "image-surge-beside-chat.yaml")


def _goal(found: list[goals.Goal], name: str) -> goals.Goal:
    return next(g for g in found if g.name == name)


def test_a_ramp_slower_than_boot_is_not_sudden_and_a_one_minute_step_is() -> None:
    assert goals.sudden_pools(_beside_chat()) == []
    assert goals.sudden_pools(load_scenario(SCENARIOS / "chat-surge-step.yaml")) == [CHAT]


def test_a_small_pool_below_its_target_fails_though_the_total_meets_it() -> None:
    results = [
        _run("gpufleet", {CHAT: 0.999, IMAGE: 0.97}, 300.0),
        _run("oracle", {CHAT: 0.999, IMAGE: 0.995}, 200.0),
    ]
    assert results[0].slo_attainment > 0.99
    slo = _goal(goals.evaluate(_beside_chat(), results), "sloTarget")
    assert slo.met is False
    assert slo.figure == f"{IMAGE} 97.00 % (target 99.00 %; oracle 99.50 %)"


def test_gpu_hours_are_compared_with_keda_ca_only_where_both_meet_every_pool_target() -> None:
    ours = _run("gpufleet", {CHAT: 0.995, IMAGE: 0.995}, 340.0)
    starved = _run("keda-ca", {CHAT: 0.995, IMAGE: 0.70}, 280.0)
    found = goals.evaluate(_beside_chat(), [ours, starved])
    assert _goal(found, "gpuHoursVsKedaCa").met is None
    assert _goal(found, "notBelowKedaCa").met is True

    serving = _run("keda-ca", {CHAT: 0.995, IMAGE: 0.995}, 400.0)
    assert _goal(goals.evaluate(_beside_chat(), [ours, serving]), "gpuHoursVsKedaCa").met is False
    cheap = _run("gpufleet", {CHAT: 0.995, IMAGE: 0.995}, 270.0)
    assert _goal(goals.evaluate(_beside_chat(), [cheap, serving]), "gpuHoursVsKedaCa").met is True


def test_a_pool_below_keda_ca_fails_even_above_its_target() -> None:
    ours = _run("gpufleet", {CHAT: 0.995, IMAGE: 0.991}, 300.0)
    theirs = _run("keda-ca", {CHAT: 0.995, IMAGE: 0.999}, 300.0)
    assert _goal(goals.evaluate(_beside_chat(), [ours, theirs]), "notBelowKedaCa").met is False


def test_a_sudden_step_is_judged_against_the_reactive_bound_not_the_target() -> None:
    step = load_scenario(SCENARIOS / "chat-surge-step.yaml")
    reactive = _run("reactive", {CHAT: 0.905}, 30.0)
    close = goals.evaluate(step, [_run("gpufleet", {CHAT: 0.9045}, 30.0), reactive])
    assert _goal(close, "sloTarget").met is None
    assert _goal(close, "stepWithinReactive").met is True
    behind = goals.evaluate(step, [_run("gpufleet", {CHAT: 0.835}, 30.0), reactive])
    assert _goal(behind, "stepWithinReactive").met is False


def test_power_over_a_cap_and_gpu_hours_over_the_oracle_fail() -> None:
    ours = _run("gpufleet", {CHAT: 0.999, IMAGE: 0.999}, 130.0, over_cap=5.0)
    oracle = _run("oracle", {CHAT: 0.999, IMAGE: 0.999}, 100.0)
    found = goals.evaluate(_beside_chat(), [ours, oracle])
    assert _goal(found, "noPowerOverCap").met is False
    assert _goal(found, "gpuHoursVsOracle").met is False
    assert "1.30x" in _goal(found, "gpuHoursVsOracle").figure


def test_the_table_has_a_row_a_scenario_and_marks_what_does_not_apply() -> None:
    found = goals.evaluate(_beside_chat(), [_run("gpufleet", {CHAT: 0.999, IMAGE: 0.999}, 1.0)])
    text = goals.markdown({"image-surge-beside-chat": found})
    header, _, row = text.splitlines()
    assert "stepWithinReactive" in header
    assert row.startswith("| image-surge-beside-chat | yes:")
    assert "| -: no sudden step |" in row
