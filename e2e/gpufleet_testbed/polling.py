"""Bounded waits: poll a condition until it holds or a deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeoutError(TimeoutError):
    pass


class GiveUpError(RuntimeError):
    """Raised by a probe when waiting longer cannot help (e.g. the process died)."""


def until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
    details: Callable[[], str] | None = None,
) -> T:
    """Returns the first truthy value of `probe()`; exceptions count as "not yet".

    The last exception or value is kept for the timeout message, which is what
    one needs to see when a component never became ready; `details()`, if given,
    is appended to it (e.g. the tail of a log).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
        except GiveUpError:
            raise
        except Exception as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}"
            raise WaitTimeoutError(f"{message}\n{details()}" if details else message)
        time.sleep(interval)
