"""A Prometheus HTTP API on loopback that answers the source's batches from a table.

Beyond the seam, like moto for AWS: it parses each batch with the same PromQL parser, splits
it into its tagged parts and answers each from `values` (a query's series) and `updated` (when
a selector's series were last scraped), stamping every sample with `now`, as Prometheus
stamps an instant query with its evaluation time. `fail` turns a query's presence in a batch
into an HTTP status, so tests can fail one query and see what it costs the others.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import promql_parser


def canonical(text: str) -> str:
    return str(promql_parser.parse(text).prettify())


def queue_query(pool: str) -> str:
    """A pool's queue query, as tenants write them."""
    return f'sum(inference_queue_depth{{namespace="ns",pool="{pool}"}})'


def queue_selector(pool: str) -> str:
    """The selector `queue_query` reads, as the freshness probe names it."""
    return canonical(f'inference_queue_depth{{namespace="ns",pool="{pool}"}}')


def _parts(node: Any) -> Iterator[Any]:
    if isinstance(node, promql_parser.ParenExpr):
        yield from _parts(node.expr)
    elif isinstance(node, promql_parser.BinaryExpr) and str(node.op) == "or":
        yield from _parts(node.lhs)
        yield from _parts(node.rhs)
    else:
        yield node


class _Quiet(WSGIRequestHandler):
    def log_message(self, *_: Any) -> None:
        pass


@dataclass
class FakePrometheus:
    now: float = 1_000_000.0
    values: dict[str, list[float | str]] = field(default_factory=dict)  # query -> series
    updated: dict[str, float] = field(default_factory=dict)  # selector -> newest sample
    fail: dict[str, int] = field(default_factory=dict)  # query -> HTTP status of its batches
    expressions: list[str] = field(default_factory=list)  # every batch received
    probes: int = 0  # freshness probes evaluated

    def answer(self, expression: str) -> tuple[int, dict[str, Any]]:
        self.expressions.append(expression)
        result: list[dict[str, Any]] = []
        for part in _parts(promql_parser.parse(expression)):
            inner, tag = part.args[0], str(part.args[2].val)
            if "/" in tag:  # min(timestamp(SELECTOR)), the selector maybe in a label_replace
                probed = inner.expr.args[0]
                if isinstance(probed, promql_parser.Call):
                    probed = probed.args[0]
                selector = str(probed.prettify())
                self.probes += 1
                if selector in self.updated:
                    result.append(self._series({}, tag, self.updated[selector]))
                continue
            query = str(inner.expr.prettify())  # topk(2, QUERY)
            if query in self.fail:
                status = self.fail[query]
                error = "execution" if status == 422 else "internal"
                return status, {"status": "error", "errorType": error, "error": "boom"}
            for n, value in enumerate(self.values.get(query, [])[: int(inner.param.val)]):
                result.append(self._series({"instance": str(n)}, tag, value))
        return 200, {"status": "success", "data": {"resultType": "vector", "result": result}}

    def _series(self, labels: dict[str, str], tag: str, value: float | str) -> dict[str, Any]:
        return {"metric": {**labels, "gpufleet_part": tag}, "value": [self.now, str(value)]}

    def _app(self, environ: dict[str, Any], start: Any) -> list[bytes]:
        size = int(environ.get("CONTENT_LENGTH") or 0)
        form = parse_qs(environ["wsgi.input"].read(size).decode())
        status, body = self.answer(form["query"][0])
        start(f"{status} X", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    def serve(self) -> tuple[str, WSGIServer]:
        server = make_server("127.0.0.1", 0, self._app, handler_class=_Quiet)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return f"http://127.0.0.1:{server.server_port}", server
