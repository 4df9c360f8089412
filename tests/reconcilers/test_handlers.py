"""What the operator registers with kopf, and what kopf may skip because of it."""

from __future__ import annotations

import kopf
from kubernetes.client import ApiClient

from gpufleet.metrics.exporter import OperatorMetrics
from gpufleet.reconcilers.config import RunConfig
from gpufleet.reconcilers.handlers import _configure, register


def test_no_handler_reads_the_diff_that_kopf_is_told_not_to_build() -> None:
    # _NoDiffBase leaves every object's essence empty: a change handler (on.create, on.update,
    # on.field) or a daemon would never see a change. Adding one must fail here first.
    registry = kopf.OperatorRegistry()
    register(registry, RunConfig(), ApiClient(), OperatorMetrics())

    assert registry._changing.get_all_handlers() == []
    assert registry._spawning.get_all_handlers() == []
    assert registry._indexing.get_all_handlers()  # the indexes are what it has


def test_kopf_builds_no_copy_of_a_watched_object() -> None:
    settings = kopf.OperatorSettings()
    _configure(settings)
    body = kopf.Body({"metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {"x": [1, 2]}})

    assert settings.persistence.diffbase_storage.build(body=body) == {}
