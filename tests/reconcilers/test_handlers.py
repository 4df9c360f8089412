"""What the operator registers with kopf, and what kopf may skip because of it."""

from __future__ import annotations

import inspect

import kopf
from kubernetes.client import ApiClient

from gpufleet.metrics.exporter import OperatorMetrics
from gpufleet.reconcilers.config import RunConfig
from gpufleet.reconcilers.handlers import INDEXES, _configure, register


def test_no_handler_reads_the_diff_that_kopf_is_told_not_to_build() -> None:
    # _NoDiffBase leaves every object's essence empty: a change handler (on.create, on.update,
    # on.field) or a daemon would never see a change. Adding one must fail here first.
    registry = kopf.OperatorRegistry()
    register(registry, RunConfig(), ApiClient(), OperatorMetrics())

    assert registry._changing.get_all_handlers() == []
    assert registry._spawning.get_all_handlers() == []
    assert registry._indexing.get_all_handlers()  # the indexes are what it has


def test_every_index_handler_runs_on_the_event_loop_not_in_kopfs_threads() -> None:
    # kopf hands a plain function to a thread per watch event; a surge's pod events made
    # that thousands of hops a second. A coroutine is awaited where the event arrives.
    registry = kopf.OperatorRegistry()
    register(registry, RunConfig(), ApiClient(), OperatorMetrics())

    handlers = registry._indexing.get_all_handlers()
    assert len(handlers) == len(INDEXES)
    assert [h.id for h in handlers if not inspect.iscoroutinefunction(h.fn)] == []


def test_kopf_builds_no_copy_of_a_watched_object() -> None:
    settings = kopf.OperatorSettings()
    _configure(settings)
    body = kopf.Body({"metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {"x": [1, 2]}})

    assert settings.persistence.diffbase_storage.build(body=body) == {}


def test_pods_are_filtered_by_the_api_server_only_when_the_admin_asks() -> None:
    pods = kopf_resource("", "v1", "pods")
    deployments = kopf_resource("apps", "v1", "deployments")
    plain, filtered = kopf.OperatorSettings(), kopf.OperatorSettings()
    _configure(plain)
    _configure(filtered, "gpufleet.io/serving=true")

    assert list(plain.watching.label_selectors.collect(pods)) == []
    assert list(filtered.watching.label_selectors.collect(pods)) == ["gpufleet.io/serving=true"]
    assert list(filtered.watching.label_selectors.collect(deployments)) == []


def kopf_resource(group: str, version: str, plural: str) -> kopf.Resource:
    kind = plural.title().rstrip("s")
    return kopf.Resource(group, version, plural, kind=kind, singular=kind.lower(), namespaced=True)
