"""Per-call timing and latency percentiles, shared by the benchmarks and the service load test.

Only the standard library and numpy: a device sync (e.g. `torch.cuda.synchronize`) comes in as a callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def timed(fn: Callable[[], T], sync: Callable[[], None] | None = None) -> tuple[T, float]:
    """Call `fn()` once; return (its result, wall seconds). `sync` runs before the clock starts and before it stops."""
    if sync is not None:
        sync()
    start = time.perf_counter()
    result = fn()
    if sync is not None:
        sync()
    return result, time.perf_counter() - start


def percentiles(samples: Sequence[float], qs: Sequence[float] = (50, 99)) -> tuple[float, ...]:
    """The `qs` percentiles (0-100) of `samples`, in the order of `qs`: numpy.percentile, linear interpolation."""
    if len(samples) == 0:
        raise ValueError("no timings: need at least one sample for percentiles")
    bad = [q for q in qs if not (isinstance(q, (int, float)) and 0 <= q <= 100)]
    if bad:
        raise ValueError(f"percentiles must lie in [0, 100], got {bad}")
    values = np.asarray(samples, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"samples must be a flat sequence of numbers, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"samples must be finite, got {values[~np.isfinite(values)][:3].tolist()}")
    return tuple(float(v) for v in np.percentile(values, list(qs), method="linear"))
