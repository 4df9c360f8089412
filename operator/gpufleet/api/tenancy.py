"""TenantPolicy: what the platform lets one namespace's pools do, and how a pool's priority is found.

A ServingPool is written by a tenant, so nothing in it may protect one team from another.
What does is owned by the platform admin: this cluster-scoped kind (tenants cannot write
cluster-scoped objects), PriorityClasses, ResourceQuotas and the CloudProviders. A pool may
narrow what a TenantPolicy allows, never widen it.

Why a cluster-scoped kind and not namespace labels or ResourceQuota `scopeSelector`: label
values cannot hold a list of class or provider names (63 characters, no commas), and the
ResourceQuota route needs the API server's `limitedResources` admission configuration, which
managed clusters often do not let the platform set. A typed object is checked by the API
server (schema and CEL), lives in Git beside the CloudProviders, and says what it grants in one
place. The ResourceQuota route is still worth adding where it can be set: it stops the *pods*
of a namespace from using a class, which gpufleet cannot do (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Self

from pydantic import Field, model_validator

from gpufleet.api.common import LIST_MAX, Conditions, Model, Name, cel, extra
from gpufleet.api.pool import DataClass, Jurisdiction

SYSTEM_PREFIX = "system-"

# Sensitivity order: a floor of Confidential raises Public and Internal pools to it.
DATA_CLASS_RANK = {
    DataClass.PUBLIC: 0,
    DataClass.INTERNAL: 1,
    DataClass.CONFIDENTIAL: 2,
    DataClass.RESTRICTED: 3,
}


class TenantDataPolicy(Model):
    """The least a namespace's pools must ask of a provider; a pool may ask for more."""

    min_data_class: DataClass = Field(
        default=DataClass.PUBLIC,
        description="Pools here are treated as at least this sensitive, whatever they declare.",
    )
    approved_subprocessors_only: bool = Field(
        default=True,
        description="Pools here use only providers whose subprocessor.approved is true, "
        "whatever they declare.",
    )
    allowed_jurisdictions: list[Jurisdiction] = Field(
        default_factory=list,
        max_length=LIST_MAX,
        description="Jurisdictions where the pools' data may be processed; empty allows any. "
        "A pool's own list narrows it further.",
        json_schema_extra=extra(**{"x-kubernetes-list-type": "set"}),
    )


class TenantBurst(Model):
    """Secondary providers the namespace's pools may burst to."""

    allowed: bool = Field(default=True, description="False: no pool here bursts at all.")
    providers: list[Name] = Field(
        default_factory=list,
        max_length=LIST_MAX,
        description="CloudProviders the pools may burst to; empty allows any secondary that "
        "the data policies allow. A pool's burst.providers narrows it further.",
        json_schema_extra=extra(**{"x-kubernetes-list-type": "set"}),
    )


class TenantPolicySpec(Model):
    """What the platform grants the pools of some namespaces."""

    model_config = Model.model_config | {
        "json_schema_extra": extra(
            **{
                "x-kubernetes-validations": [
                    cel(
                        "!has(self.priorityClasses) || "
                        "self.priorityClasses.all(c, !c.startsWith('system-'))",
                        "`priorityClasses` must not name system-* classes: they are the "
                        "cluster's own",
                        ".priorityClasses",
                    ),
                ]
            }
        )
    }

    namespaces: list[Name] = Field(
        min_length=1,
        max_length=LIST_MAX,
        description="Namespaces this policy governs. Where several policies name one "
        "namespace, each grant is the narrowest of theirs.",
        json_schema_extra=extra(**{"x-kubernetes-list-type": "set"}),
    )
    priority_classes: list[Name] = Field(
        default_factory=list,
        max_length=LIST_MAX,
        description="PriorityClasses the pools' workloads may run with. A pool whose pods name "
        "another class is planned at the cluster's default priority. Empty: only the default.",
        json_schema_extra=extra(**{"x-kubernetes-list-type": "set"}),
    )
    data_policy: TenantDataPolicy = Field(
        default_factory=TenantDataPolicy, description="The floor under the pools' data policies."
    )
    burst: TenantBurst = Field(
        default_factory=TenantBurst, description="Where the pools may burst."
    )

    @model_validator(mode="after")
    def _no_system_classes(self) -> Self:
        system = [c for c in self.priority_classes if c.startswith(SYSTEM_PREFIX)]
        if system:
            raise ValueError(
                "`priorityClasses` must not name system-* classes: they are the cluster's own: "
                f"{system}"
            )
        return self


class TenantPolicyStatus(Model):
    """What gpufleet made of the policy."""

    observed_generation: int = Field(default=0, ge=0, description="Generation the status is for.")
    pools: int = Field(default=0, ge=0, description="ServingPools the policy governs now.")
    conditions: Conditions


# --- what the planner and the simulator get ----------------------------------------------


@dataclass(frozen=True)
class NamespaceTerms:
    """The platform's grant to one namespace, merged from every TenantPolicy naming it.

    `policies` names them, for messages. `priority_classes` None: no policy names the
    namespace (then no named class is honoured either: see `resolve_priority`).
    `burst_providers` None: any secondary the data policies allow."""

    policies: tuple[str, ...] = ()
    priority_classes: frozenset[str] = frozenset()
    min_data_class: DataClass = DataClass.PUBLIC
    approved_subprocessors_only: bool = False
    allowed_jurisdictions: tuple[str, ...] = ()
    burst_allowed: bool = True
    burst_providers: frozenset[str] | None = None


UNGOVERNED = NamespaceTerms()


def _narrowest_jurisdictions(lists: list[list[str]]) -> tuple[str, ...]:
    """Intersection of the non-empty lists (empty allows any). Entries are compared as written:
    an `EU` in one and `DE` in another keep neither, which refuses more, never less."""
    bounded = [set(items) for items in lists if items]
    if not bounded:
        return ()
    common = set.intersection(*bounded)
    # Every list was bounded and nothing is common: nowhere is allowed. Say so with a code
    # that matches no provider rather than the empty tuple, which would allow any.
    return tuple(sorted(common)) if common else ("--",)


def merge_terms(policies: Iterable[tuple[str, TenantPolicySpec]]) -> dict[str, NamespaceTerms]:
    """Each namespace's terms from the policies naming it: the narrowest of each grant."""
    by_namespace: dict[str, list[tuple[str, TenantPolicySpec]]] = {}
    for name, spec in policies:
        for namespace in spec.namespaces:
            by_namespace.setdefault(namespace, []).append((name, spec))
    terms: dict[str, NamespaceTerms] = {}
    for namespace, named in by_namespace.items():
        specs = [spec for _, spec in sorted(named, key=lambda item: item[0])]
        providers = [frozenset(s.burst.providers) for s in specs if s.burst.providers]
        terms[namespace] = NamespaceTerms(
            policies=tuple(sorted(name for name, _ in named)),
            priority_classes=frozenset.intersection(
                *(frozenset(s.priority_classes) for s in specs)
            ),
            min_data_class=max(
                (s.data_policy.min_data_class for s in specs), key=DATA_CLASS_RANK.__getitem__
            ),
            approved_subprocessors_only=any(
                s.data_policy.approved_subprocessors_only for s in specs
            ),
            allowed_jurisdictions=_narrowest_jurisdictions(
                [s.data_policy.allowed_jurisdictions for s in specs]
            ),
            burst_allowed=all(s.burst.allowed for s in specs),
            burst_providers=frozenset.intersection(*providers) if providers else None,
        )
    return terms


@dataclass(frozen=True)
class PriorityClassInfo:
    """What gpufleet reads of a `scheduling.k8s.io/v1` PriorityClass."""

    name: str
    value: int
    global_default: bool = False


class PriorityRefusal(StrEnum):
    """Why the class a pool's pods name does not set the pool's priority."""

    SYSTEM_CLASS = "SystemPriorityClass"
    UNKNOWN_CLASS = "PriorityClassNotFound"
    NOT_ALLOWED = "PriorityClassNotAllowed"


@dataclass(frozen=True)
class PoolPriority:
    """A pool's priority and where it came from; `refused` says why a named class was not used."""

    value: int
    class_name: str | None  # the class whose value it is; None: no class, value 0
    refused: PriorityRefusal | None = None
    requested: str | None = None  # the class the pod template names


def default_priority(classes: Mapping[str, PriorityClassInfo]) -> tuple[int, str | None]:
    """What a pod that names no class gets: the globalDefault class (the lowest value if the
    cluster has several, as the API server's admission does not forbid that), else 0."""
    defaults = sorted(
        (c for c in classes.values() if c.global_default), key=lambda c: (c.value, c.name)
    )
    return (defaults[0].value, defaults[0].name) if defaults else (0, None)


def resolve_priority(
    requested: str | None,
    classes: Mapping[str, PriorityClassInfo],
    terms: NamespaceTerms,
) -> PoolPriority:
    """The pool's priority: the value of the class its pods run with, when the namespace may
    use that class; otherwise what a pod naming no class gets (never more)."""
    value, default_name = default_priority(classes)
    if not requested or requested == default_name:
        return PoolPriority(value, default_name, requested=requested or None)
    if requested.startswith(SYSTEM_PREFIX):
        refused = PriorityRefusal.SYSTEM_CLASS
    elif requested not in classes:
        refused = PriorityRefusal.UNKNOWN_CLASS
    elif requested not in terms.priority_classes:
        refused = PriorityRefusal.NOT_ALLOWED
    else:
        return PoolPriority(classes[requested].value, requested, requested=requested)
    # The default, but never above the class named: a refused low class must not raise a pool.
    if refused != PriorityRefusal.UNKNOWN_CLASS:
        value = min(value, classes[requested].value)
    return PoolPriority(value, default_name, refused, requested)
