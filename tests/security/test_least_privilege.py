"""The operator asks for no more than it uses: with `operator.watchNamespaces` its pods and
Events grants are namespaced (tests/chart/test_rbac.py checks the rendered rules), which
holds only if no Event goes outside those namespaces. A pool's Events go to its namespace;
Events about cluster-scoped kinds go to `default`, the only namespace where the API server
accepts them (tests/e2e checks that on a real one), and the chart grants that alone there."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gpufleet.reconcilers.kube import Kube

from .fake_apiserver import FakeApiServer, running


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    with running(FakeApiServer()) as fake:
        yield fake


@pytest.mark.asyncio
async def test_events_about_cluster_scoped_kinds_go_to_default(
    apiserver: FakeApiServer,
) -> None:
    kube = Kube(apiserver.client(), "gpufleet-ops")
    await kube.event("CloudProvider", None, "aws-eu", "uid-1", "QuotaExceeded", "no quota left")
    await kube.event("PowerBudget", None, "site-a", "uid-2", "CapReached", "at cap", warning=True)
    await kube.event("ServingPool", "team-a", "chat", None, "ScaledUp", "3 -> 4")
    assert [namespace for namespace, _ in apiserver.events] == ["default", "default", "team-a"]
    provider_event = apiserver.events[0][1]
    assert provider_event["involvedObject"]["kind"] == "CloudProvider"
    assert "namespace" not in provider_event["involvedObject"]  # the object is cluster-scoped
    assert provider_event["metadata"]["namespace"] == "default"
