"""The simulated operator reads each scrape as late as its kept Prometheus answers do."""

from __future__ import annotations

from gpufleet.reconcilers.config import RunConfig
from gpufleet.sim.policies.gpufleet import METRICS_REFRESH_SECONDS, GpufleetPolicy
from gpufleet.sim.policy import Scrape, View


def _view(t: float, scrape: Scrape) -> View:
    return View(t, t, scrape, {}, {}, {}, {})


def _scrape(t: float) -> Scrape:
    return Scrape(t, {}, {}, {})


def test_the_simulator_reads_scrapes_as_late_as_the_operator_by_default() -> None:
    assert RunConfig().metrics_refresh_seconds == METRICS_REFRESH_SECONDS


def test_a_scrape_is_read_half_a_refresh_after_it_lands() -> None:
    policy = GpufleetPolicy(1.0, metrics_refresh_seconds=5.0)
    first, second = _scrape(0.0), _scrape(15.0)
    assert policy._read(_view(0.0, first)) is first  # the fleet's state at the start

    assert policy._read(_view(16.0, second)) is first
    assert policy._read(_view(17.0, second)) is first
    assert policy._read(_view(18.0, second)) is second


def test_scrapes_faster_than_the_delay_are_still_read_in_turn() -> None:
    policy = GpufleetPolicy(1.0, metrics_refresh_seconds=5.0)
    scrapes = [_scrape(float(t)) for t in range(10)]
    read = [policy._read(_view(float(t), s)).time for t, s in enumerate(scrapes)]

    assert read == [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_no_refresh_reads_each_scrape_as_it_lands() -> None:
    policy = GpufleetPolicy(1.0, metrics_refresh_seconds=0.0)
    scrapes = [_scrape(float(t)) for t in range(3)]

    assert [policy._read(_view(float(t), s)) for t, s in enumerate(scrapes)] == scrapes
