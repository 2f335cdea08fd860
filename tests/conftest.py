"""Shared test set-up: quiet, deterministic, offline."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# Unit tests use tiny tensors: one thread avoids OpenMP spin-waiting on a busy 2-core machine.
torch.set_num_threads(1)


TIERS = ("slow", "notebooks", "book", "browser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that carries no other tier marker `unit` (make test-unit runs `-m unit`)."""
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
