"""The test-bed benchmarks' quick modes run end to end and print their figures, so that
neither rots. Speed is not checked here (noisy shared machines); the benchmarks report it."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _last_json_line(out: str) -> dict[str, object]:
    return dict(json.loads(out.strip().splitlines()[-1]))


def test_reaction_quick_times_every_surge(capsys: pytest.CaptureFixture[str]) -> None:
    figures = _load("reaction").main(["--quick", "--testbed", f"bench-reaction-{os.getpid()}"])
    assert _last_json_line(capsys.readouterr().out) == json.loads(json.dumps(figures))
    assert figures["surges"] == 4
    assert 0 < figures["p50_s"] <= figures["p95_s"]
    breakdown = figures["breakdown"]
    assert set(breakdown) >= {"scrape_to_visible", "visible_to_written"}
    # Causal order only: our poll of Prometheus may see a value after the operator acted on it.
    assert all(s["scrape_at"] <= s["written_at"] for s in figures["raw"])


def test_footprint_quick_measures_rss_and_writes_nothing_when_quiet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    figures = _load("footprint").main(["--quick", "--testbed", f"bench-footprint-{os.getpid()}"])
    assert _last_json_line(capsys.readouterr().out) == json.loads(json.dumps(figures))
    assert figures["pools"] == 20
    assert figures["settled"] is True
    assert 20 < figures["rss_mib"] < 2000
    assert figures["steady_writes"] == 0, figures["writes_to_operator_resources_by_all_clients"]
    assert figures["tick"]["count"] > 0


def test_fleet_scale_quick_times_ticks_and_counts_requests_by_verb(
    capsys: pytest.CaptureFixture[str],
) -> None:
    figures = _load("fleet_scale").main(["--quick", "--testbed", f"bench-scale-{os.getpid()}"])
    assert _last_json_line(capsys.readouterr().out) == json.loads(json.dumps(figures))
    assert (figures["nodes"], figures["pods"], figures["pools"]) == (16, 128, 16)
    assert figures["nodes_at_end"] >= 16
    # The plan comes before the tick's writes, and both before the fleet is out.
    assert 0 < figures["first_plan_s"] <= figures["first_tick_s"] + 1 <= figures["scale_out_s"] + 1
    quiet = figures["quiet"]
    assert quiet["writes"] == 0, quiet["requests"]
    assert quiet["timed"] > 0 and 0 < quiet["p50_s"] <= quiet["p95_s"]
    # The surge doubles some queues: the operator writes scales, nodes and status.
    assert figures["surge"]["requests"]["patch"] > 0
    # A restarted operator plans the fleet it finds and rewrites none of it.
    restart = figures["restart"]
    assert 0 < restart["first_plan_s"] <= restart["first_tick_s"] + 1
    assert restart["requests"]["patch"] == 0, restart["requests"]


def test_remote_reads_quick_counts_each_remote_clusters_requests(
    capsys: pytest.CaptureFixture[str],
) -> None:
    figures = _load("remote_reads").main(["--quick", "--testbed", f"bench-rr-{os.getpid()}"])
    assert _last_json_line(capsys.readouterr().out) == json.loads(json.dumps(figures))
    assert figures["remote_clusters"] == 2
    for mode in ("every_tick", "bounded"):
        assert all(c["reads"] > 0 for c in figures[mode].values()), figures[mode]
    # Reading at a bound reads each remote cluster less than every tick does.
    assert figures["reads_per_second_ratio"] < 1
    assert figures["surge_to_remote_copy_s"] > 0


def test_prometheus_reads_quick_compares_kept_answers_with_every_tick(
    capsys: pytest.CaptureFixture[str],
) -> None:
    figures = _load("prometheus_reads").main(["--quick"])
    assert _last_json_line(capsys.readouterr().out) == json.loads(json.dumps(figures))
    every, kept = figures["every_tick"], figures["kept"]
    assert isinstance(every, dict) and isinstance(kept, dict)
    assert every["queries_sent_per_tick"] == 20.0
    assert 0 < kept["queries_sent_per_tick"] < every["queries_sent_per_tick"]
