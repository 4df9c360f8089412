"""The in-process fleet-loop benchmark's quick mode runs and its settled fleet writes nothing,
so that it cannot rot. Its CPU figures are the benchmark's to report, not checked here."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("spread", [1, 2])
def test_loop_tick_quick_settles_and_then_writes_nothing(
    capsys: pytest.CaptureFixture[str], spread: int
) -> None:
    spec = importlib.util.spec_from_file_location(
        "benchmark_loop_tick", ROOT / "benchmarks" / "loop_tick.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)

    figures = module.main(["--quick", "--spread", str(spread)])

    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == figures
    assert figures["pools_planned"] == figures["pools"] == 16
    assert figures["pods"] == 16 * 8 and figures["nodes"] == 16
    assert figures["providers_per_pool"] == spread
    assert figures["settle_ticks"] < 10  # it settled
    assert figures["quiet_writes"] == 0
    assert 0 < figures["cpu_s_per_tick_p50"] <= figures["cpu_s_per_tick_max"]
