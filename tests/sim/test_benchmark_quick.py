"""The benchmark's quick mode runs every scenario and policy on a synthetic trace, and no
policy beats the oracle there.

The oracle's lower bound is checked here on the quick-sized version of every shipped
scenario (its fleet, pools, caps and modifiers; 10 minutes of a synthetic trace): the full
runs take minutes, and `benchmarks/fleet_traces.py` checks them itself (`beatenBy`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from gpufleet.sim.policies import NAMES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("gpufleet.planner.fleet")
    spec = importlib.util.spec_from_file_location(
        "fleet_traces", ROOT / "benchmarks" / "fleet_traces.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path_factory.mktemp("quick")
    headline: dict[str, Any] = mod.main(
        ["--quick", "--no-plots", "--out", str(out), "--traces", str(out)]
    )
    return headline


def test_quick_benchmark_runs_every_policy(quick: dict[str, Any]) -> None:
    shipped = {p.stem for p in (ROOT / "examples" / "scenarios").glob("*.yaml")}
    assert len(quick) == len(shipped)
    for figures in quick.values():
        assert list(figures) == list(NAMES)
        assert {"keda-ca", "keda-ca-defaults", "reactive"} <= set(figures)
        for policy in figures.values():
            assert {"sloAttainment", "admittedSloAttainment", "throttledShare"} <= set(policy)
        judged = figures["gpufleet"]["goals"]
        assert set(judged) == {
            "sloTarget",
            "stepWithinReactive",
            "notBelowKedaCa",
            "gpuHoursVsKedaCa",
            "gpuHoursVsOracle",
            "noPowerOverCap",
        }
        assert all(set(goal) == {"met", "figure"} for goal in judged.values())


def test_no_policy_beats_the_oracle_on_gpu_hours_at_an_equal_or_higher_slo(
    quick: dict[str, Any],
) -> None:
    for scenario, figures in quick.items():
        oracle = figures["oracle"]
        assert oracle["beatenBy"] == [], scenario
        for name, policy in figures.items():
            if policy["sloAttainment"] >= oracle["sloAttainment"]:
                assert policy["gpuHours"] >= oracle["gpuHours"], (scenario, name)
