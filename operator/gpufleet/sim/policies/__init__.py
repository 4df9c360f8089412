"""The policies compared in one run: the planner, KEDA + Cluster Autoscaler (tuned and at
their defaults), and three references: static capacity, the reactive bound, the oracle."""

from __future__ import annotations

from enum import StrEnum

from gpufleet.sim.policy import Policy


class PolicyName(StrEnum):
    """The policies a run can compare; the command line offers exactly these."""

    GPUFLEET = "gpufleet"
    KEDA_CA = "keda-ca"
    KEDA_CA_DEFAULTS = "keda-ca-defaults"
    STATIC = "static"
    REACTIVE = "reactive"
    ORACLE = "oracle"


NAMES = tuple(p.value for p in PolicyName)


def make(name: str, reconcile_seconds: float = 10.0) -> Policy:
    if name == "gpufleet":
        from gpufleet.sim.policies.gpufleet import GpufleetPolicy

        return GpufleetPolicy(reconcile_seconds)
    if name == "keda-ca":
        from gpufleet.sim.policies.keda_ca import TUNED, KedaCaPolicy

        return KedaCaPolicy(TUNED, name)
    if name == "keda-ca-defaults":
        from gpufleet.sim.policies.keda_ca import DEFAULTS, KedaCaPolicy

        return KedaCaPolicy(DEFAULTS, name)
    if name == "static":
        from gpufleet.sim.policies.static import StaticPolicy

        return StaticPolicy()
    if name == "reactive":
        from gpufleet.sim.policies.reactive import ReactivePolicy

        return ReactivePolicy()
    if name == "oracle":
        from gpufleet.sim.policies.oracle import OraclePolicy

        return OraclePolicy()
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(NAMES)}")
