"""Data-drift checks between the texts a model was trained on and the texts it sees live: the population
stability index (PSI) of text length and of the character distribution, with an alert threshold.

    monitor = DriftMonitor.fit(train_texts)          # keeps bin edges and proportions, never the texts
    report = monitor.check(live_texts)               # DriftReport(length_psi, char_psi, alert, …)

PSI = Σ (live_i − ref_i) · ln(live_i / ref_i) over bins with proportions ref_i and live_i. The usual reading:
below 0.1 no real change, 0.1–0.25 a moderate shift, above 0.25 a large one (the default threshold 0.2
sits between). Empty bins get a small floor `eps` so the logarithm stays finite.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_THRESHOLD = 0.2
OTHER = "<other>"


def _check_texts(texts: Sequence[str], name: str) -> list[str]:
    """A non-empty list of strings, or ValueError naming the problem."""
    if isinstance(texts, str) or not isinstance(texts, Sequence) or len(texts) == 0:
        raise ValueError(f"{name} must be a non-empty list of strings")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"{name}[{i}] must be a string, got {type(text).__name__}")
    return list(texts)


def psi(reference: Sequence[float], live: Sequence[float], eps: float = 1e-4) -> float:
    """Population stability index of two histograms over the same bins (counts or proportions; each is normalised)."""
    ref, cur = np.asarray(reference, dtype=np.float64), np.asarray(live, dtype=np.float64)
    if ref.shape != cur.shape or ref.ndim != 1 or ref.size < 2:
        raise ValueError("reference and live must be 1-D histograms of the same length ≥ 2, "
                         f"got {ref.shape} and {cur.shape}")
    if (ref < 0).any() or (cur < 0).any() or not (np.isfinite(ref).all() and np.isfinite(cur).all()):
        raise ValueError("histograms must hold finite non-negative numbers")
    if ref.sum() == 0 or cur.sum() == 0:
        raise ValueError("a histogram is empty (all bins are 0)")
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    ref = np.clip(ref / ref.sum(), eps, None)
    cur = np.clip(cur / cur.sum(), eps, None)
    ref, cur = ref / ref.sum(), cur / cur.sum()
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def length_edges(lengths: Sequence[int], bins: int = 10) -> np.ndarray:
    """Inner bin edges at the quantiles of the reference lengths (duplicates removed): up to bins-1 edges."""
    if bins < 2:
        raise ValueError(f"bins must be ≥ 2, got {bins}")
    values = np.asarray(lengths, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no lengths to bin")
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    return edges


def length_histogram(texts: Sequence[str], edges: np.ndarray) -> np.ndarray:
    """Counts of text lengths (characters) in the bins (-inf, e1], (e1, e2], …, (ek, inf)."""
    lengths = np.array([len(t) for t in texts], dtype=np.float64)
    return np.bincount(np.searchsorted(edges, lengths, side="left"), minlength=len(edges) + 1)


def char_histogram(texts: Sequence[str], vocabulary: Sequence[str]) -> np.ndarray:
    """Counts of each vocabulary character over all texts, with a last bin for every other character."""
    index = {c: i for i, c in enumerate(vocabulary)}
    counts = np.zeros(len(vocabulary) + 1, dtype=np.int64)
    for text in texts:
        for char, n in Counter(text).items():
            counts[index.get(char, len(vocabulary))] += n
    return counts


@dataclass
class DriftReport:
    """PSI of length and of characters for one window of live texts, and whether either passes the threshold."""

    n_texts: int
    length_psi: float
    char_psi: float
    threshold: float

    @property
    def alert(self) -> bool:
        """True when a PSI exceeds the threshold."""
        return self.length_psi > self.threshold or self.char_psi > self.threshold

    def format(self) -> str:
        """One line for logs and notebooks."""
        state = "ALERT" if self.alert else "ok"
        return (f"{self.n_texts} texts: length PSI {self.length_psi:.3f}, character PSI {self.char_psi:.3f} "
                f"(threshold {self.threshold:g}) -> {state}")


@dataclass
class DriftMonitor:
    """Reference histograms of text length (quantile bins) and of the most frequent characters (+ one 'other' bin)."""

    length_edges: np.ndarray
    length_reference: np.ndarray
    vocabulary: list[str]
    char_reference: np.ndarray
    threshold: float = DEFAULT_THRESHOLD

    @classmethod
    def fit(cls, texts: Sequence[str], length_bins: int = 10, top_chars: int = 200,
            threshold: float = DEFAULT_THRESHOLD) -> "DriftMonitor":
        """Reference statistics of the training texts (length quantile bins, the top_chars most frequent characters)."""
        texts = _check_texts(texts, "texts")
        if top_chars < 1:
            raise ValueError(f"top_chars must be ≥ 1, got {top_chars}")
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {threshold!r}")
        edges = length_edges([len(t) for t in texts], length_bins)
        counts = Counter(c for t in texts for c in t)
        vocabulary = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_chars]]
        return cls(edges, length_histogram(texts, edges), vocabulary, char_histogram(texts, vocabulary),
                   float(threshold))

    def check(self, texts: Sequence[str]) -> DriftReport:
        """PSI of a window of live texts against the reference."""
        texts = _check_texts(texts, "live texts")
        length = psi(self.length_reference, length_histogram(texts, self.length_edges))
        chars = char_histogram(texts, self.vocabulary)
        if chars.sum() == 0:
            raise ValueError("the live texts are all empty")
        return DriftReport(len(texts), length, psi(self.char_reference, chars), self.threshold)
