"""`gpufleet simulate` on a user's own trace: each bad flag value is a usage error that names
the flag and what there is instead; tables, JSON and rates say what the run did.

The fleet is the shipped LLM one (one H100 chat pool declaring 2,500 requests a minute);
traces are small files written per test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from gpufleet.cli.main import app
from gpufleet.planner.demand import service_rate_per_second
from gpufleet.planner.types import PoolKey
from gpufleet.sim.checks import RATE_MISMATCH_TOLERANCE
from gpufleet.sim.engine import prepare, run
from gpufleet.sim.policy import Context, Decision, Policy, View
from gpufleet.sim.scenario import (
    Scenario,
    ScenarioError,
    WorkloadSpec,
    load_fleet,
    parse_scenario,
    set_service_rate,
)
from gpufleet.sim.trace import Modifiers, TraceSpec

ROOT = Path(__file__).resolve().parents[2]
FLEET = ROOT / "examples" / "scenarios" / "fleets" / "llm"
SCENARIO = ROOT / "examples" / "scenarios" / "azure-llm-conversation.yaml"
POOL = PoolKey("inference", "chat")
# Llama-3.1-8B on one H100 serves 9,010 tokens/s (gpufleet/data/gpu_profiles.json): at the
# fleet's declared 2,500 requests a minute, that is this many tokens a request.
ASSUMED_TOKENS = 9010 * 60 / 2500


def _trace(tmp_path: Path, rps: float = 5.0, seconds: int = 120, tokens: float = 216.0) -> Path:
    path = tmp_path / "arrivals.csv"
    n = int(rps * seconds)
    path.write_text("ts,tokens\n" + "".join(f"{i / rps:.3f},{tokens}\n" for i in range(n)))
    return path


def _simulate(trace: Path, *args: str) -> Result:
    base = ["simulate", "--fleet", str(FLEET), "--trace", "csv", "--trace-path", str(trace)]
    flags = ["--time-field", "ts", "--work-field", "tokens", "--duration", "120"]
    return CliRunner().invoke(app, [*base, *flags, *args])


def _text(out: str) -> str:
    """The output without rich's panel borders and line wraps."""
    return " ".join(out.replace("│", " ").split())


@pytest.mark.parametrize(
    ("args", "flag", "says"),
    [
        (["--time-field", "stamp"], "--time-field", "no field 'stamp'; it has tokens, ts"),
        (["--work-field", "tokns"], "--work-field", "no field 'tokns'; it has tokens, ts"),
        (["--pool", "inference/chatt"], "--pool", "pools: inference/chat"),
        (["--pool", "chat"], "--pool", "not namespace/name"),
        (["--time-unit", "sec"], "--time-unit", "'s', 'ms', 'us', 'ns', 'min', 'iso'"),
        (["--time-unit", "iso"], "--time-unit", "not a time in iso"),
        (
            ["--policy", "keda"],
            "--policy",
            "'gpufleet', 'keda-ca', 'keda-ca-defaults', 'static', 'reactive', 'oracle'",
        ),
        (["--trace", "parquet"], "--trace", "choose from azure-llm-conv"),
        (["--service-rate", "inference/chat"], "--service-rate", "POOL=REQUESTS_PER_MINUTE"),
        (["--service-rate", "inference/chat=0"], "--service-rate", "from 1 to 1000000"),
        (["--service-rate", "chat=60"], "--service-rate", "not namespace/name"),
        (["--surge", "2,60"], "--surge", "FACTOR,START_S,RAMP_S[,HOLD_S]"),
        (["--compress", "0"], "--compress", "0 is not above 0"),
        (["--duration", "0"], "--duration", "0 is not above 0"),
        (["--work-scale", "0"], "--work-scale", "0 is not above 0"),
        (["--multiply", "-2"], "--multiply", "greater than or equal to 0"),
        (["--seed", "-1"], "--seed", "greater than or equal to 0"),
        (["--profile", "llm"], "--profile", "profiles: llm-chat, llm-code, text-to-image"),
    ],
    ids=lambda v: v if isinstance(v, str) and v.startswith("--") else None,
)
def test_bad_flag_value_is_a_usage_error_naming_the_flag(
    tmp_path: Path, args: list[str], flag: str, says: str
) -> None:
    result = _simulate(_trace(tmp_path), *args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"Invalid value for '{flag}'" in _text(result.stderr)
    assert says in _text(result.stderr)


def test_lists_at_most_twenty_of_the_files_fields(tmp_path: Path) -> None:
    path = tmp_path / "wide.jsonl"
    row = {f"f{i:02}": 1 for i in range(25)} | {"ts": 0.5}
    path.write_text(json.dumps(row) + "\n")
    text = _text(_simulate(path, "--time-field", "time").stderr)
    assert "it has f00, f01," in text and "f19 and 6 more" in text and "f20" not in text


def test_trace_with_no_arrivals_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("ts,tokens\n,5\n")
    result = _simulate(path)
    assert result.exit_code == 2
    assert "no row with a ts" in _text(result.stderr)


def test_missing_shared_trace_names_the_traces_flag() -> None:
    result = CliRunner().invoke(app, ["simulate", str(SCENARIO), "--duration", "60"])
    text = _text(result.stderr)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--traces'" in text
    assert "azure_llm_2023/AzureLLMInferenceTrace_conv.csv is in none of" in text


def test_traces_directory_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    result = _simulate(_trace(tmp_path), "--traces", str(tmp_path / "nowhere"))
    assert result.exit_code == 2
    assert "'--traces'" in _text(result.stderr) and "nowhere" in _text(result.stderr)


def test_scenario_trace_error_names_the_scenario_key(tmp_path: Path) -> None:
    _trace(tmp_path)
    scenario = tmp_path / "mine.yaml"
    scenario.write_text(
        f"name: mine\nfleet: {{manifests: [{FLEET}]}}\nworkloads:\n"
        "  - {pool: inference/chat, profile: llm-chat, "
        "trace: {source: csv, path: arrivals.csv, timeField: time}}\n"
    )
    result = CliRunner().invoke(app, ["simulate", str(scenario), "--duration", "60"])
    assert result.exit_code == 2
    assert f"Invalid value for trace.timeField in {scenario}" in _text(result.stderr)


def test_plot_without_matplotlib_fails_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    result = _simulate(_trace(tmp_path), "--plot", str(tmp_path / "out.png"))
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--plot'" in _text(result.stderr)
    assert "pip install matplotlib" in _text(result.stderr)
    assert "gpufleet simulate:" not in result.stdout  # no table: nothing ran


def test_piped_table_prints_whole_names(tmp_path: Path) -> None:
    result = _simulate(_trace(tmp_path))  # CliRunner's stdout is no terminal
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    for name in ("gpufleet", "keda-ca-defaults", "reactive", "GPU-h / oracle", "scale actions"):
        assert name in result.stdout
    table_rows = [line for line in result.stdout.splitlines() if "keda-ca-defaults" in line]
    assert len(table_rows) == 1  # one line a policy, not wrapped to 80 columns


def test_json_gives_gpu_hours_over_the_oracle(tmp_path: Path) -> None:
    result = _simulate(_trace(tmp_path), "--json", "--policy", "static", "--policy", "oracle")
    out = json.loads(result.stdout)
    static, oracle = out["policies"]
    assert out["oracleGpuHours"] == pytest.approx(oracle["gpuHours"], abs=0.01)
    assert oracle["gpuHoursOverOracle"] == 1.0
    assert static["gpuHoursOverOracle"] == pytest.approx(
        static["gpuHours"] / oracle["gpuHours"], rel=0.05
    )


def test_json_without_the_oracle_has_no_ratio(tmp_path: Path) -> None:
    out = json.loads(_simulate(_trace(tmp_path), "--json", "--policy", "static").stdout)
    assert out["oracleGpuHours"] is None
    assert out["policies"][0]["gpuHoursOverOracle"] is None


def _oracle_gpu_hours(trace: Path, *args: str) -> float:
    result = _simulate(trace, "--json", "--policy", "oracle", *args)
    assert result.exit_code == 0, result.output
    return float(json.loads(result.stdout)["policies"][0]["gpuHours"])


def test_service_rate_changes_what_replicas_serve(tmp_path: Path) -> None:
    trace = _trace(tmp_path, rps=5.0)
    declared = _oracle_gpu_hours(trace)
    # 30 requests a minute a replica: 5 requests/s need 10 replicas, not 1
    slower = _oracle_gpu_hours(trace, "--service-rate", "inference/chat=30")
    assert slower > 1.2 * declared


class _Recorder(Policy):
    """Keeps the context a run hands its policy; decides nothing."""

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx

    def decide(self, view: View) -> Decision:
        return Decision()


def test_service_rate_is_what_the_planner_and_the_replicas_both_use() -> None:
    trace = TraceSpec("synthetic", rate=5.0, default_work=300.0, duration=60.0)
    sc = Scenario("t", load_fleet(FLEET), [WorkloadSpec(POOL, "llm-chat", trace, Modifiers())])
    set_service_rate(sc, POOL, 30)
    recorder = _Recorder()
    run(prepare(sc), recorder)
    assert service_rate_per_second(recorder.ctx.fleet.pools[POOL]) == pytest.approx(0.5)
    # 30 requests a minute of 300 tokens each, not the measured 9,010 tokens/s
    assert list(recorder.ctx.rates[POOL].values()) == pytest.approx([0.5 * 300.0])
    assert recorder.ctx.fleet.pools[POOL].service_rates[0].watts_per_gpu == 691  # kept


def test_pool_without_a_trace_is_an_error() -> None:
    result = CliRunner().invoke(app, ["simulate", str(SCENARIO), "--pool", "inference/chat"])
    assert result.exit_code == 2
    assert "Invalid value for '--pool'" in _text(result.stderr)


def test_fleet_without_the_scenarios_pool_is_an_error() -> None:
    image_fleet = str(FLEET.parent / "image")
    result = CliRunner().invoke(app, ["simulate", str(SCENARIO), "--fleet", image_fleet])
    text = _text(result.stderr)
    assert result.exit_code == 2
    assert "Invalid value for '--fleet'" in text and "pools: inference/image-gen" in text


def test_scenario_pool_missing_from_its_fleet_lists_the_fleets_pools() -> None:
    raw = {
        "fleet": {"manifests": [str(FLEET)]},
        "workloads": [{"pool": "chat", "profile": "llm-chat", "trace": {"source": "csv"}}],
    }
    with pytest.raises(ScenarioError, match=r"default/chat .* they have inference/chat"):
        parse_scenario(raw, Path())


def test_warns_when_the_traces_mean_work_is_off_the_declared_rate(tmp_path: Path) -> None:
    tokens = ASSUMED_TOKENS * (1 + 2 * RATE_MISMATCH_TOLERANCE)
    result = _simulate(_trace(tmp_path, tokens=tokens), "--policy", "static")
    text = _text(result.stderr)
    assert result.exit_code == 0, result.output
    assert "warning: inference/chat on H100" in text
    assert f"averages {tokens:,.4g} units" in text and f"assume {ASSUMED_TOKENS:,.4g}" in text
    assert f"--service-rate inference/chat={round(9010 * 60 / tokens)}" in text


@pytest.mark.parametrize("off", [0.0, 0.9 * RATE_MISMATCH_TOLERANCE])
def test_no_warning_within_the_tolerance(tmp_path: Path, off: float) -> None:
    result = _simulate(_trace(tmp_path, tokens=ASSUMED_TOKENS * (1 + off)), "--policy", "static")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr


def test_no_warning_where_the_run_gives_the_rate(tmp_path: Path) -> None:
    trace = _trace(tmp_path, tokens=3 * ASSUMED_TOKENS)
    result = _simulate(trace, "--policy", "static", "--service-rate", "inference/chat=800")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
