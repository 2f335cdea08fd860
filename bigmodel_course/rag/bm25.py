"""Okapi BM25 over jieba tokens, written out (Lucene's idf and term-frequency saturation), plus a document
frequency table for choosing stop words from the corpus itself."""

from __future__ import annotations

import logging
import math
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from scipy import sparse

from .chunking import Chunk

MAX_QUERY_CHARS = 1000

Tokenizer = Callable[[str], list[str]]


def check_query(query: str, what: str = "query") -> str:
    """`query` stripped; a clear error when it is not a non-empty string of at most MAX_QUERY_CHARS characters."""
    if not isinstance(query, str):
        raise ValueError(f"{what} must be a string, got {type(query).__name__}")
    if not query.strip():
        raise ValueError(f"{what} is empty")
    if len(query) > MAX_QUERY_CHARS:
        raise ValueError(f"{what} is {len(query)} characters long; the limit is {MAX_QUERY_CHARS}")
    return query.strip()


def _is_punctuation_or_space(token: str) -> bool:
    return all(ch.isspace() or unicodedata.category(ch)[0] in "PSZ" for ch in token)


def jieba_tokenize(text: str) -> list[str]:
    """`jieba.lcut(text)`, lower-cased, without tokens made only of whitespace, punctuation or symbols."""
    import jieba

    jieba.setLogLevel(logging.WARNING)  # no "Building prefix dict..." lines
    return [tok.lower() for tok in jieba.lcut(text) if not _is_punctuation_or_space(tok)]


def document_frequency_table(tokenized_corpus: Iterable[Sequence[str]], top: int = 30) -> list[tuple[str, int, float]]:
    """The `top` tokens found in the most documents: (token, document frequency, fraction of documents).

    Tokens that occur in a large share of the documents carry little information for ranking; the table shows which
    ones, measured on the corpus at hand, so a stop-word set can be chosen from it (e.g. all with fraction > 0.3).
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive int, got {top!r}")
    df: Counter[str] = Counter()
    n = 0
    for tokens in tokenized_corpus:
        if isinstance(tokens, str):
            raise ValueError("tokenized_corpus must hold token lists, got a string (tokenize the texts first)")
        df.update(set(tokens))
        n += 1
    if n == 0:
        raise ValueError("tokenized_corpus is empty")
    ranked = sorted(df.items(), key=lambda item: (-item[1], item[0]))[:top]
    return [(tok, count, count / n) for tok, count in ranked]


def _text_of(item) -> str:
    if isinstance(item, Chunk):
        return f"{item.title}\n{item.text}"
    if isinstance(item, str):
        return item
    raise ValueError(f"BM25Index indexes strings or Chunk records, got {type(item).__name__}")


class BM25Index:
    """BM25 scores of a query against a fixed corpus.

    score(q, d) = sum over query tokens t (repeats counted) of
    idf(t) * tf(t, d) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl)),
    idf(t) = log(1 + (N - df(t) + 0.5) / (df(t) + 0.5)).
    This is Lucene's BM25 (the (k1 + 1) factor of the original Okapi numerator is dropped, which does not change the
    ranking); |d| counts the tokens left after removing stop words.
    """

    def __init__(self, weights: sparse.csr_matrix, vocabulary: dict[str, int], tokenizer: Tokenizer,
                 stopwords: frozenset[str], k1: float, b: float, idf: np.ndarray | None = None) -> None:
        self.weights = weights  # (vocabulary, documents): the BM25 contribution of each term to each document
        self.vocabulary = vocabulary
        self.tokenizer = tokenizer
        self.stopwords = stopwords
        self.k1 = k1
        self.b = b
        self.idf = np.zeros(len(vocabulary)) if idf is None else idf  # idf of each vocabulary entry

    @property
    def num_documents(self) -> int:
        """Number of indexed documents."""
        return self.weights.shape[1]

    def tokenize(self, text: str) -> list[str]:
        """The tokenizer's tokens with the stop words removed."""
        return [tok for tok in self.tokenizer(text) if tok not in self.stopwords]

    @classmethod
    def build(cls, items: Sequence[str | Chunk], tokenizer: Tokenizer = jieba_tokenize, k1: float = 1.5,
              b: float = 0.75, stopwords: Iterable[str] | None = None) -> BM25Index:
        """Index texts, or chunks (a chunk is indexed as its title, a newline and its text)."""
        if isinstance(items, str) or not isinstance(items, Sequence):
            raise ValueError("items must be a sequence of texts or chunks")
        if len(items) == 0:
            raise ValueError("cannot build a BM25 index over an empty corpus")
        if not (isinstance(k1, (int, float)) and math.isfinite(k1) and k1 >= 0):
            raise ValueError(f"k1 must be a finite number >= 0, got {k1!r}")
        if not (isinstance(b, (int, float)) and 0 <= b <= 1):
            raise ValueError(f"b must be a number in [0, 1], got {b!r}")
        stop = frozenset(stopwords or ())
        index = cls(sparse.csr_matrix((0, 0)), {}, tokenizer, stop, float(k1), float(b))
        docs = [Counter(index.tokenize(_text_of(item))) for item in items]
        lengths = np.array([sum(c.values()) for c in docs], dtype=np.float64)
        if lengths.sum() == 0:
            raise ValueError("every document is empty after tokenization: nothing to index")
        vocabulary: dict[str, int] = {}
        rows, cols, tfs = [], [], []
        for d, counts in enumerate(docs):
            for tok, tf in counts.items():
                rows.append(vocabulary.setdefault(tok, len(vocabulary)))
                cols.append(d)
                tfs.append(tf)
        rows, cols, tfs = np.array(rows), np.array(cols), np.array(tfs, dtype=np.float64)
        n = len(docs)
        df = np.bincount(rows, minlength=len(vocabulary))
        idf = np.log1p((n - df + 0.5) / (df + 0.5))
        norm = k1 * (1 - b + b * lengths / lengths.mean())
        data = idf[rows] * tfs / (tfs + norm[cols])
        index.weights = sparse.csr_matrix((data, (rows, cols)), shape=(len(vocabulary), n))
        index.vocabulary = vocabulary
        index.idf = idf
        return index

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of `query` against every document (float64 array of length `num_documents`)."""
        check_query(query)
        ids = [self.vocabulary[tok] for tok in self.tokenize(query) if tok in self.vocabulary]
        if not ids:
            return np.zeros(self.num_documents)
        counts = np.bincount(ids, minlength=len(self.vocabulary)).astype(np.float64)
        return np.asarray(self.weights.T @ counts).ravel()

    def search(self, query: str, k: int = 10) -> list[tuple[int, float]]:
        """The `k` best documents as (index, score), best first; equal scores keep corpus order."""
        n = self.num_documents
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise ValueError(f"k must be an int in [1, {n}] (the corpus size), got {k!r}")
        s = self.scores(query)
        order = np.argsort(-s, kind="stable")[:k]
        return [(int(i), float(s[i])) for i in order]
