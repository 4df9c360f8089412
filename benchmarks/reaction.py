"""Reaction time on the test bed: from a new queue value being visible in Prometheus to the
scale request written to the API server (issue 7). Target: p95 <= 2 s (Cluster Autoscaler
scans every 10 s; KEDA polls every 30 s).

One pool, one Deployment, the whole operator (`gpufleet run`, period 1 s). Each surge sets
the exporter's queue depth, alternately high and low, so that every surge is a new decision
(no stabilization window, unbounded rate policies: one decision per surge). Per surge:

- scrape: the timestamp of the first Prometheus sample holding the new value;
- visible: the first time the pool's own query (an instant query, polled every 50 ms right
  after setting the exporter) returns the new value;
- written: the time our watch on the Deployment receives the new `spec.replicas`.

All three are on this machine's clock. `visible` is late by up to one poll (50 ms plus the
query), so visible-to-written is, if anything, a little short of the truth; scrape-to-written
bounds it from above. A random 0.5-1.5 s pause before each surge spreads the surges over the
phase of the scrape. The operator's tick and Prometheus' scrape both run every second on one
clock, so their relative phase, which decides most of the delay, stays fixed while an
operator runs: the surges therefore come in rounds, each with a freshly started operator (a
new phase), after it has ticked at least twice. Ends with one JSON line of the figures.

    python benchmarks/reaction.py                  # 10 rounds x 3 surges
    python benchmarks/reaction.py --quick          # 2 rounds x 2 surges, as the tests run it
    python benchmarks/reaction.py --background-pools 1000 --rounds 3   # at fleet scale
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import random
import statistics
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

NS = "bench-reaction"
POOL = "surge"
LOW, HIGH = 2, 7  # replicas (targetPerReplica 1); both fit on one 8-GPU node
POLL_S = 0.05
TARGET_P95_S = 2.0


@dataclass(frozen=True)
class Surge:
    value: int
    set_at: float
    scrape_at: float
    visible_at: float
    written_at: float

    @property
    def set_to_scrape(self) -> float:
        return self.scrape_at - self.set_at

    @property
    def scrape_to_visible(self) -> float:
        return self.visible_at - self.scrape_at

    @property
    def visible_to_written(self) -> float:
        return self.written_at - self.visible_at

    @property
    def scrape_to_written(self) -> float:
        return self.written_at - self.scrape_at


class DeploymentWatch:
    """`spec.replicas` of one Deployment as our watch receives it, with receipt times."""

    def __init__(self, kubeconfig: Path, namespace: str, name: str) -> None:
        from kubernetes import client, config, watch

        self._api = client.AppsV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
        self._watch = watch.Watch()
        self._namespace, self._name = namespace, name
        self.events: queue.Queue[tuple[float, int]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> DeploymentWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self._watch.stream(
                    self._api.list_namespaced_deployment,
                    self._namespace,
                    field_selector=f"metadata.name={self._name}",
                    timeout_seconds=60,
                ):
                    received = time.time()
                    self.events.put((received, int(event["object"].spec.replicas or 0)))
                    if self._stop.is_set():
                        return
            except Exception as exc:  # reconnect; a gap only delays, never fakes, a receipt
                if self._stop.is_set():
                    return
                common.log(f"watch restarted: {exc}")
                time.sleep(0.2)

    def wait_for(self, replicas: int, after: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no write of spec.replicas={replicas} within {timeout}s")
            try:
                received, seen = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if seen == replicas and received >= after:
                return received

    def stop(self) -> None:
        self._stop.set()
        self._watch.stop()


def _prometheus(url: str, query: str) -> Any:
    with urllib.request.urlopen(
        f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}", timeout=5
    ) as reply:
        return json.loads(reply.read())["data"]["result"]


def _visible(url: str, query: str, value: int, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = _prometheus(url, query)
        if result and float(result[0]["value"][1]) == value:
            return time.time()
        time.sleep(POLL_S)
    raise TimeoutError(f"queue value {value} not visible in Prometheus within {timeout}s")


def _scrape_time(url: str, value: int, after: float) -> float:
    """The timestamp of the first sample holding `value` taken after `after`."""
    series = f'inference_queue_depth{{namespace="{NS}",pool="{POOL}"}}[10s]'
    result = _prometheus(url, series)
    stamps = [float(t) for t, v in result[0]["values"] if float(v) == value and float(t) >= after]
    return min(stamps)


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_s": round(common.quantile(values, 0.5), 3),
        "p95_s": round(common.quantile(values, 0.95), 3),
        "mean_s": round(statistics.fmean(values), 3),
        "max_s": round(max(values), 3),
    }


def _ticks(operator: common.OperatorProcess) -> float:
    return common.histogram(operator.metrics(), "gpufleet_reconcile_duration_seconds").get(
        "count", 0.0
    )


def run(
    rounds: int, per_round: int, bed_name: str, keep: bool, seed: int, background: int = 0
) -> dict[str, Any]:
    rng = random.Random(seed)
    load_start = common.load_average()
    bed = common.start_bed(bed_name)
    operator = None
    watcher = None
    try:
        kubectl = bed.kubectl()
        common.install_crds(kubectl)
        kubeconfig = common.prepare_operator_identity(bed, kubectl)
        names, others, namespaces = common.many_pools(background, prefix="bench-bg")
        nodes = math.ceil((background + 64) / 8)
        common.apply_list(
            kubectl,
            [
                common.namespace(NS),
                *namespaces,
                common.provider(max_nodes=nodes, quota_gpus=nodes * 8),
                common.deployment(NS, POOL),
                common.pool(NS, POOL, POOL, max_replicas=HIGH),
            ],
        )
        exporter = bed.exporter()
        if background:  # other pools, all quiet (queue 0, one replica each)
            exporter.load_scenario(
                {"queue": [{"namespace": n, "pool": p, "value": 0} for n, p in names]}
            )
            common.apply_list(kubectl, others, batch=250)
        assert bed.prometheus_url
        prom = bed.prometheus_url
        query = common.queue_query(NS, POOL)
        exporter.set_queue(NS, POOL, LOW)
        watcher = DeploymentWatch(bed.kubeconfig, NS, POOL).start()
        results: list[Surge] = []
        current = LOW
        ticks: list[float] = []
        for round_ in range(rounds):
            operator = common.start_operator(bed, kubeconfig, "operator-reaction.log")
            if round_ == 0:
                # The first decision: settled at LOW.
                watcher.wait_for(LOW, 0.0, timeout=90 + background)
                common.until(
                    lambda: (
                        kubectl.json("get", "deployment", "-n", NS, POOL)["status"].get(
                            "readyReplicas"
                        )
                        == LOW
                    ),
                    90 + background,
                    "LOW replicas ready",
                )
            common.until(
                lambda op=operator: _ticks(op) >= 2,
                60 + background,
                "two ticks of the operator",
                0.1,
            )
            for i in range(per_round):
                value = HIGH if current == LOW else LOW
                time.sleep(rng.uniform(0.5, 1.5))
                set_at = time.time()
                exporter.set_queue(NS, POOL, value)
                visible_at = _visible(prom, query, value)
                written_at = watcher.wait_for(value, set_at, timeout=30 + background / 10)
                scrape_at = _scrape_time(prom, value, set_at - 1)
                surge = Surge(value, set_at, scrape_at, visible_at, written_at)
                results.append(surge)
                current = value
                common.log(
                    f"round {round_ + 1}/{rounds} surge {i + 1}/{per_round} -> {value}: "
                    f"scrape +{surge.set_to_scrape:.3f}s, visible +{surge.scrape_to_visible:.3f}s, "
                    f"written +{surge.visible_to_written:.3f}s"
                )
            reconcile = common.histogram(operator.metrics(), "gpufleet_reconcile_duration_seconds")
            ticks.append(reconcile["sum"] / reconcile["count"])
            operator.stop()
            operator = None
    finally:
        if watcher:
            watcher.stop()
        if operator:
            operator.stop()
        if not keep:
            common.stop_bed(bed_name)
    main_figures = [s.visible_to_written for s in results]
    return {
        "benchmark": "reaction",
        "surges": len(results),
        "p50_s": round(common.quantile(main_figures, 0.5), 3),
        "p95_s": round(common.quantile(main_figures, 0.95), 3),
        "target_p95_s": TARGET_P95_S,
        "meets_target": common.quantile(main_figures, 0.95) <= TARGET_P95_S,
        "breakdown": {
            "set_to_scrape": _summary([s.set_to_scrape for s in results]),
            "scrape_to_visible": _summary([s.scrape_to_visible for s in results]),
            "visible_to_written": _summary(main_figures),
            "scrape_to_written": _summary([s.scrape_to_written for s in results]),
        },
        "operator_period_s": 1.0,
        "prometheus_scrape_interval_s": 1.0,
        "poll_interval_s": POLL_S,
        "reconcile_mean_s": round(statistics.fmean(ticks), 4),
        "rounds": rounds,
        "background_pools": background,
        "load_average_start": load_start,
        "load_average_end": common.load_average(),
        "cpus": os.cpu_count(),
        "visible_to_written_s": [round(v, 3) for v in main_figures],
        "raw": [asdict(s) for s in results],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="operator restarts (phases)")
    parser.add_argument("--per-round", type=int, default=3, help="surges per round")
    parser.add_argument("--quick", action="store_true", help="2 rounds x 2 surges")
    parser.add_argument(
        "--background-pools", type=int, default=0, help="quiet pools beside the surging one"
    )
    parser.add_argument("--testbed", default="bench-reaction", help="test bed name")
    parser.add_argument("--keep", action="store_true", help="leave the test bed running")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    rounds, per_round = (2, 2) if args.quick else (args.rounds, args.per_round)
    figures = run(rounds, per_round, args.testbed, args.keep, args.seed, args.background_pools)
    line = json.dumps(figures)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(line, flush=True)
    return figures


if __name__ == "__main__":
    main()
