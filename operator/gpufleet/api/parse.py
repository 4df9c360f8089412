"""Parse user objects into models, returning errors as values that name the field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from gpufleet.api.names import pool_name_errors, provider_name_errors
from gpufleet.api.pool import ServingPoolSpec
from gpufleet.api.power import PowerBudgetSpec
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.api.tenancy import TenantPolicySpec

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class SpecError:
    """Why a spec cannot be used: the field path (camelCase, dotted) and what to fix."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class Parsed(Generic[M]):
    """A parsed spec or the errors that stopped it; never both."""

    value: M | None
    errors: tuple[SpecError, ...] = ()

    @property
    def ok(self) -> bool:
        return self.value is not None


def _path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _message(error: Any) -> str:
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def parse(model: type[M], data: Any, prefix: str = "spec") -> Parsed[M]:
    try:
        return Parsed(model.model_validate(data))
    except ValidationError as exc:
        errors = tuple(SpecError(_path(prefix, tuple(e["loc"])), _message(e)) for e in exc.errors())
        return Parsed(None, errors)


def _with_name_errors(parsed: Parsed[M], messages: tuple[str, ...]) -> Parsed[M]:
    if not messages:
        return parsed
    named = tuple(SpecError("metadata.name", m) for m in messages)
    return Parsed(None, named + parsed.errors)


def parse_pool(
    spec: Any, name: str | None = None, namespace: str | None = None
) -> Parsed[ServingPoolSpec]:
    """The pool's spec; with its `name` (and `namespace`), also whether the name fits the
    label values it becomes (api/names.py)."""
    parsed = parse(ServingPoolSpec, spec)
    return _with_name_errors(parsed, () if name is None else pool_name_errors(namespace, name))


def parse_provider(spec: Any, name: str | None = None) -> Parsed[CloudProviderSpec]:
    parsed = parse(CloudProviderSpec, spec)
    return _with_name_errors(parsed, () if name is None else provider_name_errors(name))


def parse_budget(spec: Any) -> Parsed[PowerBudgetSpec]:
    return parse(PowerBudgetSpec, spec)


def parse_tenant_policy(spec: Any) -> Parsed[TenantPolicySpec]:
    return parse(TenantPolicySpec, spec)
