"""Offline corpora (reviews, People's Daily) and torch datasets for classification and language modelling."""

from .corpora import (
    ReviewSplits,
    ReviewStats,
    load_peoples_daily,
    load_peoples_daily_tagged,
    load_reviews,
    pretraining_corpus,
    review_splits,
)
from .datasets import ClassificationDataset, LMBlockDataset, collate
from .vision import (
    DIGITS_MAX_VALUE,
    DigitSplits,
    DigitsDataset,
    digits_augmentation,
    digits_splits,
    normalise_digits,
)

__all__ = [
    "DIGITS_MAX_VALUE",
    "DigitSplits",
    "DigitsDataset",
    "ClassificationDataset",
    "LMBlockDataset",
    "ReviewSplits",
    "ReviewStats",
    "collate",
    "digits_augmentation",
    "digits_splits",
    "load_peoples_daily",
    "load_peoples_daily_tagged",
    "load_reviews",
    "normalise_digits",
    "pretraining_corpus",
    "review_splits",
]
