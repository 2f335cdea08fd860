"""Canary releases: a fraction of a model's traffic goes to a candidate version, stored next to the promoted pointer.

    <root>/<name>/canary.json   {"version": "v3", "fraction": 0.1}

The service reads this small file on every request (like promoted.json) and answers a request with the
candidate with probability `fraction`; every answer names its version, and the service's metrics count
items and latency by model and version, so the two versions can be compared on live traffic.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass

from .checks import RegistryError, is_version
from .registry import DamagedEntry, ModelRegistry
from ..files import atomic_write_json

CANARY_FILE = "canary.json"


@dataclass(frozen=True)
class Canary:
    """The candidate version and the fraction of requests it answers."""

    version: str
    fraction: float


def _check_fraction(fraction: float) -> float:
    """A fraction in (0, 1), or RegistryError."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction) \
            or not 0 < fraction < 1:
        raise RegistryError(f"canary fraction must be a number in (0, 1), got {fraction!r}")
    return float(fraction)


def set_canary(registry: ModelRegistry, name: str, version: str, fraction: float) -> Canary:
    """Send `fraction` of the requests for `name` to `version` (which must exist and not be the promoted one)."""
    fraction = _check_fraction(fraction)
    card = registry.card(name, version)
    try:
        promoted = registry.promoted_version(name)
    except RegistryError:
        raise RegistryError(f"model {name!r} has no promoted version; promote one before starting a canary") from None
    if promoted == card.version:
        raise RegistryError(f"{name} {version} is already the promoted version; a canary needs another version")
    atomic_write_json(registry.root / name / CANARY_FILE, {"version": card.version, "fraction": fraction})
    return Canary(card.version, fraction)


def clear_canary(registry: ModelRegistry, name: str) -> bool:
    """End the canary of `name`; True if there was one."""
    registry.versions(name)  # ModelNotFoundError for an unknown model
    path = registry.root / name / CANARY_FILE
    existed = path.is_file()
    path.unlink(missing_ok=True)
    return existed


def get_canary(registry: ModelRegistry, name: str) -> Canary | None:
    """The canary of `name`, or None; RegistryError when the file is unreadable."""
    path = registry.root / name / CANARY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise RegistryError(f"{path} is unreadable: {e}") from None
    if not isinstance(data, dict) or not is_version(data.get("version")):
        raise RegistryError(f"{path} is not a canary file")
    try:
        return Canary(data["version"], _check_fraction(data.get("fraction")))
    except RegistryError as e:
        raise RegistryError(f"{path}: {e}") from None


def damaged_canaries(registry: ModelRegistry) -> list[DamagedEntry]:
    """The canary files that cannot be read (the service ignores them and serves the promoted version)."""
    damaged = []
    for name in registry.names():
        try:
            get_canary(registry, name)
        except RegistryError as e:
            damaged.append(DamagedEntry(name, None, registry.relative(e) + "; requests go to the promoted version"))
    return damaged


@dataclass(frozen=True)
class VersionStats:
    """What one version did on live traffic during a canary: requests answered, requests that failed, per-request
    latency in milliseconds and, where the traffic had labels, how many answers were right."""

    requests: int
    errors: int
    latency_ms: tuple[float, ...]
    correct: int | None = None

    def __post_init__(self) -> None:
        if self.requests < 0 or not 0 <= self.errors <= self.requests:
            raise ValueError(f"need 0 <= errors <= requests, got {self.errors} errors of {self.requests}")
        if self.correct is not None and not 0 <= self.correct <= self.requests - self.errors:
            raise ValueError(f"correct must be in [0, {self.requests - self.errors}], got {self.correct}")


@dataclass(frozen=True)
class CanaryCheck:
    """One comparison of the canary with the stable version: the two values and whether the canary is worse."""

    metric: str
    stable: float
    canary: float
    p_value: float | None  # one-sided Fisher exact test, for rates; None for latency (a ratio against a tolerance)
    worse: bool


@dataclass(frozen=True)
class CanaryVerdict:
    """promote is True only when no check found the canary worse than the stable version."""

    promote: bool
    checks: tuple[CanaryCheck, ...]


def _one_sided_p(bad_a: int, n_a: int, bad_b: int, n_b: int) -> float:
    """One-sided Fisher exact test: the p-value that rate b (the canary's) is higher than rate a (the stable's).

    Exact, so it stays honest for the rare events (a few failed requests) a canary mostly sees."""
    if n_a == 0 or n_b == 0:
        return 1.0
    from scipy.stats import fisher_exact

    return float(fisher_exact([[bad_b, n_b - bad_b], [bad_a, n_a - bad_a]], alternative="greater").pvalue)


def canary_verdict(stable: VersionStats, canary: VersionStats, alpha: float = 0.05,
                   max_latency_ratio: float = 1.2) -> CanaryVerdict:
    """Promote or roll back from the canary's own live metrics against the stable version's in the same period.

    error rate: the canary is worse when its share of failed requests is higher at one-sided level alpha;
    accuracy (when both have labels): worse when its share of wrong answers is higher at level alpha;
    latency: worse when its median latency exceeds the stable version's by more than max_latency_ratio.
    """
    if canary.requests == 0:
        raise ValueError("the canary answered no requests; there is nothing to decide on")
    checks = []
    rate = [(s.errors / s.requests if s.requests else 0.0) for s in (stable, canary)]
    p = _one_sided_p(stable.errors, stable.requests, canary.errors, canary.requests)
    checks.append(CanaryCheck("error_rate", rate[0], rate[1], p, p < alpha))
    if stable.correct is not None and canary.correct is not None:
        answered = [s.requests - s.errors for s in (stable, canary)]
        acc = [(s.correct / a if a else 0.0) for s, a in zip((stable, canary), answered)]
        p = _one_sided_p(answered[0] - stable.correct, answered[0], answered[1] - canary.correct, answered[1])
        checks.append(CanaryCheck("accuracy", acc[0], acc[1], p, p < alpha))
    if stable.latency_ms and canary.latency_ms:
        med = [statistics.median(s.latency_ms) for s in (stable, canary)]
        checks.append(CanaryCheck("median_latency_ms", med[0], med[1], None, med[1] > max_latency_ratio * med[0]))
    return CanaryVerdict(not any(c.worse for c in checks), tuple(checks))
