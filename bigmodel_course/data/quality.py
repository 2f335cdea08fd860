"""Data quality: exact duplicates, conflicting labels, near-duplicates (MinHash/LSH), leakage and label issues."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _check_texts(texts, name: str = "texts") -> list[str]:
    """texts as a list of str, else ValueError naming the problem."""
    if isinstance(texts, str):
        raise ValueError(f"{name} must be a sequence of str, not a single str")
    out = list(texts)
    bad = [i for i, t in enumerate(out) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"{name}[{bad[0]}] must be a str, got {type(out[bad[0]]).__name__}")
    return out


def _check_labelled(texts, labels) -> tuple[list[str], list[int]]:
    """(texts, labels) as lists of equal length with int labels."""
    texts = _check_texts(texts)
    labels = list(labels)
    if len(labels) != len(texts):
        raise ValueError(f"got {len(texts)} texts but {len(labels)} labels")
    bad = [i for i, y in enumerate(labels) if isinstance(y, bool) or not isinstance(y, (int, np.integer))]
    if bad:
        raise ValueError(f"labels[{bad[0]}] must be an int, got {labels[bad[0]]!r}")
    return texts, [int(y) for y in labels]


# ------------------------------------------------------------------ exact duplicates and conflicts


def exact_duplicates(texts: Sequence[str]) -> dict[str, int]:
    """Texts that occur more than once, with their number of occurrences (most frequent first)."""
    counts = Counter(_check_texts(texts))
    return {t: n for t, n in counts.most_common() if n > 1}


def conflicting_labels(texts: Sequence[str], labels: Sequence[int]) -> dict[str, list[int]]:
    """Texts that carry more than one distinct label, with their sorted labels (first-occurrence order)."""
    texts, labels = _check_labelled(texts, labels)
    seen: dict[str, set[int]] = defaultdict(set)
    for t, y in zip(texts, labels):
        seen[t].add(y)
    return {t: sorted(ys) for t, ys in seen.items() if len(ys) > 1}


def deduplicate(texts: Sequence[str], labels: Sequence[int]) -> tuple[list[str], list[int]]:
    """Keep the first occurrence of every text and drop texts with conflicting labels altogether."""
    texts, labels = _check_labelled(texts, labels)
    conflicts = conflicting_labels(texts, labels)
    kept: dict[str, int] = {}
    for t, y in zip(texts, labels):
        if t not in conflicts and t not in kept:
            kept[t] = y
    return list(kept), list(kept.values())


def verbatim_overlap(train_texts: Sequence[str], test_texts: Sequence[str]) -> list[int]:
    """Indices of test texts that also occur, character for character, in the training texts."""
    train = set(_check_texts(train_texts, "train_texts"))
    return [i for i, t in enumerate(_check_texts(test_texts, "test_texts")) if t in train]


# ------------------------------------------------------------------ near-duplicates


def char_shingles(text: str, k: int = 3) -> set[str]:
    """The set of character k-grams of text (a text shorter than k is its own single shingle)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"text must be a non-empty str, got {text!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"shingle size k must be a positive int, got {k!r}")
    return {text[i : i + k] for i in range(max(1, len(text) - k + 1))}


def jaccard(a: set, b: set) -> float:
    """Exact Jaccard similarity |a ∩ b| / |a ∪ b| of two sets (0.0 for two empty sets)."""
    if not isinstance(a, (set, frozenset)) or not isinstance(b, (set, frozenset)):
        raise ValueError(f"jaccard needs two sets, got {type(a).__name__} and {type(b).__name__}")
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def minhash_signatures(texts: Sequence[str], k: int = 3, num_perm: int = 128, seed: int = 1) -> list:
    """datasketch LeanMinHash signatures of the character k-shingles of each text."""
    from datasketch import LeanMinHash, MinHash

    texts = _check_texts(texts)
    if isinstance(num_perm, bool) or not isinstance(num_perm, int) or num_perm < 2:
        raise ValueError(f"num_perm must be an int >= 2, got {num_perm!r}")
    sets = [[s.encode("utf-8") for s in char_shingles(t, k)] for t in texts]
    return [LeanMinHash(m) for m in MinHash.bulk(sets, num_perm=num_perm, seed=seed)]


@dataclass(frozen=True)
class NearDuplicate:
    """A candidate pair i < j from LSH, its MinHash estimate and its exact shingle Jaccard."""

    i: int
    j: int
    estimate: float
    exact: float


def _check_threshold(threshold: float) -> float:
    """threshold as a float in (0, 1]."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be a Jaccard similarity in (0, 1], got {threshold!r}")
    return float(threshold)


def _lsh(signatures, threshold: float, num_perm: int):
    """A datasketch MinHashLSH index holding signatures under keys 0..n-1."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    with lsh.insertion_session() as session:
        for i, m in enumerate(signatures):
            session.insert(i, m)
    return lsh


def near_duplicates(texts: Sequence[str], threshold: float = 0.8, k: int = 3, num_perm: int = 128,
                    seed: int = 1) -> list[NearDuplicate]:
    """Every LSH candidate pair (i < j) at `threshold`, with MinHash estimate and exact Jaccard, by exact Jaccard desc.

    Candidates are not all true near-duplicates: keep those with `exact >= threshold`."""
    threshold = _check_threshold(threshold)
    texts = _check_texts(texts)
    sigs = minhash_signatures(texts, k, num_perm, seed)
    lsh = _lsh(sigs, threshold, num_perm)
    pairs = {(i, j) for i, m in enumerate(sigs) for j in lsh.query(m) if j > i}
    out = [NearDuplicate(i, j, float(sigs[i].jaccard(sigs[j])),
                         jaccard(char_shingles(texts[i], k), char_shingles(texts[j], k))) for i, j in pairs]
    return sorted(out, key=lambda p: (-p.exact, p.i, p.j))


def _shingle_matrix(texts: list[str], k: int):
    """Binary CSR matrix (texts × distinct shingles) and the number of shingles per text."""
    from sklearn.feature_extraction.text import CountVectorizer

    x = CountVectorizer(analyzer=lambda t: list(char_shingles(t, k)), binary=True, dtype=np.int32)
    m = x.fit_transform(texts).tocsr()
    return m, np.asarray(m.sum(axis=1)).ravel()


def exact_jaccard_pairs(texts: Sequence[str], threshold: float = 0.8, k: int = 3,
                        chunk: int = 2000) -> list[tuple[int, int, float]]:
    """All pairs i < j with exact shingle Jaccard >= threshold (brute force via sparse products; reference for LSH)."""
    threshold = _check_threshold(threshold)
    texts = _check_texts(texts)
    if not texts:
        return []
    m, sizes = _shingle_matrix(texts, k)
    mt = m.T.tocsc()
    out: list[tuple[int, int, float]] = []
    for start in range(0, m.shape[0], chunk):
        inter = (m[start : start + chunk] @ mt).tocoo()
        rows, cols, vals = inter.row + start, inter.col, inter.data
        upper = cols > rows
        rows, cols, vals = rows[upper], cols[upper], vals[upper]
        sim = vals / (sizes[rows] + sizes[cols] - vals)
        hit = sim >= threshold
        out += [(int(i), int(j), float(s)) for i, j, s in zip(rows[hit], cols[hit], sim[hit])]
    return sorted(out, key=lambda p: (-p[2], p[0], p[1]))


def near_duplicate_groups(n: int, pairs) -> list[list[int]]:
    """Connected groups (size >= 2) of indices 0..n-1 linked by pairs (i, j, ...), largest first."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in pairs:
        i, j = (p.i, p.j) if isinstance(p, NearDuplicate) else (p[0], p[1])
        if not (0 <= i < n and 0 <= j < n):
            raise ValueError(f"pair ({i}, {j}) is out of range for {n} texts")
        parent[find(i)] = find(j)
    groups: dict[int, list[int]] = defaultdict(list)
    for x in range(n):
        groups[find(x)].append(x)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


def cross_near_duplicates(train_texts: Sequence[str], test_texts: Sequence[str], threshold: float = 0.8,
                          k: int = 3, num_perm: int = 128, seed: int = 1) -> dict[int, tuple[int, float]]:
    """Test index -> (closest train index, exact Jaccard) for test texts with a verified near-duplicate in train."""
    threshold = _check_threshold(threshold)
    train, test = _check_texts(train_texts, "train_texts"), _check_texts(test_texts, "test_texts")
    lsh = _lsh(minhash_signatures(train, k, num_perm, seed), threshold, num_perm)
    out: dict[int, tuple[int, float]] = {}
    for i, m in enumerate(minhash_signatures(test, k, num_perm, seed)):
        shingles = char_shingles(test[i], k)
        scored = [(jaccard(shingles, char_shingles(train[j], k)), j) for j in lsh.query(m)]
        best = max(scored, default=(0.0, -1))
        if best[0] >= threshold:
            out[i] = (best[1], best[0])
    return out


# -------------------------------------------------------------- a baseline model, out-of-fold predictions, label issues


def char_tfidf_logreg(ngram_range: tuple[int, int] = (1, 3), C: float = 1.0):
    """The classical baseline as an sklearn Pipeline: TF-IDF on character n-grams + logistic regression (liblinear)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    lo, hi = ngram_range
    if not 1 <= lo <= hi:
        raise ValueError(f"ngram_range must be (low, high) with 1 <= low <= high, got {ngram_range}")
    if not C > 0:
        raise ValueError(f"C must be positive, got {C}")
    return make_pipeline(TfidfVectorizer(analyzer="char", ngram_range=(lo, hi)),
                         LogisticRegression(C=C, solver="liblinear"))


def fit_and_score(train_texts: Sequence[str], train_labels: Sequence[int], test_texts: Sequence[str],
                  test_labels: Sequence[int], model=None) -> tuple[float, np.ndarray]:
    """Fit `model` (default char_tfidf_logreg()) on train; return (test accuracy, per-test-text correctness)."""
    train_texts, train_labels = _check_labelled(train_texts, train_labels)
    test_texts, test_labels = _check_labelled(test_texts, test_labels)
    if not train_texts or not test_texts:
        raise ValueError("train and test texts must be non-empty")
    model = char_tfidf_logreg() if model is None else model
    correct = model.fit(train_texts, train_labels).predict(test_texts) == np.asarray(test_labels)
    return float(correct.mean()), correct


def out_of_fold_probabilities(texts: Sequence[str], labels: Sequence[int], folds: int = 5, seed: int = 0,
                              model=None) -> np.ndarray:
    """(N, classes) predicted probabilities, each text scored by a model that never saw it (stratified k-fold)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    texts, labels = _check_labelled(texts, labels)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an int >= 2, got {folds!r}")
    model = char_tfidf_logreg() if model is None else model
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, texts, labels, cv=cv, method="predict_proba")


def label_issues(labels: Sequence[int], pred_probs) -> np.ndarray:
    """Indices of likely mislabelled examples (cleanlab confident learning), most suspicious first."""
    from cleanlab.filter import find_label_issues

    y = np.asarray(labels)
    p = np.asarray(pred_probs, dtype=float)
    if y.ndim != 1 or p.ndim != 2 or len(y) != len(p):
        raise ValueError(f"need labels (N,) and pred_probs (N, classes), got {y.shape} and {p.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must be ints in [0, {p.shape[1]}), got range {y.min()}..{y.max()}")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("every row of pred_probs must sum to 1")
    return np.asarray(find_label_issues(y, p, return_indices_ranked_by="self_confidence"), dtype=np.int64)
