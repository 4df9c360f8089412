"""The benchmark's quick mode runs every scenario and policy on a synthetic trace."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_runs(tmp_path: Path) -> None:
    pytest.importorskip("gpufleet.planner.fleet")
    spec = importlib.util.spec_from_file_location(
        "fleet_traces", ROOT / "benchmarks" / "fleet_traces.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--quick", "--no-plots", "--out", str(tmp_path), "--traces", str(tmp_path)])
    assert set(next(iter(out.values()))) == {"gpufleet", "keda-ca", "static", "oracle"}
