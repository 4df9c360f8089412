"""A metrics exporter that plays the inference servers and the DCGM exporter.

Prometheus scrapes it like the real ones; tests set values over HTTP:

    GET    /metrics
    GET    /control/state
    PUT    /control/queue?namespace=N&pool=P&value=V     (DELETE: drop the series)
    PUT    /control/endpoint-picker?namespace=N&pool=P&average=A&ready=R   (DELETE: drop)
    PUT    /control/power?node=X&watts=W[&gpu=I][&gpus=K][&model=M][&namespace=N&pod=P]
    DELETE /control/power?node=X
    PUT    /control/scenario   body: scenario (JSON/YAML), replaces all values
    POST   /control/reset

Scenario (file via --scenario or PUT body):
    queue: [{namespace: default, pool: llama, value: 12}]
    endpointPicker: [{namespace: default, pool: llama, average: 3, ready: 4}]
    power: [{node: gpu-0, gpus: 8, watts: 350, modelName: NVIDIA H100 80GB HBM3}]

The endpoint picker of a Gateway API Inference Extension InferencePool exports its pool's
queue as `inference_pool_average_queue_size` and `inference_pool_ready_pods`, labelled `name`
(the InferencePool's); the scrape adds the namespace of the EPP pod, in `namespace` under a
ServiceMonitor. One exporter plays every EPP here, so it writes `namespace` itself (the scrape
honours its labels), as the scrape would have.

A GPU set with a namespace and pod carries them as labels, as the DCGM exporter's Kubernetes
mapping labels the GPUs a pod holds; setting it without them clears them.

Run: python -m gpufleet_testbed.exporter --port 9400 [--scenario FILE]
"""

from __future__ import annotations

import argparse
import json
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

QUEUE_METRIC = "inference_queue_depth"
# The DCGM exporter's name and labels, so PowerBudget queries written for real
# clusters (e.g. sum(DCGM_FI_DEV_POWER_USAGE)/1000) run unchanged here.
POWER_METRIC = "DCGM_FI_DEV_POWER_USAGE"
# GIE's endpoint picker (pkg/epp/metrics/metrics.go, v1.0 to v1.5): per InferencePool `name`.
EPP_AVERAGE_QUEUE_METRIC = "inference_pool_average_queue_size"
EPP_READY_PODS_METRIC = "inference_pool_ready_pods"
DEFAULT_MODEL = "NVIDIA H100 80GB HBM3"
_UUID_NAMESPACE = uuid.UUID("6f1d2a0c-7c5e-4c55-9a3c-6a0d1f0e2b11")


class BadRequestError(ValueError):
    pass


@dataclass
class Gpu:
    watts: float
    model: str
    namespace: str = ""  # of the pod holding it; empty: none
    pod: str = ""


@dataclass(frozen=True)
class EndpointPicker:
    """What one InferencePool's endpoint picker reports: the average queue of its pods
    with fresh metrics, and how many they are."""

    average: float
    ready: float


@dataclass
class State:
    queue: dict[tuple[str, str], float] = field(default_factory=dict)
    pickers: dict[tuple[str, str], EndpointPicker] = field(default_factory=dict)
    power: dict[str, list[Gpu]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set_queue(self, namespace: str, pool: str, value: float) -> None:
        with self.lock:
            self.queue[(namespace, pool)] = value

    def drop_queue(self, namespace: str, pool: str) -> None:
        with self.lock:
            self.queue.pop((namespace, pool), None)

    def set_picker(self, namespace: str, pool: str, average: float, ready: float) -> None:
        with self.lock:
            self.pickers[(namespace, pool)] = EndpointPicker(average, ready)

    def drop_picker(self, namespace: str, pool: str) -> None:
        with self.lock:
            self.pickers.pop((namespace, pool), None)

    def set_power(
        self,
        node: str,
        watts: float,
        *,
        gpu: int | None,
        gpus: int | None,
        model: str | None,
        pod: tuple[str, str] | None = None,
    ) -> None:
        with self.lock:
            current = self.power.get(node, [])
            count = gpus if gpus is not None else max(len(current), 1 if gpu is None else gpu + 1)
            model_name = model or (current[0].model if current else DEFAULT_MODEL)
            resized = [
                current[i] if i < len(current) else Gpu(0.0, model_name) for i in range(count)
            ]
            for i, device in enumerate(resized):
                if model:
                    device.model = model
                if gpu is None or i == gpu:
                    device.watts = watts
                    device.namespace, device.pod = pod or ("", "")
            self.power[node] = resized

    def drop_power(self, node: str) -> None:
        with self.lock:
            self.power.pop(node, None)

    def load(self, scenario: Mapping[str, Any]) -> None:
        queue = {
            (str(q["namespace"]), str(q["pool"])): float(q["value"])
            for q in scenario.get("queue", [])
        }
        pickers = {
            (str(e["namespace"]), str(e["pool"])): EndpointPicker(
                float(e["average"]), float(e["ready"])
            )
            for e in scenario.get("endpointPicker", [])
        }
        with self.lock:
            self.queue = queue
            self.pickers = pickers
            self.power = {}
        for p in scenario.get("power", []):
            self.set_power(
                str(p["node"]),
                float(p["watts"]),
                gpu=None,
                gpus=int(p.get("gpus", 8)),
                model=str(p["modelName"]) if "modelName" in p else None,
            )

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "queue": [
                    {"namespace": ns, "pool": pool, "value": v}
                    for (ns, pool), v in sorted(self.queue.items())
                ],
                "endpointPicker": [
                    {"namespace": ns, "pool": pool, "average": e.average, "ready": e.ready}
                    for (ns, pool), e in sorted(self.pickers.items())
                ],
                "power": [
                    {
                        "node": node,
                        "gpus": [
                            {"watts": g.watts, "modelName": g.model}
                            | ({"namespace": g.namespace, "pod": g.pod} if g.pod else {})
                            for g in gpus
                        ],
                    }
                    for node, gpus in sorted(self.power.items())
                ],
            }


class StateCollector(Collector):
    def __init__(self, state: State) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily(
            QUEUE_METRIC,
            "Requests waiting in the inference server's queue.",
            labels=["namespace", "pool"],
        )
        power = GaugeMetricFamily(
            POWER_METRIC,
            "Power draw (in W).",
            labels=[
                "gpu",
                "UUID",
                "device",
                "modelName",
                "Hostname",
                "pci_bus_id",
                "namespace",
                "pod",
            ],
        )
        average = GaugeMetricFamily(
            EPP_AVERAGE_QUEUE_METRIC,
            "Requests waiting per model server of the InferencePool, averaged over the "
            "servers whose metrics are fresh.",
            labels=["name", "namespace"],
        )
        ready = GaugeMetricFamily(
            EPP_READY_PODS_METRIC,
            "Model servers of the InferencePool whose metrics are fresh.",
            labels=["name", "namespace"],
        )
        with self.state.lock:
            for (namespace, pool), value in self.state.queue.items():
                queue.add_metric([namespace, pool], value)
            for (namespace, pool), picker in self.state.pickers.items():
                average.add_metric([pool, namespace], picker.average)
                ready.add_metric([pool, namespace], picker.ready)
            for node, gpus in self.state.power.items():
                for i, device in enumerate(gpus):
                    gpu_uuid = f"GPU-{uuid.uuid5(_UUID_NAMESPACE, f'{node}/{i}')}"
                    bus = f"00000000:{0x18 + i:02X}:00.0"
                    # An empty label is no label to Prometheus: an idle GPU names no pod.
                    labels = [str(i), gpu_uuid, f"nvidia{i}", device.model, node, bus]
                    power.add_metric([*labels, device.namespace, device.pod], device.watts)
        yield queue
        yield average
        yield ready
        yield power


def _one(query: Mapping[str, list[str]], key: str, *, required: bool = True) -> str | None:
    values = query.get(key)
    if not values:
        if required:
            raise BadRequestError(f"missing query parameter {key!r}")
        return None
    return values[-1]


def _number(text: str | None, key: str) -> float:
    try:
        return float(text if text is not None else "")
    except ValueError as exc:
        raise BadRequestError(f"{key} must be a number, got {text!r}") from exc


def make_handler(state: State, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            # A 1 s scrape interval would flood the log with GET /metrics.
            if not self.path.startswith("/metrics"):
                super().log_message(format, *args)

        def _reply(self, code: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self, method: str) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            try:
                if method == "GET" and url.path == "/metrics":
                    self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                    return
                if method == "GET" and url.path in ("/control/state", "/healthz"):
                    pass
                elif url.path == "/control/queue" and method == "PUT":
                    state.set_queue(
                        str(_one(query, "namespace")),
                        str(_one(query, "pool")),
                        _number(_one(query, "value"), "value"),
                    )
                elif url.path == "/control/queue" and method == "DELETE":
                    state.drop_queue(str(_one(query, "namespace")), str(_one(query, "pool")))
                elif url.path == "/control/endpoint-picker" and method == "PUT":
                    state.set_picker(
                        str(_one(query, "namespace")),
                        str(_one(query, "pool")),
                        _number(_one(query, "average"), "average"),
                        _number(_one(query, "ready"), "ready"),
                    )
                elif url.path == "/control/endpoint-picker" and method == "DELETE":
                    state.drop_picker(str(_one(query, "namespace")), str(_one(query, "pool")))
                elif url.path == "/control/power" and method == "PUT":
                    gpu = _one(query, "gpu", required=False)
                    gpus = _one(query, "gpus", required=False)
                    pod_namespace = _one(query, "namespace", required=False)
                    pod_name = _one(query, "pod", required=False)
                    if (pod_namespace is None) != (pod_name is None):
                        raise BadRequestError("namespace and pod go together")
                    state.set_power(
                        str(_one(query, "node")),
                        _number(_one(query, "watts"), "watts"),
                        gpu=int(_number(gpu, "gpu")) if gpu is not None else None,
                        gpus=int(_number(gpus, "gpus")) if gpus is not None else None,
                        model=_one(query, "model", required=False),
                        pod=(pod_namespace, pod_name) if pod_namespace and pod_name else None,
                    )
                elif url.path == "/control/power" and method == "DELETE":
                    state.drop_power(str(_one(query, "node")))
                elif url.path == "/control/scenario" and method == "PUT":
                    length = int(self.headers.get("Content-Length", "0"))
                    loaded = yaml.safe_load(self.rfile.read(length)) or {}
                    if not isinstance(loaded, dict):
                        raise BadRequestError("scenario must be a mapping")
                    state.load(loaded)
                elif url.path == "/control/reset" and method == "POST":
                    state.load({})
                else:
                    self._reply(404, b'{"error": "not found"}')
                    return
            except (BadRequestError, KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
                self._reply(400, json.dumps({"error": str(exc)}).encode())
                return
            self._reply(200, json.dumps(state.snapshot()).encode())

        def do_GET(self) -> None:
            self._handle("GET")

        def do_PUT(self) -> None:
            self._handle("PUT")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

    return Handler


def serve(host: str, port: int, scenario: Path | None = None) -> ThreadingHTTPServer:
    """Builds the server (not yet serving); tests may run it in a thread."""
    state = State()
    if scenario is not None:
        loaded = yaml.safe_load(scenario.read_text()) or {}
        state.load(loaded)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(state))
    return ThreadingHTTPServer((host, port), make_handler(state, registry))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gpufleet_testbed.exporter", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--scenario", type=Path)
    args = parser.parse_args(argv)
    server = serve(args.host, args.port, args.scenario)
    server.serve_forever()


if __name__ == "__main__":
    main()
