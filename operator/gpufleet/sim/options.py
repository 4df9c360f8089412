"""`gpufleet simulate`'s values checked against what they name: each bad one is a usage
error (exit 2) that names its flag and lists what there is to choose from, never a run that
quietly replays nothing and reports a perfect SLO."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import ValidationError

from gpufleet.planner.types import Fleet, PoolKey
from gpufleet.sim.arrivals import TraceError, listed
from gpufleet.sim.scenario import Scenario, set_service_rate

# The flag of each TraceSpec setting a trace error can blame
TRACE_FLAGS = {
    "source": "--trace",
    "path": "--trace-path",
    "time_field": "--time-field",
    "time_unit": "--time-unit",
    "work_field": "--work-field",
    "traces": "--traces",
}
# The same settings as a scenario file spells them
SCENARIO_KEYS = {
    "source": "source",
    "path": "path",
    "time_field": "timeField",
    "time_unit": "timeUnit",
    "work_field": "workField",
}


def usage_error(flag: str, message: str) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=f"'{flag}'")


def _pools(fleet: Fleet) -> str:
    return listed(map(str, fleet.pools))


def pool_key(text: str, fleet: Fleet, flag: str = "--pool") -> PoolKey:
    """The fleet's pool written `namespace/name`; a bare name would silently mean
    `default/name`, which rarely exists."""
    namespace, slash, name = text.partition("/")
    if not slash or not namespace or not name or "/" in name:
        raise usage_error(
            flag, f"{text!r} is not namespace/name (e.g. inference/chat); pools: {_pools(fleet)}"
        )
    key = PoolKey(namespace, name)
    if key not in fleet.pools:
        raise usage_error(flag, f"the fleet has no ServingPool {key}; pools: {_pools(fleet)}")
    return key


def set_service_rates(scenario: Scenario, items: list[str]) -> None:
    """Apply each `POOL=REQUESTS_PER_MINUTE` to the scenario's fleet."""
    flag = "--service-rate"
    for item in items:
        pool, equals, value = item.rpartition("=")
        if not equals:
            raise usage_error(flag, f"{item!r} is not POOL=REQUESTS_PER_MINUTE")
        key = pool_key(pool, scenario.fleet, flag)
        try:
            set_service_rate(scenario, key, int(value))
        except (ValueError, ValidationError) as e:  # not an integer, or out of the API's range
            raise usage_error(
                flag, f"{value!r} is not a whole number of requests a minute from 1 to 1000000"
            ) from e


def check_workload_pools(scenario: Scenario, flag: str) -> None:
    """Demand for a pool the fleet lacks would be dropped: every workload needs its pool."""
    for w in scenario.workloads:
        if w.pool not in scenario.fleet.pools:
            raise usage_error(
                flag, f"the fleet has no ServingPool {w.pool}; pools: {_pools(scenario.fleet)}"
            )


def trace_error(error: TraceError, scenario_file: Path | None) -> typer.BadParameter:
    """The error blamed on the flag that set the faulty value, or on the key of the scenario
    file that did (None: the trace came from the command line)."""
    if scenario_file is None or error.setting not in SCENARIO_KEYS:
        return usage_error(TRACE_FLAGS.get(error.setting, "--trace"), str(error))
    return typer.BadParameter(
        str(error), param_hint=f"trace.{SCENARIO_KEYS[error.setting]} in {scenario_file}"
    )
