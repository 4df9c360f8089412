"""Prometheus scrapes the exporter that plays inference servers and DCGM."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pytest

from gpufleet_testbed import Testbed, probe
from gpufleet_testbed import exporter as exporter_server
from gpufleet_testbed.exporter_client import ExporterClient
from gpufleet_testbed.polling import until
from gpufleet_testbed.prometheus import SCRAPE_INTERVAL_SECONDS

pytestmark = pytest.mark.e2e

# One scrape interval, plus the query and the HTTP round trips on a busy
# 2-core machine.
VISIBLE_WITHIN_SECONDS = SCRAPE_INTERVAL_SECONDS + 1.5


def query(url: str, promql: str) -> list[dict[str, Any]]:
    status, text = probe.get(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
    assert status == 200, text
    body = json.loads(text)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.fixture
def prometheus_url(testbed: Testbed) -> str:
    if not testbed.prometheus_url:
        pytest.skip("no Prometheus: set GPUFLEET_PROMETHEUS_URL for an existing cluster")
    return testbed.prometheus_url


@pytest.fixture
def exporter(testbed: Testbed) -> ExporterClient:
    if not testbed.exporter_url:
        pytest.skip("no exporter: set GPUFLEET_EXPORTER_URL for an existing cluster")
    return testbed.exporter()


def _value_seen(url: str, promql: str, expected: float) -> float | None:
    result = query(url, promql)
    if result and float(result[0]["value"][1]) == expected:
        return time.monotonic()
    return None


def test_queue_depth_change_is_visible_within_one_scrape(
    prometheus_url: str, exporter: ExporterClient
) -> None:
    pool = f"pool-{uuid.uuid4().hex[:6]}"
    promql = f'inference_queue_depth{{namespace="e2e",pool="{pool}"}}'
    exporter.set_queue("e2e", pool, 1)
    # The series must exist first, so the timing below measures a change.
    until(lambda: _value_seen(prometheus_url, promql, 1), timeout=15, what="first sample")

    value = float(random.randint(2, 10_000))
    changed = time.monotonic()
    exporter.set_queue("e2e", pool, value)
    seen = until(
        lambda: _value_seen(prometheus_url, promql, value),
        timeout=10,
        interval=0.05,
        what=f"queue depth {value}",
    )

    assert seen - changed <= VISIBLE_WITHIN_SECONDS


def test_power_budget_query_sums_dcgm_power(prometheus_url: str, exporter: ExporterClient) -> None:
    nodes = [f"node-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    exporter.set_power(nodes[0], 700, gpus=8)
    exporter.set_power(nodes[1], 350, gpus=4)
    exporter.set_power(nodes[1], 100, gpu=0)
    selector = "|".join(nodes)
    promql = f'sum(DCGM_FI_DEV_POWER_USAGE{{Hostname=~"{selector}"}}) / 1000'
    expected = (8 * 700 + 3 * 350 + 100) / 1000

    until(lambda: _value_seen(prometheus_url, promql, expected), timeout=15, what="power sum")

    series = query(prometheus_url, f'DCGM_FI_DEV_POWER_USAGE{{Hostname="{nodes[1]}"}}')
    labels = series[0]["metric"]
    assert {"gpu", "UUID", "device", "modelName", "Hostname"} <= labels.keys()
    assert labels["UUID"].startswith("GPU-")
    assert labels["modelName"] == "NVIDIA H100 80GB HBM3"
    exporter.drop_power(nodes[0])
    exporter.drop_power(nodes[1])


def test_dropped_queue_series_goes_stale(prometheus_url: str, exporter: ExporterClient) -> None:
    """Missing metrics stay missing (the operator must then hold capacity)."""
    pool = f"pool-{uuid.uuid4().hex[:6]}"
    promql = f'inference_queue_depth{{namespace="e2e",pool="{pool}"}}'
    exporter.set_queue("e2e", pool, 5)
    until(lambda: _value_seen(prometheus_url, promql, 5), timeout=15, what="sample")

    exporter.drop_queue("e2e", pool)

    # Prometheus marks a vanished series stale at the next scrape.
    until(lambda: not query(prometheus_url, promql), timeout=15, what="series gone")


def test_exporter_serves_a_scenario_file(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(
        "queue:\n- {namespace: prod, pool: llama, value: 17}\n"
        "power:\n- {node: gpu-a, gpus: 2, watts: 600}\n"
    )
    server = exporter_server.serve("127.0.0.1", 0, scenario)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        status, text = probe.get(f"{url}/metrics")
        assert status == 200
        assert 'inference_queue_depth{namespace="prod",pool="llama"} 17.0' in text
        assert text.count("DCGM_FI_DEV_POWER_USAGE{") == 2

        ExporterClient(url).set_queue("prod", "llama", 3)
        assert 'pool="llama"} 3.0' in probe.get(f"{url}/metrics")[1]
        assert probe.get(f"{url}/control/queue?namespace=prod")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
