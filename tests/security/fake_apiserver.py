"""The few API server answers the least-privilege tests need, on loopback, beyond the HTTP
seam (the real kubernetes client talks to it): TokenReviews from a table of tokens,
SubjectAccessReviews from a set of users allowed `get` on /metrics, and Events recorded by
the namespace they were posted to. `fail` turns the reviews into that HTTP status."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from kubernetes.client import ApiClient, Configuration

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
EVENTS = re.compile(r"^/api/v1/namespaces/([^/]+)/events$")


@dataclass(frozen=True)
class User:
    username: str
    groups: tuple[str, ...] = ("system:serviceaccounts", "system:authenticated")
    uid: str = "0b8f3a52"


class _Quiet(WSGIRequestHandler):
    def log_message(self, *_: Any) -> None:
        pass


@dataclass
class FakeApiServer:
    tokens: dict[str, User] = field(default_factory=dict)  # token -> who holds it
    readers: set[str] = field(default_factory=set)  # usernames allowed `get` /metrics
    fail: int | None = None  # HTTP status of every review while set
    token_reviews: list[str] = field(default_factory=list)  # tokens reviewed, in order
    access_reviews: list[dict[str, Any]] = field(default_factory=list)  # their specs
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (namespace, body)
    url: str = ""

    def client(self) -> ApiClient:
        config = Configuration(host=self.url)
        config.retries = 0
        return ApiClient(config)

    def _app(self, environ: dict[str, Any], start: Any) -> list[bytes]:
        size = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(size) or b"{}")
        path = environ["PATH_INFO"]
        if path in (TOKEN_REVIEWS, ACCESS_REVIEWS) and self.fail is not None:
            return self._send(start, self.fail, {"kind": "Status", "message": "planted failure"})
        if path == TOKEN_REVIEWS:
            token = body["spec"]["token"]
            self.token_reviews.append(token)
            user = self.tokens.get(token)
            status: dict[str, Any] = {"authenticated": user is not None}
            if user is not None:
                status["user"] = {
                    "username": user.username,
                    "groups": list(user.groups),
                    "uid": user.uid,
                }
            return self._send(start, 201, {**body, "status": status})
        if path == ACCESS_REVIEWS:
            spec = body["spec"]
            self.access_reviews.append(spec)
            asked = spec.get("nonResourceAttributes") or {}
            allowed = (
                spec.get("user") in self.readers
                and asked.get("path") == "/metrics"
                and asked.get("verb") == "get"
            )
            return self._send(start, 201, {**body, "status": {"allowed": allowed}})
        matched = EVENTS.match(path)
        if matched and environ["REQUEST_METHOD"] == "POST":
            self.events.append((matched.group(1), body))
            return self._send(start, 201, body)
        return self._send(start, 404, {"kind": "Status", "message": f"no {path}"})

    @staticmethod
    def _send(start: Any, status: int, body: dict[str, Any]) -> list[bytes]:
        start(f"{status} X", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]


@contextmanager
def running(fake: FakeApiServer) -> Iterator[FakeApiServer]:
    server: WSGIServer = make_server("127.0.0.1", 0, fake._app, handler_class=_Quiet)
    fake.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
