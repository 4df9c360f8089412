"""Power is not self-declared: a ServingPool is a tenant's, so the watts PowerBudgets count
its busy GPUs at come from the node pool's nameplate (the admin's CloudProvider) until the
operator measures the pool's pods, then from that measurement, bounded by the node pool's
idle and nameplate figures; the pool's own `serviceRates[].wattsPerGpu` may only raise it."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gpufleet.api.pool import PowerSource
from gpufleet.metrics.problems import MetricsReason, MetricsUnavailable
from gpufleet.metrics.source import PrometheusSource, Sample
from gpufleet.planner import plan_fleet
from gpufleet.planner.types import NodePoolKey, PoolKey, PowerFigure
from gpufleet.reconcilers.cache import NodeEntry, PodEntry, WorkloadEntry
from gpufleet.reconcilers.observe import observe
from gpufleet.reconcilers.power_draw import attribute_draw
from gpufleet.reconcilers.reporting.status import pool_status, wire
from gpufleet.reconcilers.selectors import from_label_selector
from gpufleet_testbed import Testbed
from gpufleet_testbed.polling import until
from planner.builders import EMPTY, budget, fleet, key, node_pool, pool, provider
from planner.builders import observe as snapshot

NAMEPLATE, IDLE, OVERHEAD = 700, 100, 1000  # planner.builders' H100 node pool
FAST = {
    "behavior": {
        "scaleUp": {"policies": [{"type": "Pods", "value": 1000, "periodSeconds": 15}]},
        "scaleDown": {"stabilizationWindowSeconds": 0},
    }
}


def _declaring(watts: int | None, gpu_type: str = "H100") -> Any:
    rate: dict[str, Any] = {"gpuType": gpu_type, "requestsPerMinute": 60}
    if watts is not None:
        rate["wattsPerGpu"] = watts
    return pool(serviceRates=[rate], maxReplicas=200, **FAST)


def _twenty_kw(spec: Any) -> Any:
    # Room for 160 GPUs: only the cap may stop the pool.
    return fleet(
        {"chat": spec}, {"a": provider(node_pools=[node_pool(maxNodes=20)])}, {"site": budget(20)}
    )


# --- the planner: what a busy GPU counts at ------------------------------------------------


@pytest.mark.parametrize("declared", [1, 90, 350, 699])
def test_a_pool_declaring_a_low_draw_fits_no_more_gpus_under_a_20_kw_cap(declared: int) -> None:
    # Reproduced attack: wattsPerGpu 1 planned 80 replicas (about 66 kW at nameplate).
    plan = plan_fleet(_twenty_kw(_declaring(declared)), snapshot({"chat": 10_000}), EMPTY, 0.0)

    chat = plan.pools[key()]
    nodes = plan.node_pools[NodePoolKey("a", "h100")].desired_nodes
    at_nameplate = nodes * (OVERHEAD + 8 * IDLE) + chat.desired_replicas * (NAMEPLATE - IDLE)
    assert chat.desired_replicas * NAMEPLATE <= 20_000
    assert at_nameplate <= 20_000
    assert plan.budgets["site"].planned_watts <= 20_000
    assert chat.planned_watts == chat.desired_replicas * NAMEPLATE
    assert chat.power == (PowerFigure("H100", NAMEPLATE, PowerSource.NAMEPLATE),)


def test_a_measured_draw_lowers_the_estimate_to_the_measurement() -> None:
    measured = snapshot({"chat": 10_000}, watts={"chat": {"H100": 400.0}})

    plan = plan_fleet(_twenty_kw(_declaring(None)), measured, EMPTY, 0.0)

    chat = plan.pools[key()]
    assert chat.power == (PowerFigure("H100", 400.0, PowerSource.MEASURED),)
    assert chat.planned_watts == chat.desired_replicas * 400
    nameplate = plan_fleet(_twenty_kw(_declaring(None)), snapshot({"chat": 10_000}), EMPTY, 0.0)
    assert chat.desired_replicas > nameplate.pools[key()].desired_replicas
    assert plan.budgets["site"].planned_watts <= 20_000


@pytest.mark.parametrize(
    ("measured", "counted"),
    [(0.0, IDLE), (42.0, IDLE), (5_000.0, NAMEPLATE), (1e9, NAMEPLATE)],
)
def test_a_measurement_is_believed_only_between_idle_and_nameplate(
    measured: float, counted: int
) -> None:
    observed = snapshot({"chat": 10_000}, watts={"chat": {"H100": measured}})

    plan = plan_fleet(_twenty_kw(_declaring(None)), observed, EMPTY, 0.0)

    assert plan.pools[key()].power == (PowerFigure("H100", counted, PowerSource.MEASURED),)
    assert plan.budgets["site"].planned_watts <= 20_000


def test_a_declared_figure_above_the_measurement_raises_the_estimate() -> None:
    observed = snapshot({"chat": 10_000}, watts={"chat": {"H100": 400.0}})

    plan = plan_fleet(_twenty_kw(_declaring(550)), observed, EMPTY, 0.0)

    chat = plan.pools[key()]
    assert chat.power == (PowerFigure("H100", 550, PowerSource.DECLARED),)
    assert chat.planned_watts == chat.desired_replicas * 550


def test_a_declared_figure_below_the_measurement_changes_nothing() -> None:
    observed = snapshot({"chat": 10_000}, watts={"chat": {"H100": 400.0}})

    plan = plan_fleet(_twenty_kw(_declaring(1)), observed, EMPTY, 0.0)

    assert plan.pools[key()].power == (PowerFigure("H100", 400.0, PowerSource.MEASURED),)


@pytest.mark.parametrize("watts", [{}, {"B200": 300.0}, {"H100": math.nan}])
def test_without_a_measurement_of_its_gpu_type_a_pool_counts_at_nameplate(
    watts: dict[str, float],
) -> None:
    observed = snapshot({"chat": 10_000}, watts={"chat": watts})

    plan = plan_fleet(_twenty_kw(_declaring(1)), observed, EMPTY, 0.0)

    chat = plan.pools[key()]
    assert chat.power == (PowerFigure("H100", NAMEPLATE, PowerSource.NAMEPLATE),)
    assert chat.desired_replicas * NAMEPLATE <= 20_000


def test_one_pools_measurement_does_not_lower_another_pools_estimate() -> None:
    specs = {"chat": _declaring(None), "other": _declaring(None)}
    f = fleet(specs, {"a": provider(node_pools=[node_pool(maxNodes=20)])}, {"site": budget(20)})
    observed = snapshot({"chat": 0, "other": 10_000}, watts={"chat": {"H100": 150.0}})

    plan = plan_fleet(f, observed, EMPTY, 0.0)

    other = plan.pools[key("other")]
    assert other.power == (PowerFigure("H100", NAMEPLATE, PowerSource.NAMEPLATE),)
    assert plan.budgets["site"].planned_watts <= 20_000


def test_the_pool_status_says_what_it_was_counted_at_and_why() -> None:
    observed = snapshot({"chat": 10_000}, watts={"chat": {"H100": 400.0}})
    plan = plan_fleet(_twenty_kw(_declaring(550)), observed, EMPTY, 0.0).pools[key()]

    status = wire(pool_status(None, 1, [], 0.0, plan))

    assert status["power"] == [{"gpuType": "H100", "wattsPerGpu": 550, "source": "Declared"}]


# --- the measurement: per-pod series to pools and GPU types -------------------------------

NS = "team-a"
CHAT, IMAGE = PoolKey(NS, "chat"), PoolKey(NS, "image")
H100, B200 = NodePoolKey("a", "h100"), NodePoolKey("a", "b200")
GPU_TYPES = {H100: "H100", B200: "B200"}
NODES = {"node-h": H100, "node-b": B200}


def _workload(app: str) -> WorkloadEntry:
    return WorkloadEntry(
        NS, "Deployment", app, 3, from_label_selector({"matchLabels": {"app": app}})
    )


def _pod(name: str, app: str, node: str | None, namespace: str = NS) -> PodEntry:
    return PodEntry(namespace, name, {"app": app}, node, False, True, 1)


WORKLOADS = {CHAT: _workload("chat"), IMAGE: _workload("image")}
PODS = {
    NS: [
        _pod("chat-1", "chat", "node-h"),
        _pod("chat-2", "chat", "node-h"),
        _pod("chat-3", "chat", "node-b"),
        _pod("image-1", "image", "node-h"),
        _pod("image-pending", "image", None),
        _pod("stray", "chat", "node-unknown"),
    ],
    "team-b": [_pod("chat-1", "chat", "node-h", namespace="team-b")],
}


def _series(namespace: str, pod: str, watts: float) -> tuple[dict[str, str], float]:
    return {"namespace": namespace, "pod": pod}, watts


def test_series_go_to_the_pool_whose_workload_selects_the_pod_by_gpu_type() -> None:
    series = [
        _series(NS, "chat-1", 420.0),
        _series(NS, "chat-2", 510.0),  # the hottest replica speaks for the pool
        _series(NS, "chat-3", 800.0),
        _series(NS, "image-1", 300.0),
    ]

    drawn = attribute_draw(series, WORKLOADS, PODS, NODES, GPU_TYPES)

    assert drawn == {CHAT: {"H100": 510.0, "B200": 800.0}, IMAGE: {"H100": 300.0}}


def test_series_of_other_namespaces_unknown_pods_or_unlabelled_count_for_no_pool() -> None:
    series = [
        _series("team-b", "chat-1", 90.0),  # same pod name, another tenant's namespace
        _series(NS, "gone-pod", 10.0),
        _series(NS, "image-pending", 10.0),  # not bound: no node pool, no GPU type
        _series(NS, "stray", 10.0),  # on a node of no known node pool
        ({"pod": "chat-1"}, 10.0),
        ({"namespace": NS}, 10.0),
        _series(NS, "image-1", math.nan),
        _series(NS, "image-1", -5.0),
    ]

    assert attribute_draw(series, WORKLOADS, PODS, NODES, GPU_TYPES) == {}


def test_a_forged_low_series_beside_the_real_one_cannot_lower_a_pod() -> None:
    # Anyone who can get a series scraped can add one with the same labels: only the
    # highest counts, so a forged figure can raise a pod's draw but never lower it.
    series = [_series(NS, "chat-1", 650.0), _series(NS, "chat-1", 1.0)]

    assert attribute_draw(series, WORKLOADS, PODS, NODES, GPU_TYPES)[CHAT] == {"H100": 650.0}


@dataclass
class _Source:
    """Beyond the seam: answers every scalar query with 1 and the power query from a table."""

    found: Sequence[tuple[dict[str, str], float]] | MetricsUnavailable
    asked: list[str]

    async def sample_many(self, queries: Sequence[str]) -> dict[str, Sample | MetricsUnavailable]:
        return {q: Sample(1.0, 0.0) for q in queries}

    async def series(self, query: str) -> list[tuple[dict[str, str], float]] | MetricsUnavailable:
        self.asked.append(query)
        return self.found if isinstance(self.found, MetricsUnavailable) else list(self.found)


def _observe(source: _Source, power_query: str | None = "power") -> Any:
    specs = {CHAT: _declaring(None), IMAGE: _declaring(None)}
    nodes = [NodeEntry("node-h", "a", "h100", True), NodeEntry("node-b", "a", "b200", True)]
    providers = {"a": provider(node_pools=[node_pool(), node_pool("b200", gpuType="B200")])}
    return asyncio.run(
        observe(specs, WORKLOADS, providers, {}, nodes, PODS, {}, (), {}, {}, source, power_query)
    )


def test_each_tick_reads_the_power_query_once_into_the_pools_observations() -> None:
    source = _Source([_series(NS, "chat-1", 430.0), _series(NS, "chat-3", 760.0)], [])

    observed = _observe(source)

    assert source.asked == ["power"]
    assert observed.snapshot.pools[CHAT].watts_per_gpu == {"H100": 430.0, "B200": 760.0}
    assert observed.snapshot.pools[IMAGE].watts_per_gpu == {}
    assert observed.power_error is None


def test_an_unreadable_power_query_leaves_every_pool_at_nameplate() -> None:
    down = MetricsUnavailable("Prometheus did not answer", MetricsReason.UNREACHABLE)

    observed = _observe(_Source(down, []))

    assert all(not p.watts_per_gpu for p in observed.snapshot.pools.values())
    assert observed.power_error is not None
    assert observed.power_error.reason == MetricsReason.UNREACHABLE.value


def test_without_a_power_query_nothing_is_measured() -> None:
    source = _Source([_series(NS, "chat-1", 430.0)], [])

    observed = _observe(source, power_query=None)

    assert source.asked == []
    assert not observed.snapshot.pools[CHAT].watts_per_gpu


# --- the source: every series of the admin's query ----------------------------------------


@pytest.fixture
def prometheus() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A Prometheus that answers every query with the vector in the yielded list."""
    result: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            body = json.dumps(
                {"status": "success", "data": {"resultType": "vector", "result": result}}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", result
    finally:
        server.shutdown()
        server.server_close()


def test_the_source_keeps_every_usable_series_with_its_labels(
    prometheus: tuple[str, list[dict[str, Any]]],
) -> None:
    url, result = prometheus
    result.extend(
        [
            {"metric": {"namespace": NS, "pod": "chat-1"}, "value": [1.0, "512.5"]},
            {"metric": {"namespace": NS, "pod": "chat-2"}, "value": [1.0, "NaN"]},
            {"metric": {"namespace": NS, "pod": "chat-3"}, "value": [1.0, "-3"]},
            {"metric": {"namespace": NS, "pod": "chat-4"}, "value": [1.0, "1.4e+14"]},
            {"metric": {"namespace": NS, "pod": "chat-5"}},
        ]
    )

    found = asyncio.run(PrometheusSource(url).series("max by (namespace, pod) (up)"))

    assert found == [({"namespace": NS, "pod": "chat-1"}, 512.5)]


def test_the_source_refuses_a_query_that_does_not_parse() -> None:
    found = asyncio.run(PrometheusSource("http://127.0.0.1:9").series("max by (pod) (up"))

    assert isinstance(found, MetricsUnavailable)
    assert found.reason == MetricsReason.INVALID_QUERY


# --- the test bed: its DCGM exporter, a real Prometheus, the operator's source ------------


@pytest.mark.e2e
def test_the_test_beds_dcgm_series_reach_the_pool_that_runs_the_pod(testbed: Testbed) -> None:
    if not testbed.prometheus_url or not testbed.exporter_url:
        pytest.skip("no test bed Prometheus or exporter")
    run = uuid.uuid4().hex[:8]
    node, pod = f"power-{run}", f"chat-{run}"
    exporter = testbed.exporter()
    exporter.set_power(node, 90.0, gpus=2)
    exporter.set_power(node, 612.0, gpu=0, gpus=2, pod=(NS, pod))  # the pod holds GPU 0
    source = PrometheusSource(testbed.prometheus_url)
    # The default --power-query, on this test's node only (the bed is shared).
    selector = f'DCGM_FI_DEV_POWER_USAGE{{Hostname="{node}"}}'
    mine = f"max by (namespace, pod) (max_over_time({selector}[1h]))"
    try:
        found = until(lambda: _found(asyncio.run(source.series(mine))), timeout=20, interval=0.5)
    finally:
        exporter.drop_power(node)
    pods = {NS: [_pod(pod, "chat", node)]}
    drawn = attribute_draw(found, WORKLOADS, pods, {node: H100}, GPU_TYPES)
    assert drawn == {CHAT: {"H100": 612.0}}  # the idle GPU names no pod: no series counts it


def _found(
    answer: list[tuple[dict[str, str], float]] | MetricsUnavailable,
) -> list[tuple[dict[str, str], float]] | None:
    return answer if not isinstance(answer, MetricsUnavailable) and answer else None
