"""The least service that meets every queue-wait deadline: a taut string.

A FIFO fluid queue meets a wait of D steps for every request iff the work served by the
end of step s, S(s), is at least the work that arrived by step s - D, and it can never
exceed the work that arrived by step s. The curve between those two that is pulled tight
(the taut string) meets every deadline with the lowest peak rate and the least variation:
among all feasible service curves it minimises the sum of any convex function of the rate.
Its slope is the capacity the fleet must have ready in each step.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def taut_string(lo: FloatArray, up: FloatArray) -> FloatArray:
    """The shortest path from (0, lo[0]) to (n, lo[n]) with lo <= y <= up at every x.

    Requires lo <= up, lo[0] == up[0] and lo[n] == up[n]. Bends only at corridor points.
    """
    n = len(lo) - 1
    y = np.empty(n + 1)
    eps = 1e-9 * max(1.0, float(np.max(np.abs(up))))
    xa, ya = 0, float(lo[0])
    y[0] = ya
    while xa < n:
        width = 32
        while True:
            hi = min(n, xa + width)
            d = np.arange(1, hi - xa + 1, dtype=np.float64)
            su = (up[xa + 1 : hi + 1] - ya) / d  # the steepest slope each ceiling point allows
            sl = (lo[xa + 1 : hi + 1] - ya) / d  # the least slope each floor point demands
            cu = np.minimum.accumulate(su)
            cl = np.maximum.accumulate(sl)
            bad = np.flatnonzero(cl > cu + eps)
            if bad.size:
                j = int(bad[0])  # >= 1: at one step lo <= up
                if sl[j] > cu[j - 1] + eps:  # the floor rose above the funnel: bend on the ceiling
                    k = j - 1 - int(np.argmin(su[:j][::-1]))
                    slope = float(su[k])
                else:  # the ceiling fell below the funnel: bend on the floor
                    k = j - 1 - int(np.argmax(sl[:j][::-1]))
                    slope = float(sl[k])
                xb = xa + 1 + k
                break
            if hi == n:
                xb, slope = n, float(lo[n] - ya) / (n - xa)
                break
            width *= 4
        y[xa + 1 : xb + 1] = ya + slope * np.arange(1, xb - xa + 1)
        xa, ya = xb, float(y[xb])
    return y


def least_service(work: FloatArray, deadline_steps: int) -> FloatArray:
    """Work to serve in each step (length len(work) + deadline_steps) so that everything
    arriving in step i is served by the end of step i + deadline_steps, as evenly as can be."""
    n = len(work)
    cum = np.concatenate(([0.0], np.cumsum(work)))
    x = np.arange(n + deadline_steps + 1)
    up = cum[np.minimum(x, n)]  # arrived by step x - 1
    lo = np.where(x >= deadline_steps, cum[np.clip(x - deadline_steps, 0, n)], 0.0)
    return np.diff(taut_string(lo, up))


def window_max(x: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.int64]:
    """out[i] = max(x[i : i + width])."""
    if width <= 1 or len(x) == 0:
        return x.copy()
    padded = np.concatenate((x, np.zeros(width - 1, dtype=x.dtype)))
    return np.asarray(
        np.lib.stride_tricks.sliding_window_view(padded, width).max(axis=1), dtype=np.int64
    )
