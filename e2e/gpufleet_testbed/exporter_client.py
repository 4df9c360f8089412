"""Setting the exporter's values from tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode


class ExporterError(RuntimeError):
    pass


@dataclass(frozen=True)
class ExporterClient:
    url: str  # e.g. http://127.0.0.1:PORT
    timeout: float = 5.0

    def _call(
        self,
        method: str,
        path: str,
        params: dict[str, object] | None = None,
        body: bytes | None = None,
    ) -> Any:
        query = (
            "?" + urlencode({k: v for k, v in (params or {}).items() if v is not None})
            if params
            else ""
        )
        request = urllib.request.Request(self.url + path + query, data=body, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            # Closed here: an HTTPError keeps its socket open until collected.
            with error:
                detail = error.read().decode(errors="replace")
            raise ExporterError(f"{method} {path} -> {error.code}: {detail}") from None

    def set_queue(self, namespace: str, pool: str, value: float) -> None:
        self._call("PUT", "/control/queue", {"namespace": namespace, "pool": pool, "value": value})

    def drop_queue(self, namespace: str, pool: str) -> None:
        self._call("DELETE", "/control/queue", {"namespace": namespace, "pool": pool})

    def set_endpoint_picker(self, namespace: str, pool: str, average: float, ready: int) -> None:
        """What InferencePool `pool`'s endpoint picker reports: `average` requests waiting
        per model server, over `ready` of them (`inference_pool_average_queue_size`,
        `inference_pool_ready_pods`)."""
        self._call(
            "PUT",
            "/control/endpoint-picker",
            {"namespace": namespace, "pool": pool, "average": average, "ready": ready},
        )

    def drop_endpoint_picker(self, namespace: str, pool: str) -> None:
        self._call("DELETE", "/control/endpoint-picker", {"namespace": namespace, "pool": pool})

    def set_power(
        self,
        node: str,
        watts: float,
        *,
        gpu: int | None = None,
        gpus: int | None = None,
        model: str | None = None,
        pod: tuple[str, str] | None = None,
    ) -> None:
        """Sets every GPU of `node` (or only `gpu`) to `watts`; `gpus` sizes the node.
        `pod` (namespace, name): the pod holding them, as the DCGM exporter labels them."""
        namespace, name = pod or (None, None)
        self._call(
            "PUT",
            "/control/power",
            {
                "node": node,
                "watts": watts,
                "gpu": gpu,
                "gpus": gpus,
                "model": model,
                "namespace": namespace,
                "pod": name,
            },
        )

    def drop_power(self, node: str) -> None:
        self._call("DELETE", "/control/power", {"node": node})

    def load_scenario(self, scenario: dict[str, Any]) -> None:
        self._call("PUT", "/control/scenario", body=json.dumps(scenario).encode())

    def reset(self) -> None:
        self._call("POST", "/control/reset")

    def state(self) -> Any:
        return self._call("GET", "/control/state")
