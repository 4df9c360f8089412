"""Shared helpers: the example manifests, the generated CRD schemas, and a validator that
checks what the API server checks short of CEL (OpenAPI schema, unknown fields, list types)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from gpufleet.api import Parsed, parse_budget, parse_pool, parse_provider
from gpufleet.api.crd import KINDS, crd
from gpufleet.api.parse import parse_tenant_policy

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
INVALID = EXAMPLES / "invalid"

PARSERS: dict[str, Callable[[Any], Parsed[Any]]] = {
    "ServingPool": parse_pool,
    "CloudProvider": parse_provider,
    "PowerBudget": parse_budget,
    "TenantPolicy": parse_tenant_policy,
}


def parse_object(obj: dict[str, Any]) -> Parsed[Any]:
    """Parse a whole object as the operator's index does: the spec, and the name where it
    becomes a label value (api/names.py)."""
    meta = obj.get("metadata") or {}
    if obj["kind"] == "ServingPool":
        return parse_pool(obj["spec"], meta.get("name"), meta.get("namespace"))
    if obj["kind"] == "CloudProvider":
        return parse_provider(obj["spec"], meta.get("name"))
    return PARSERS[obj["kind"]](obj["spec"])


_HEADER = re.compile(r"\A# expect-error: (?P<expect>.+)\n# rule: (?P<rule>cel|schema|list-type)\n")


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def valid_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def valid_objects() -> list[tuple[str, dict[str, Any]]]:
    """(file:kind/name, object) for every gpufleet object among the valid examples."""
    return [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in valid_files()
        for doc in load_documents(path)
        if doc["kind"] in PARSERS
    ]


@dataclass(frozen=True)
class InvalidCase:
    """One invalid manifest: the text both error messages contain and who rejects it.

    rule: `schema` (OpenAPI schema or unknown field), `list-type` (duplicate key in a
    list-map or set) or `cel` (an x-kubernetes-validations rule, proven by the e2e suite).
    """

    path: Path
    expect: str
    rule: str
    obj: dict[str, Any]


def invalid_cases() -> list[InvalidCase]:
    cases = []
    for path in sorted(INVALID.glob("*.yaml")):
        header = _HEADER.match(path.read_text(encoding="utf-8"))
        if header is None:
            raise AssertionError(f"{path.name}: must start with `# expect-error:` and `# rule:`")
        (obj,) = load_documents(path)
        cases.append(InvalidCase(path, header["expect"].strip(), header["rule"], obj))
    return cases


@functools.cache
def openapi_schema(kind: str) -> dict[str, Any]:
    (match,) = [k for k in KINDS if k.kind == kind]
    schema: dict[str, Any] = crd(match)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _closed(schema: Any) -> Any:
    """Reject unknown fields, as the API server does with strict field validation."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _closed(value) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _list_type_errors(schema: dict[str, Any], data: Any, path: str) -> Iterator[str]:
    """Duplicates in x-kubernetes-list-type set and map lists, as the API server reports."""
    if isinstance(data, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in data:
                yield from _list_type_errors(sub, data[name], f"{path}.{name}")
    elif isinstance(data, list):
        list_type = schema.get("x-kubernetes-list-type")
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen: list[Any] = []
        for index, item in enumerate(data):
            ident = (
                tuple(item.get(k) for k in keys)
                if list_type == "map" and isinstance(item, dict)
                else item
            )
            if list_type in ("set", "map") and ident in seen:
                yield f"{path}[{index}]: Duplicate value: {ident!r}".lstrip(".")
            seen.append(ident)
            yield from _list_type_errors(schema.get("items", {}), item, f"{path}[{index}]")


@functools.cache
def _validator(kind: str) -> OAS30Validator:
    return OAS30Validator(_closed(openapi_schema(kind)), format_checker=oas30_format_checker)


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """What the API server would reject before CEL: schema, unknown fields and list types."""
    schema = openapi_schema(obj["kind"])
    validator = _validator(obj["kind"])
    errors = [line for e in validator.iter_errors(obj) for line in _server_style(e)]
    return errors + list(_list_type_errors(schema, obj, ""))


def _field_path(parts: Iterable[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


def _server_style(error: Any) -> Iterator[str]:
    """Name the offending field as the API server does: spec.queue.targetPerReplica.

    error is a jsonschema ValidationError (untyped).
    """
    path = _field_path(error.absolute_path)
    prefix = f"{path}." if path else ""
    if error.validator == "additionalProperties":
        known = error.schema.get("properties", {})
        for name in error.instance:
            if name not in known:
                yield f'unknown field "{prefix}{name}"'
    elif error.validator == "required":
        for name in error.validator_value:
            if name not in error.instance:
                yield f"{prefix}{name}: Required value"
    else:
        yield f"{path}: {error.message}"


def cel_messages(kind: str) -> list[str]:
    """The message of every x-kubernetes-validations rule in the kind's schema."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            found.extend(r["message"] for r in node.get("x-kubernetes-validations", []))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(openapi_schema(kind))
    return found
