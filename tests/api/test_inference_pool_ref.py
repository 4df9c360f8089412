"""spec.inferencePoolRef: a pool behind a GIE InferencePool may leave out queue.query (its
endpoint picker's queue is read instead); any other pool must give one. The CEL rule's own
run is on a real API server (examples/invalid/pool-queue-without-query.yaml, tests/e2e)."""

from __future__ import annotations

from typing import Any

from gpufleet.api import parse_pool

from .manifests import cel_messages, schema_errors

MESSAGE = "`queue.query` is required unless `inferencePoolRef` is set"


def _spec(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "scaleTargetRef": {"name": "llm"},
        "gpuTypes": ["H100"],
        "queue": {"targetPerReplica": 4},
        "maxReplicas": 8,
    }
    return {**spec, **changes}


def test_a_pool_behind_an_inference_pool_needs_no_query() -> None:
    parsed = parse_pool(_spec(inferencePoolRef={"name": "llm-gie"}))

    assert parsed.errors == ()
    assert parsed.value is not None
    assert parsed.value.queue.query is None
    assert parsed.value.inference_pool_ref is not None
    assert parsed.value.inference_pool_ref.name == "llm-gie"


def test_a_pool_without_an_inference_pool_must_give_a_query() -> None:
    parsed = parse_pool(_spec())

    assert parsed.value is None
    assert [e.message for e in parsed.errors] == [MESSAGE]


def test_a_pool_behind_an_inference_pool_may_still_give_its_own_query() -> None:
    parsed = parse_pool(
        _spec(
            inferencePoolRef={"name": "llm-gie"},
            queue={"query": "sum(vllm:num_requests_waiting)", "targetPerReplica": 4},
        )
    )

    assert parsed.value is not None
    assert parsed.value.queue.query == "sum(vllm:num_requests_waiting)"


def test_the_schema_leaves_the_query_to_the_cel_rule() -> None:
    pool = {
        "apiVersion": "gpufleet.io/v1alpha1",
        "kind": "ServingPool",
        "metadata": {"name": "llm", "namespace": "ns"},
        "spec": _spec(),
    }

    assert schema_errors(pool) == []
    assert MESSAGE in cel_messages("ServingPool")


def test_an_inference_pool_ref_names_a_kubernetes_object() -> None:
    parsed = parse_pool(_spec(inferencePoolRef={"name": "Not_A_Name"}))

    assert parsed.value is None
    assert parsed.errors[0].field == "spec.inferencePoolRef.name"
