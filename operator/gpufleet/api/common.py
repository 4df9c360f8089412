"""Building blocks shared by the three kinds: base model, references, conditions."""

from __future__ import annotations

import functools
import operator
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "gpufleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Bounds that keep CEL cost estimates finite: the API server rejects rules over unbounded
# strings and lists, so every string and list carries a maximum.
NAME_MAX = 253
SHORT_MAX = 63
QUERY_MAX = 4096
TEXT_MAX = 1024
LIST_MAX = 64

Name = Annotated[
    str, Field(min_length=1, max_length=NAME_MAX, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
]
ShortText = Annotated[str, Field(min_length=1, max_length=SHORT_MAX)]


def extra(**schema: Any) -> dict[str, Any]:
    """Schema keywords that pydantic has no parameter for (CEL rules, list types)."""
    return schema


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    entry = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    return entry


class Model(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields rejected, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=False,
    )

    @model_validator(mode="after")
    def _unique_list_entries(self) -> Self:
        """What the API server enforces for `set` and `map` lists, so parsing agrees with it."""
        for name, shown_name, fields in _checked_lists(type(self)):
            items = getattr(self, name) or []
            if len(items) < 2:
                continue
            keys: list[Any] = list(items)
            if fields:
                key_of = operator.attrgetter(*(_attribute(items[0].__class__, k) for k in fields))
                keys = [key_of(item) for item in items]
            if len(set(keys)) == len(keys):
                continue
            seen: set[Any] = set()
            for key in keys:
                if key in seen:
                    shown = key[0] if isinstance(key, tuple) and len(key) == 1 else key
                    raise ValueError(f"`{shown_name}` must not repeat {shown}")
                seen.add(key)
        return self


@functools.cache
def _checked_lists(model: type[BaseModel]) -> tuple[tuple[str, str, tuple[str, ...] | None], ...]:
    """The model's `set` lists (keys None) and `map` lists (their key fields), found once per
    model: every status is built each tick, and most models have none."""
    out: list[tuple[str, str, tuple[str, ...] | None]] = []
    for name, info in model.model_fields.items():
        schema = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        kind = schema.get("x-kubernetes-list-type")
        if kind == "set":
            out.append((name, info.alias or name, None))
        elif kind == "map":
            declared = schema.get("x-kubernetes-list-map-keys")
            fields = tuple(str(k) for k in declared) if isinstance(declared, list) else ()
            out.append((name, info.alias or name, fields))
    return tuple(out)


@functools.cache
def _attribute(model: type[BaseModel], alias: str) -> str:
    for name, info in model.model_fields.items():
        if (info.alias or name) == alias:
            return name
    return alias


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(Model):
    """One aspect of an object's state, in the shape of metav1.Condition."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Type of condition in CamelCase, for example Ready.",
    )
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    observed_generation: int = Field(
        default=0, ge=0, description="The .metadata.generation the condition was set from."
    )
    last_transition_time: datetime = Field(
        description="Last time the condition changed from one status to another."
    )
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Machine-readable CamelCase reason for the last transition.",
    )
    message: str = Field(
        default="", max_length=32768, description="Human-readable details of the transition."
    )


Conditions = Annotated[
    list[Condition],
    Field(
        default_factory=list,
        max_length=16,
        description="Current state of the object, one entry per condition type.",
        json_schema_extra=extra(
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}
        ),
    ),
]


class SecretKeyRef(Model):
    """A key in a Secret. Only the reference is stored; the value never leaves the Secret."""

    name: Name = Field(description="Name of the Secret.")
    namespace: Name | None = Field(
        default=None,
        description="Namespace of the Secret; defaults to the operator's namespace for "
        "cluster-scoped objects.",
    )
    key: str = Field(
        min_length=1,
        max_length=SHORT_MAX,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key within the Secret's data.",
    )


class Label(Model):
    """A Kubernetes label as a named entry."""

    key: str = Field(
        min_length=1, max_length=316, description="Label key, for example gpufleet.io/pool."
    )
    value: str = Field(default="", max_length=SHORT_MAX, description="Label value.")


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Taint(Model):
    """A node taint that the node pool's nodes carry."""

    key: str = Field(
        min_length=1, max_length=316, description="Taint key, for example nvidia.com/gpu."
    )
    value: str = Field(default="", max_length=SHORT_MAX, description="Taint value.")
    effect: TaintEffect = Field(
        description="Taint effect: NoSchedule, PreferNoSchedule or NoExecute."
    )


class ObjectMeta(Model):
    """The part of metadata the models read; the rest passes through untouched."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    name: str
    namespace: str | None = None
    generation: int = 0
    uid: str | None = None
    resource_version: str | None = None
