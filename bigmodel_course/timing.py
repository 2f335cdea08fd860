"""Per-call timing and latency percentiles, shared by the benchmarks and the service load test.

Only the standard library and numpy: a device sync (e.g. `torch.cuda.synchronize`) comes in as a callback.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class RatioSpread:
    """Round-by-round ratios of two functions timed in the same rounds: their median and quartiles."""

    median: float
    q1: float
    q3: float

    @property
    def measurable(self) -> bool:
        """False when 1 lies inside the interquartile range: no measurable difference between the two."""
        return not (self.q1 <= 1.0 <= self.q3)


def ratio_spread(base: Sequence[float], other: Sequence[float]) -> RatioSpread:
    """Spread of base[i] / other[i] over rounds i (e.g. a speed-up of `other` over `base` when both are seconds):
    median and quartiles (statistics.quantiles, exclusive method)."""
    if len(base) != len(other):
        raise ValueError(f"base has {len(base)} rounds, other {len(other)}: time both in the same rounds")
    if len(base) == 0:
        raise ValueError("no timings: need at least one round")
    if min(other) <= 0 or min(base) <= 0:
        raise ValueError("timings must be positive")
    ratios = [a / b for a, b in zip(base, other)]
    q1, median, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return RatioSpread(statistics.median(ratios), min(q1, median), max(q3, median))
