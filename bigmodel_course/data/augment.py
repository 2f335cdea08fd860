"""Seeded augmentation: EDA-style word deletion/swap/insertion for Chinese that spares negation, and image copies."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import numpy as np

# words that flip or cancel sentiment; any jieba word containing one of NEGATION_CHARS is treated the same way
NEGATION_WORDS = frozenset({"不", "没", "没有", "无", "非", "未", "别", "莫", "勿", "甭", "不是", "不要", "不会",
                            "不能", "不太", "不够", "并不", "从不", "决不", "绝不", "毫不", "没什么", "无法", "未必"})
NEGATION_CHARS = frozenset("不没无非未别莫勿甭")
# words that contain a negation character but negate nothing: intensifiers (非常, 特别, 无比), a positive word (不错),
# conjunctions (不过, 不但, 不仅, 无论, 除非) and plain nouns/adverbs (未来, 区别, 别的, 无线, 不断, 不少)
NOT_NEGATION = frozenset({"非常", "特别", "无比", "不错", "不过", "不但", "不仅", "无论", "除非", "未来", "不断",
                          "不少", "区别", "差别", "分别", "个别", "级别", "类别", "性别", "识别", "告别", "别的",
                          "别人", "别家", "无线"})
_NOT_NEGATION_BY_LENGTH = sorted(NOT_NEGATION, key=len, reverse=True)
OPERATIONS = ("delete", "swap", "insert")
_BOUNDARY = re.compile(r"^[\s\W_]+$")  # punctuation, whitespace, symbols: clause boundaries that never move


def _strip_not_negation(text: str) -> str:
    """text with the NOT_NEGATION words (非常, 特别, 不错, ...) removed."""
    for w in _NOT_NEGATION_BY_LENGTH:
        text = text.replace(w, "")
    return text


def is_negation(word: str) -> bool:
    """True for a negation word, or a jieba word with a negation character outside NOT_NEGATION (没用, 别买, 不好, ...).

    非常/特别 (intensifiers) and 不错 (a positive word) are not negations, nor are words built on them (特别差).
    """
    return word in NEGATION_WORDS or any(c in NEGATION_CHARS for c in _strip_not_negation(word))


def count_negations(text: str) -> int:
    """Number of negation characters in text, not counting those inside NOT_NEGATION words (非常, 特别, 不错, ...)."""
    return sum(c in NEGATION_CHARS for c in _strip_not_negation(text))


def _is_boundary(word: str) -> bool:
    """True for punctuation/whitespace tokens, which split clauses."""
    return bool(_BOUNDARY.match(word))


def _check_words(words) -> list[str]:
    """words as a list of str, else ValueError."""
    if isinstance(words, str):
        raise ValueError("words must be a list of words, not a single str (segment it first)")
    words = list(words)
    if any(not isinstance(w, str) for w in words):
        raise ValueError("every word must be a str")
    return words


def _locked(words: list[str], protect: bool) -> list[bool]:
    """Positions that must not move or disappear: boundaries, negations and the word right after a negation."""
    out = [_is_boundary(w) for w in words]
    if protect:
        for i, w in enumerate(words):
            if is_negation(w):
                out[i] = True
                if i + 1 < len(words):
                    out[i + 1] = True
    return out


def random_deletion(words: Sequence[str], p: float, rng: random.Random, protect: bool = True) -> list[str]:
    """Drop each free word with probability p (negations, the words they negate and punctuation are kept)."""
    words = _check_words(words)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"deletion probability p must be in [0, 1), got {p}")
    locked = _locked(words, protect)
    out = [w for w, lock in zip(words, locked) if lock or rng.random() >= p]
    if not any(not _is_boundary(w) for w in out):  # never return an empty text
        free = [w for w, lock in zip(words, locked) if not lock]
        return [rng.choice(free)] if free else words
    return out


def _clauses(words: list[str]) -> list[list[int]]:
    """Index lists of the runs of words between boundary tokens."""
    runs, cur = [], []
    for i, w in enumerate(words):
        if _is_boundary(w):
            if cur:
                runs.append(cur)
            cur = []
        else:
            cur.append(i)
    if cur:
        runs.append(cur)
    return runs


def random_swap(words: Sequence[str], n: int, rng: random.Random, protect: bool = True) -> list[str]:
    """Swap n pairs of free words, each pair inside one clause (so no word crosses a negation's scope or a comma)."""
    words = _check_words(words)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"number of swaps n must be a non-negative int, got {n!r}")
    out = list(words)
    locked = _locked(words, protect)
    runs = [[i for i in run if not locked[i]] for run in _clauses(words)]
    runs = [r for r in runs if len(r) >= 2]
    for _ in range(n if runs else 0):
        a, b = rng.sample(rng.choice(runs), 2)
        out[a], out[b] = out[b], out[a]
    return out


def random_insertion(words: Sequence[str], n: int, rng: random.Random, protect: bool = True) -> list[str]:
    """Insert n copies of free words of the text at random places, never right after a negation."""
    words = _check_words(words)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"number of insertions n must be a non-negative int, got {n!r}")
    out = list(words)
    free = [w for w, lock in zip(words, _locked(words, protect)) if not lock]
    for _ in range(n if free else 0):
        slots = [i for i in range(len(out) + 1) if not (protect and i > 0 and is_negation(out[i - 1]))]
        out.insert(rng.choice(slots), rng.choice(free))
    return out


def _segment(text: str) -> list[str]:
    """jieba words of text, whitespace kept as tokens so joining them restores the spacing."""
    from ..tokenization import _jieba

    return _jieba().lcut(text)


def augment_text(text: str, rng: random.Random, operation: str | None = None, p_delete: float = 0.1,
                 n_swap: int = 1, n_insert: int = 1, protect: bool = True) -> str:
    """One augmented copy of a Chinese text: segment with jieba, apply one operation (random if None), join."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty str, got {text!r}")
    if not isinstance(rng, random.Random):
        raise ValueError(f"rng must be a random.Random, got {type(rng).__name__}")
    op = rng.choice(OPERATIONS) if operation is None else operation
    words = _segment(text)
    if op == "delete":
        words = random_deletion(words, p_delete, rng, protect)
    elif op == "swap":
        words = random_swap(words, n_swap, rng, protect)
    elif op == "insert":
        words = random_insertion(words, n_insert, rng, protect)
    else:
        raise ValueError(f"unknown augmentation {op!r}; expected one of {OPERATIONS}")
    return "".join(words)


def augment_dataset(texts: Sequence[str], labels: Sequence[int], copies: int = 4, seed: int = 0,
                    **kwargs) -> tuple[list[str], list[int]]:
    """The originals followed by `copies` augmented versions of each text, labels copied; same seed, same output."""
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of str, not a single str")
    texts, labels = list(texts), list(labels)
    if len(texts) != len(labels):
        raise ValueError(f"got {len(texts)} texts but {len(labels)} labels")
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 0:
        raise ValueError(f"copies must be a non-negative int, got {copies!r}")
    rng = random.Random(seed)
    new_texts, new_labels = list(texts), list(labels)
    for _ in range(copies):
        new_texts += [augment_text(t, rng, **kwargs) for t in texts]
        new_labels += labels
    return new_texts, new_labels


def augment_images(images, copies: int, transform, seed: int = 0) -> np.ndarray:
    """(N*copies, H, W) float32: `copies` transformed versions of every (N, H, W) image, in order, seeded."""
    import torch

    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 3 or len(x) == 0:
        raise ValueError(f"images must be a non-empty (N, H, W) array, got shape {x.shape}")
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ValueError(f"copies must be a positive int, got {copies!r}")
    if not callable(transform):
        raise ValueError(f"transform must be callable, got {type(transform).__name__}")
    t = torch.from_numpy(x)[:, None]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = [transform(img) for _ in range(copies) for img in t]
    return torch.stack(out)[:, 0].numpy()
