"""parse_* on CRD-shaped specs: never raises, rejects only what the API server would, and
what it accepts dumps back to a spec the CRD accepts."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from gpufleet.api import Parsed, parse_budget, parse_pool, parse_provider

from .manifests import PARSERS, cel_messages, openapi_schema, schema_errors

FUZZ = settings(
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _leaf(node: dict[str, Any]) -> dict[str, Any]:
    """A scalar schema as plain JSON Schema, with short strings to keep examples small."""
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if "maxLength" in out:
        out["maxLength"] = min(out["maxLength"], 24)
        out["minLength"] = min(out.get("minLength", 0), out["maxLength"])
    return out


def _strategy(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values the schema accepts. Objects and lists are built here: hypothesis-jsonschema
    0.23.1 generates objects through a Hypothesis internal (`many.more`) that Hypothesis
    6.170 no longer has; scalars still come from it."""
    if node.get("type") == "object" and "properties" in node:
        required = set(node.get("required", []))
        fields = {name: _strategy(sub) for name, sub in node["properties"].items()}
        return st.fixed_dictionaries(
            {k: v for k, v in fields.items() if k in required},
            optional={k: v for k, v in fields.items() if k not in required},
        )
    if node.get("type") == "array":
        # The API server rejects duplicates in set lists and duplicate keys in map lists.
        keys = node.get("x-kubernetes-list-map-keys", [])
        list_type = node.get("x-kubernetes-list-type")
        return st.lists(
            _strategy(node["items"]),
            min_size=node.get("minItems", 0),
            max_size=min(node["maxItems"], 3),
            unique_by=(lambda item: tuple(item.get(k) for k in keys))
            if list_type == "map"
            else (lambda item: item)
            if list_type == "set"
            else None,
        )
    return from_schema(_leaf(node))


@functools.cache
def _specs(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    return _strategy(openapi_schema(kind)["properties"]["spec"])


def _is_value_or_errors(parsed: Parsed[Any]) -> bool:
    return parsed.ok != bool(parsed.errors) and all(
        e.field.startswith("spec") for e in parsed.errors
    )


@FUZZ
@given(_specs("ServingPool"))
def test_parse_pool_never_raises_on_crd_shaped_specs(spec: dict[str, Any]) -> None:
    assert _is_value_or_errors(parse_pool(spec))


@FUZZ
@given(_specs("CloudProvider"))
def test_parse_provider_never_raises_on_crd_shaped_specs(spec: dict[str, Any]) -> None:
    assert _is_value_or_errors(parse_provider(spec))


@FUZZ
@given(_specs("PowerBudget"))
def test_parse_budget_never_raises_on_crd_shaped_specs(spec: dict[str, Any]) -> None:
    assert _is_value_or_errors(parse_budget(spec))


# Duplicate keys in list-type map and set lists, which the API server rejects before CEL.
LIST_TYPE_MESSAGES = ("must be unique", "must not repeat")


@pytest.mark.parametrize("kind", sorted(PARSERS))
@FUZZ
@given(data=st.data())
def test_parse_rejects_schema_valid_specs_only_by_rules_the_server_has(
    kind: str, data: st.DataObject
) -> None:
    spec = data.draw(_specs(kind))
    allowed = (*cel_messages(kind), *LIST_TYPE_MESSAGES)

    errors = PARSERS[kind](spec).errors

    assert [str(e) for e in errors if not any(m in e.message for m in allowed)] == []


@pytest.mark.parametrize("kind", sorted(PARSERS))
@FUZZ
@given(data=st.data())
def test_parsed_spec_dumps_to_a_spec_the_crd_accepts(kind: str, data: st.DataObject) -> None:
    parsed = PARSERS[kind](data.draw(_specs(kind)))
    if parsed.value is None:
        return
    spec = parsed.value.model_dump(by_alias=True, mode="json", exclude_none=True)
    obj = {"apiVersion": "gpufleet.io/v1alpha1", "kind": kind, "metadata": {}, "spec": spec}

    assert schema_errors(obj) == []
