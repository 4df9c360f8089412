"""/metrics behind the API server's word: a scrape carries a bearer token that a TokenReview
accepts and whose user a SubjectAccessReview lets `get` the non-resource URL /metrics, as
controller-runtime's secure metrics and kube-rbac-proxy decide. The metrics name every
tenant's pools, queues and providers, so they are not for any pod that can reach the port.

Served over plain HTTP: the token travels unencrypted inside the cluster (TLS is left to a
later change; docs/security.md). Decisions are cached by the token's SHA-256 for a minute, so
a scraper costs the API server one TokenReview and one SubjectAccessReview a minute at most."""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from enum import Enum
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, make_wsgi_app
from urllib3.exceptions import HTTPError

log = logging.getLogger(__name__)

# (api group, resource, verb) of the reviews below; the chart grants them with `metrics.auth:
# kubernetes` (tests/chart/test_rbac.py).
CALLS = (
    ("authentication.k8s.io", "tokenreviews", "create"),
    ("authorization.k8s.io", "subjectaccessreviews", "create"),
)
PATH = "/metrics"
AUTH_MODES = ("kubernetes", "none")
# A review that hangs must not hold a scrape (Prometheus gives up after its timeout anyway).
_REVIEW_TIMEOUT_SECONDS = 5

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Verdict(Enum):
    ALLOWED = "200 OK"
    UNAUTHENTICATED = "401 Unauthorized"
    FORBIDDEN = "403 Forbidden"


class ReviewUnavailable(Exception):
    """The API server gave no verdict (unreachable, refused the review, timed out); `reason`
    says which, without any reply body."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Reviewer(Protocol):
    def review(self, token: str) -> Verdict: ...


class KubeReviewer:
    """Asks the API server: who holds this token (TokenReview), and may they get /metrics
    (SubjectAccessReview, with the user's groups, uid and extra as the review returned them)."""

    def __init__(self, api: ApiClient) -> None:
        self.authn = client.AuthenticationV1Api(api)
        self.authz = client.AuthorizationV1Api(api)

    def review(self, token: str) -> Verdict:
        body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
        reviewed = _ask("TokenReview", self.authn.create_token_review, body)
        status = reviewed.status
        if status is None or not status.authenticated or status.user is None:
            return Verdict.UNAUTHENTICATED
        user = status.user
        access = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user.username,
                groups=user.groups,
                uid=user.uid,
                extra=user.extra,
                non_resource_attributes=client.V1NonResourceAttributes(path=PATH, verb="get"),
            )
        )
        decided = _ask("SubjectAccessReview", self.authz.create_subject_access_review, access)
        allowed = decided.status is not None and bool(decided.status.allowed)
        return Verdict.ALLOWED if allowed else Verdict.FORBIDDEN


def _ask(kind: str, call: Callable[..., Any], body: Any) -> Any:
    try:
        return call(body, _request_timeout=_REVIEW_TIMEOUT_SECONDS)
    except ApiException as exc:
        raise ReviewUnavailable(f"{kind}: {exc.reason or 'error'} ({exc.status})") from None
    except (HTTPError, OSError) as exc:
        raise ReviewUnavailable(f"{kind}: {type(exc).__name__}") from None


class CachedReviewer:
    """A reviewer's verdicts, kept `ttl` seconds by the token's hash (never the token), at most
    `size` of them: a flood of made-up tokens evicts the oldest, it cannot grow memory. A
    review the API server could not give is not kept, so the next scrape asks again. A token
    revoked meanwhile keeps its verdict until the entry expires."""

    def __init__(
        self,
        inner: Reviewer,
        ttl: float = 60.0,
        size: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner, self.ttl, self.size, self.clock = inner, ttl, size, clock
        self._entries: OrderedDict[bytes, tuple[float, Verdict]] = OrderedDict()
        self._lock = threading.Lock()

    def review(self, token: str) -> Verdict:
        key = hashlib.sha256(token.encode()).digest()
        with self._lock:
            kept = self._entries.get(key)
            if kept is not None and kept[0] > self.clock():
                return kept[1]
        # Outside the lock: one slow review must not hold other scrapers' cached answers.
        verdict = self.inner.review(token)
        with self._lock:
            self._entries[key] = (self.clock() + self.ttl, verdict)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return verdict


def protect(app: WsgiApp, reviewer: Reviewer) -> WsgiApp:
    """`app` for GETs of /metrics whose bearer token the reviewer allows: 401 without a token
    or with one the API server does not know, 403 when its user may not get /metrics, 503
    when no verdict could be had."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return _reply(start_response, "404 Not Found")
        if environ.get("REQUEST_METHOD") != "GET":
            return _reply(start_response, "405 Method Not Allowed", [("Allow", "GET")])
        scheme, _, token = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _reply(start_response, Verdict.UNAUTHENTICATED.value, _CHALLENGE)
        try:
            verdict = reviewer.review(token)
        except ReviewUnavailable as exc:
            log.warning("metrics request not reviewed: %s", exc.reason, extra={"path": PATH})
            return _reply(start_response, "503 Service Unavailable")
        if verdict is Verdict.ALLOWED:
            return app(environ, start_response)
        log.debug("metrics request refused: %s", verdict.value)
        challenge = _CHALLENGE if verdict is Verdict.UNAUTHENTICATED else []
        return _reply(start_response, verdict.value, challenge)

    return guarded


_CHALLENGE = [("WWW-Authenticate", 'Bearer realm="gpufleet metrics"')]


def _reply(
    start_response: Callable[..., Any], status: str, headers: list[tuple[str, str]] | None = None
) -> list[bytes]:
    body = f"{status.split(' ', 1)[1]}\n".encode()
    start_response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        + (headers or []),
    )
    return [body]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, *_: Any) -> None:
        # One line per scrape is noise; refusals are logged by `protect`.
        pass


def serve_metrics(
    registry: CollectorRegistry, port: int, address: str, reviewer: Reviewer | None
) -> WSGIServer:
    """Serve `registry` on `address:port` in a daemon thread: behind `reviewer` (see `protect`)
    or, without one, open to every client as prometheus_client serves it."""
    app: WsgiApp = make_wsgi_app(registry)
    if reviewer is not None:
        app = protect(app, reviewer)
    server_class = _Server6 if ":" in address else _Server
    server = make_server(address, port, app, server_class, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
