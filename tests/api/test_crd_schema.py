"""The generated CRDs: committed files match the models, and the schemas are structural and
bounded so the API server accepts them and can estimate the cost of every CEL rule."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gpufleet.api.crd import KINDS, drift

from .manifests import REPO, openapi_schema

KIND_NAMES = [k.kind for k in KINDS]
FORBIDDEN = ("$ref", "$defs", "definitions", "anyOf", "oneOf", "allOf", "not", "title", "const")


def _nodes(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node under spec and status, with its field path."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def _fields(kind: str) -> list[tuple[str, dict[str, Any]]]:
    properties = openapi_schema(kind)["properties"]
    return [node for top in ("spec", "status") for node in _nodes(properties[top], top)]


def test_committed_crds_match_the_models() -> None:
    assert drift(REPO / "crds") == []


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_schema_has_no_keyword_a_structural_schema_forbids(kind: str) -> None:
    bad = [f"{path}: {key}" for path, node in _fields(kind) for key in FORBIDDEN if key in node]

    assert bad == []


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_schema_has_no_closed_objects_beside_properties(kind: str) -> None:
    bad = [
        path
        for path, node in _fields(kind)
        if "properties" in node and "additionalProperties" in node
    ]

    assert bad == []


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_every_field_has_a_type(kind: str) -> None:
    untyped = [
        path
        for path, node in _fields(kind)
        if "type" not in node
        and not node.get("x-kubernetes-int-or-string")
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ]

    assert untyped == []


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_every_string_is_bounded(kind: str) -> None:
    unbounded = [
        path
        for path, node in _fields(kind)
        if node.get("type") == "string" and not {"maxLength", "enum", "format"} & node.keys()
    ]

    assert unbounded == []


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_every_array_is_bounded(kind: str) -> None:
    unbounded = [
        path
        for path, node in _fields(kind)
        if node.get("type") == "array" and "maxItems" not in node
    ]

    assert unbounded == []


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_every_cel_rule_has_a_message(kind: str) -> None:
    rules = [
        (path, rule)
        for path, node in _fields(kind)
        for rule in node.get("x-kubernetes-validations", [])
    ]

    assert rules
    assert [(path, r["rule"]) for path, r in rules if not r.get("message")] == []


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_every_field_has_a_description(kind: str) -> None:
    # Scalar list items (gpuTypes[]) are described by their list.
    bare = [
        path
        for path, node in _fields(kind)
        if not node.get("description") and not (path.endswith("[]") and node["type"] != "object")
    ]

    assert bare == []


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_every_list_declares_its_list_type(kind: str) -> None:
    undeclared = [
        path
        for path, node in _fields(kind)
        if node.get("type") == "array" and "x-kubernetes-list-type" not in node
    ]

    assert undeclared == []
