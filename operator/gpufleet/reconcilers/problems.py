"""What went wrong for one object in a tick, as a condition's reason and message.

Built from the typed errors, which carry their own reason; a reason is never recovered
from message text. An error nobody typed says only its class: its text may hold what a
tenant must not read (another object's data, a credential), and the log has it."""

from __future__ import annotations

from dataclasses import dataclass

from gpufleet.drivers.base import DriverError
from gpufleet.metrics.problems import MetricsUnavailable

UNEXPECTED = "UnexpectedError"


@dataclass(frozen=True)
class Problem:
    reason: str  # CamelCase, for conditions and metrics
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> Problem:
        if isinstance(exc, MetricsUnavailable):
            return cls(exc.reason.value, str(exc))
        if isinstance(exc, DriverError):
            return cls(exc.reason, str(exc))
        return cls(UNEXPECTED, f"{type(exc).__name__}; the operator's log has the details")
