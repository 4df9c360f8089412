"""PowerBudget: a kW cap over sites or providers; budgets nest (fleet ⊇ region ⊇ site)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Self

from pydantic import Field, field_validator, model_validator

from gpufleet.api.common import (
    LIST_MAX,
    QUERY_MAX,
    SHORT_MAX,
    Conditions,
    Model,
    Name,
    cel,
    extra,
)

Site = Annotated[
    str, Field(min_length=1, max_length=SHORT_MAX, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
]
HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class MeasurementType(StrEnum):
    PROMETHEUS = "Prometheus"
    ESTIMATE = "Estimate"


class Weekday(StrEnum):
    MONDAY = "Monday"
    TUESDAY = "Tuesday"
    WEDNESDAY = "Wednesday"
    THURSDAY = "Thursday"
    FRIDAY = "Friday"
    SATURDAY = "Saturday"
    SUNDAY = "Sunday"


class Scope(Model):
    """Which node pools draw from the budget. Empty lists select every node pool."""

    sites: list[Site] = Field(
        default_factory=list,
        max_length=LIST_MAX,
        description="Node pools whose site is listed. Empty: any site.",
        json_schema_extra=extra(**{"x-kubernetes-list-type": "set"}),
    )
    providers: list[Name] = Field(
        default_factory=list,
        max_length=LIST_MAX,
        description="Node pools of the listed CloudProviders. Empty: any provider.",
        json_schema_extra=extra(**{"x-kubernetes-list-type": "set"}),
    )


class PrometheusMeasurement(Model):
    """Power read from Prometheus."""

    query: str = Field(
        min_length=1,
        max_length=QUERY_MAX,
        description="PromQL returning the scope's power draw in watts as one sample, for "
        'example sum(DCGM_FI_DEV_POWER_USAGE{site="fra1"}).',
    )


class Measurement(Model):
    """How power is measured: set exactly the member named by type."""

    model_config = Model.model_config | {
        "json_schema_extra": extra(
            **{
                "x-kubernetes-validations": [
                    cel(
                        "self.type == 'Prometheus' ? has(self.prometheus) : !has(self.prometheus)",
                        "set `prometheus` exactly when `type` is Prometheus",
                    )
                ]
            }
        )
    }

    type: MeasurementType = Field(
        default=MeasurementType.ESTIMATE,
        description="Prometheus (measured, estimate as fallback) or Estimate (node-pool watts).",
    )
    prometheus: PrometheusMeasurement | None = Field(
        default=None, description="Settings when type is Prometheus."
    )

    @model_validator(mode="after")
    def _one_member(self) -> Self:
        if (self.type == MeasurementType.PROMETHEUS) != (self.prometheus is not None):
            raise ValueError("set `prometheus` exactly when `type` is Prometheus")
        return self


class Window(Model):
    """A recurring period with its own cap, such as a grid's peak hours."""

    model_config = Model.model_config | {
        "json_schema_extra": extra(
            **{
                "x-kubernetes-validations": [
                    cel(
                        "self.startTime != self.endTime",
                        "`startTime` and `endTime` must differ",
                        ".endTime",
                    ),
                ]
            }
        )
    }

    name: str = Field(min_length=1, max_length=SHORT_MAX, description="Name of the window.")
    start_time: str = Field(
        max_length=5, pattern=HHMM, description="Start, HH:MM in UTC, inclusive."
    )
    end_time: str = Field(
        max_length=5,
        pattern=HHMM,
        description="End, HH:MM in UTC, exclusive; before startTime crosses midnight.",
    )
    days: list[Weekday] = Field(
        default_factory=list,
        max_length=7,
        description="Days the window applies (by its start). Empty: every day.",
        json_schema_extra=extra(**{"x-kubernetes-list-type": "set"}),
    )
    cap_kilowatts: int = Field(
        ge=0, le=10_000_000, description="Cap in kW while the window is open."
    )

    @model_validator(mode="after")
    def _differ(self) -> Self:
        if self.start_time == self.end_time:
            raise ValueError("`startTime` and `endTime` must differ")
        return self


class PowerBudgetSpec(Model):
    """A cap on the power drawn by the node pools in scope."""

    cap_kilowatts: int = Field(ge=0, le=10_000_000, description="Cap in kW outside any window.")
    scope: Scope = Field(
        default_factory=Scope, description="Node pools that draw from this budget."
    )
    parent_ref: Name | None = Field(
        default=None,
        description="The PowerBudget this one nests inside; its scope should lie within the parent's.",
    )
    measurement: Measurement = Field(
        default_factory=Measurement, description="How the draw is measured."
    )
    headroom_percent: int = Field(
        default=5,
        ge=0,
        le=50,
        description="Plan to stay this far below the cap, for measurement lag and load spikes.",
    )
    windows: list[Window] = Field(
        default_factory=list,
        max_length=16,
        description="Periods with other caps; the lowest cap of the open windows applies.",
        json_schema_extra=extra(
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
        ),
    )

    @field_validator("windows")
    @classmethod
    def _unique(cls, windows: list[Window]) -> list[Window]:
        names = [w.name for w in windows]
        if len(set(names)) != len(names):
            raise ValueError("`windows[].name` must be unique")
        return windows


class PowerBudgetStatus(Model):
    """What gpufleet measured and allowed."""

    observed_generation: int = Field(default=0, ge=0, description="Generation the status is for.")
    drawn_watts: int | None = Field(
        default=None, ge=0, description="Power drawn, measured or estimated."
    )
    planned_watts: int = Field(default=0, ge=0, description="Power the plan is expected to draw.")
    allowed_watts: int = Field(default=0, ge=0, description="The cap in force, less headroom.")
    active_window: str | None = Field(
        default=None, max_length=SHORT_MAX, description="Window in force."
    )
    conditions: Conditions


class PowerBudget(Model):
    model_config = Model.model_config | {"extra": "ignore"}

    api_version: str
    kind: str
    spec: PowerBudgetSpec
    status: PowerBudgetStatus | None = None
