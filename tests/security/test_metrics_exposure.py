"""/metrics is not for any pod that reaches the port: with `--metrics-auth=kubernetes` (the
default) a scrape needs a bearer token the API server accepts (TokenReview) whose user may
`get` /metrics (SubjectAccessReview); decisions are cached by the token's hash for a minute;
an outage of the API server refuses scrapes (503) rather than opening them, and no token
reaches a log. The chart grants the two reviews, gives scrapers a metrics-reader role,
scrapes with Prometheus's own token, and keeps an ingress-only NetworkPolicy on by default.

The unit tests answer the reviews with a fake API server at the HTTP seam; the e2e test asks
the test bed's real one with real ServiceAccount tokens."""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from chart.helm import MONITORING, of_kind, render
from gpufleet.metrics.auth import CachedReviewer, KubeReviewer, serve_metrics
from gpufleet_testbed import fleets
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.operator import OperatorProcess
from gpufleet_testbed.testbed import Testbed

from .fake_apiserver import FakeApiServer, User, running

READER_TOKEN = "reader-token-7d1e"
STRANGER_TOKEN = "stranger-token-2b9c"
PROMETHEUS = "system:serviceaccount:monitoring:prometheus"
STRANGER = "system:serviceaccount:team-a:default"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    fake = FakeApiServer(
        tokens={READER_TOKEN: User(PROMETHEUS), STRANGER_TOKEN: User(STRANGER)},
        readers={PROMETHEUS},
    )
    with running(fake):
        yield fake


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics_url(apiserver: FakeApiServer, clock: Clock) -> Iterator[str]:
    registry = CollectorRegistry()
    Counter("gpufleet_test_scrapes", "A metric the scrape must show.", registry=registry).inc()
    reviewer = CachedReviewer(KubeReviewer(apiserver.client()), ttl=60.0, size=4, clock=clock)
    server = serve_metrics(registry, 0, "127.0.0.1", reviewer)
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def scrape(
    url: str,
    token: str | None = None,
    path: str = "/metrics",
    method: str = "GET",
    authorization: str | None = None,
) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url + path, method=method)
    if token is not None:
        authorization = f"Bearer {token}"
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.read().decode(), dict(reply.headers)
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, refused.read().decode(), dict(refused.headers)


def test_a_scrape_without_a_token_is_refused_before_asking_the_api_server(
    metrics_url: str, apiserver: FakeApiServer
) -> None:
    status, body, headers = scrape(metrics_url)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert "gpufleet_test_scrapes" not in body
    for other in ("Basic cHJvbWV0aGV1czpwYXNz", "Bearer ", f"Token {READER_TOKEN}"):
        assert scrape(metrics_url, authorization=other)[0] == 401, other
    assert apiserver.token_reviews == []


def test_a_token_the_api_server_does_not_know_is_unauthenticated(
    metrics_url: str, apiserver: FakeApiServer
) -> None:
    status, body, _ = scrape(metrics_url, "made-up-token")
    assert (status, "gpufleet_test_scrapes" in body) == (401, False)
    assert apiserver.access_reviews == []  # nobody to authorize


def test_a_reader_token_gets_the_metrics_after_asking_for_get_on_the_metrics_url(
    metrics_url: str, apiserver: FakeApiServer
) -> None:
    status, body, _ = scrape(metrics_url, READER_TOKEN)
    assert status == 200
    assert "gpufleet_test_scrapes_total 1.0" in body
    (asked,) = apiserver.access_reviews
    assert asked["user"] == PROMETHEUS
    assert asked["groups"] == ["system:serviceaccounts", "system:authenticated"]
    assert asked["uid"] == "0b8f3a52"
    assert asked["nonResourceAttributes"] == {"path": "/metrics", "verb": "get"}


def test_a_token_whose_user_lacks_the_grant_is_forbidden(
    metrics_url: str, apiserver: FakeApiServer
) -> None:
    status, body, _ = scrape(metrics_url, STRANGER_TOKEN)
    assert (status, "gpufleet_test_scrapes" in body) == (403, False)


def test_decisions_are_cached_for_a_minute_then_asked_again(
    metrics_url: str, apiserver: FakeApiServer, clock: Clock
) -> None:
    for _ in range(3):
        assert scrape(metrics_url, READER_TOKEN)[0] == 200
        assert scrape(metrics_url, STRANGER_TOKEN)[0] == 403
    assert apiserver.token_reviews == [READER_TOKEN, STRANGER_TOKEN]
    clock.now += 61
    apiserver.readers.clear()  # the grant was revoked meanwhile
    assert scrape(metrics_url, READER_TOKEN)[0] == 403
    assert len(apiserver.token_reviews) == 3


def test_a_flood_of_made_up_tokens_evicts_old_decisions_instead_of_growing(
    metrics_url: str, apiserver: FakeApiServer
) -> None:
    assert scrape(metrics_url, READER_TOKEN)[0] == 200
    for n in range(10):  # the cache holds 4
        assert scrape(metrics_url, f"made-up-{n}")[0] == 401
    assert scrape(metrics_url, READER_TOKEN)[0] == 200
    assert apiserver.token_reviews.count(READER_TOKEN) == 2


def test_an_api_server_outage_refuses_scrapes_and_is_not_remembered(
    metrics_url: str, apiserver: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    apiserver.fail = 500
    with caplog.at_level(logging.DEBUG):
        status, body, _ = scrape(metrics_url, READER_TOKEN)
        assert (status, "gpufleet_test_scrapes" in body) == (503, False)
        assert scrape(metrics_url, STRANGER_TOKEN)[0] == 503
    apiserver.fail = None
    assert scrape(metrics_url, READER_TOKEN)[0] == 200
    assert "TokenReview" in caplog.text
    assert "planted failure" not in caplog.text  # the reply's body is not logged


def test_no_token_reaches_the_logs(
    metrics_url: str, apiserver: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        for token in (READER_TOKEN, STRANGER_TOKEN, "made-up-token"):
            scrape(metrics_url, token)
        apiserver.fail = 403
        scrape(metrics_url, "another-made-up-token")
    assert caplog.records
    for token in (READER_TOKEN, STRANGER_TOKEN, "made-up-token", "another-made-up-token"):
        assert token not in caplog.text


def test_only_gets_of_the_metrics_path_are_served(
    metrics_url: str, apiserver: FakeApiServer
) -> None:
    assert scrape(metrics_url, READER_TOKEN, path="/")[0] == 404
    assert scrape(metrics_url, READER_TOKEN, path="/metrics/../debug")[0] == 404
    assert scrape(metrics_url, READER_TOKEN, method="POST")[0] == 405
    assert apiserver.token_reviews == []


def test_without_auth_the_metrics_are_open_to_any_client() -> None:
    registry = CollectorRegistry()
    Counter("gpufleet_test_scrapes", "A metric the scrape must show.", registry=registry).inc()
    server = serve_metrics(registry, 0, "127.0.0.1", None)
    try:
        status, body, _ = scrape(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
    assert status == 200 and "gpufleet_test_scrapes_total" in body


# --- the chart -------------------------------------------------------------------------


def operator_args(docs: list[dict[str, Any]]) -> list[str]:
    (deployment,) = of_kind(docs, "Deployment")
    return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])


def test_the_chart_turns_metrics_auth_on_and_the_service_monitor_sends_a_token() -> None:
    docs = render(api_versions=MONITORING)
    assert "--metrics-auth=kubernetes" in operator_args(docs)
    (monitor,) = of_kind(docs, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"

    docs = render({"metrics.auth": "none"}, api_versions=MONITORING)
    assert "--metrics-auth=none" in operator_args(docs)
    (monitor,) = of_kind(docs, "ServiceMonitor")
    assert "bearerTokenFile" not in monitor["spec"]["endpoints"][0]


def test_the_default_network_policy_admits_only_the_two_ports_and_leaves_egress_open() -> None:
    (policy,) = of_kind(render(), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert "egress" not in policy["spec"]
    ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert sorted(ports) == ["health", "metrics"]

    monitoring = [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    (policy,) = of_kind(render({"networkPolicy.metricsFrom": monitoring}), "NetworkPolicy")
    metrics_rule, health_rule = policy["spec"]["ingress"]
    assert metrics_rule["from"] == monitoring
    assert "from" not in health_rule  # the kubelet's probes come from the node

    assert of_kind(render({"networkPolicy.ingressOnly": False}), "NetworkPolicy") == []
    (policy,) = of_kind(render({"networkPolicy.enabled": True}), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]


# --- the test bed's API server -----------------------------------------------------------


def _service_account_token(kubectl: Kubectl, namespace: str, name: str) -> str:
    kubectl.run("create", "serviceaccount", name, "-n", namespace)
    return kubectl.run("create", "token", name, "-n", namespace, "--duration=10m").stdout.strip()


def refusal(operator: OperatorProcess, token: str | None) -> int:
    with pytest.raises(urllib.error.HTTPError) as refused:
        operator.metrics(token)
    with refused.value:
        return refused.value.code


@pytest.mark.e2e
def test_scrapes_on_a_real_api_server_need_a_token_bound_to_the_metrics_reader(
    testbed: Testbed, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    fleets.install_crds(kubectl)  # the operator starts only with its CRDs and namespace
    # The chart's own metrics-reader ClusterRole, bound to one ServiceAccount only.
    (reader,) = [
        d
        for d in of_kind(render({"fullnameOverride": namespace}), "ClusterRole")
        if d["metadata"]["name"].endswith("-metrics-reader")
    ]
    kubectl.apply(reader)
    role = reader["metadata"]["name"]
    try:
        scraper = _service_account_token(kubectl, namespace, "scraper")
        stranger = _service_account_token(kubectl, namespace, "stranger")
        kubectl.run(
            "create",
            "clusterrolebinding",
            role,
            f"--clusterrole={role}",
            f"--serviceaccount={namespace}:scraper",
        )
        operator = OperatorProcess(
            testbed, tmp_path / "operator-metrics-auth.log", metrics_auth="kubernetes"
        )
        try:
            operator.start()
            assert refusal(operator, None) == 401
            assert "# HELP gpufleet_" in operator.metrics(scraper)
            assert refusal(operator, stranger) == 403
        finally:
            operator.stop()
        assert scraper not in operator.tail(1000) and stranger not in operator.tail(1000)
    finally:
        kubectl.run("delete", "clusterrolebinding,clusterrole", role, "--ignore-not-found")
