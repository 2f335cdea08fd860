"""Canary releases: a fraction of a model's traffic goes to a candidate version, stored next to the promoted pointer.

    <root>/<name>/canary.json   {"version": "v3", "fraction": 0.1}

The service reads this small file on every request (like promoted.json) and answers a request with the
candidate with probability `fraction`; every answer names its version, and the service's metrics count
items and latency by model and version, so the two versions can be compared on live traffic.
"""

from __future__ import annotations

import json
import math
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
