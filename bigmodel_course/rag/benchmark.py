"""The retrieval benchmark of the book: every setting of BM25, the dense bi-encoder and their RRF hybrid ranks the
book's sections for each evaluation question; each retriever's setting is chosen on the dev half (recall@5, then
MRR) and measured once on the test half, with paired comparisons for the noise. Also the refusal threshold of
`answer.answer`, chosen on dev questions and out-of-scope questions and measured on test.

The corpus leaves out `EVAL_EXCLUDED_PAGES`: the chapter that runs this benchmark discusses its questions and
retrievers, so its own prose would otherwise compete with the sections the questions were written for, and every
edit of that prose would change the measurement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .answer import K_SECTIONS, MAX_CHARS, OVERLAP, BookIndex
from .bm25 import BM25Index, document_frequency_table, jieba_tokenize
from .chunking import Chunk, chunk_documents
from .corpus import Document, load_book_sections
from .dense import DenseIndex, section_ranking
from .evaluation import mrr, recall_at_k, reciprocal_rank_fusion
from .questions import Question

EVAL_EXCLUDED_PAGES = frozenset({"ch07_rag_agents"})
BM25_CHARS = (300, 600)
STOP_FRACTION = 0.5  # the stop-word variant: tokens found in more than half of the chunks
DENSE_CHARS = (60, 110)  # the encoder reads at most 128 characters (title included)
RRF_KS = (3, 10, 30, 60)
METRICS = ("R@1", "R@5", "MRR")

Rankings = dict[str, list[str]]  # question id -> section ids, best first


@dataclass
class Setting:
    """One retriever setting and the section ranking it gives every question."""

    kind: str  # "BM25", "dense" or "hybrid"
    name: str
    params: dict
    rankings: Rankings
    index: BM25Index | DenseIndex | None = None
    sections: list[str] = field(default_factory=list)  # section of each indexed chunk
    positive: Rankings = field(default_factory=dict)  # BM25: only sections with a chunk sharing a query word


@dataclass
class Benchmark:
    """All settings tried and, per retriever, the one chosen on dev."""

    settings: dict[str, list[Setting]]  # kind -> settings in the order tried
    chosen: dict[str, Setting]  # kind -> best dev setting


def evaluation_corpus(docs: Sequence[Document] | None = None,
                      excluded: frozenset[str] = EVAL_EXCLUDED_PAGES) -> list[Document]:
    """The book's sections without the pages in `excluded` (page names such as ``ch07_rag_agents``)."""
    docs = load_book_sections() if docs is None else docs
    kept = [d for d in docs if d.page not in excluded]
    if not kept:
        raise ValueError("no documents left after excluding the benchmark's own pages")
    return kept


def per_question(rankings: Mapping[str, Sequence[str]], questions: Sequence[Question]) -> dict[str, np.ndarray]:
    """Each question's recall@1, recall@5 and reciprocal rank (arrays in question order)."""
    if not questions:
        raise ValueError("no questions to evaluate")
    missing = [q.qid for q in questions if q.qid not in rankings]
    if missing:
        raise ValueError(f"no ranking for questions {missing[:5]}")
    return {"R@1": np.array([recall_at_k(rankings[q.qid], q.gold_doc_ids, 1) for q in questions]),
            "R@5": np.array([recall_at_k(rankings[q.qid], q.gold_doc_ids, 5) for q in questions]),
            "MRR": np.array([mrr(rankings[q.qid], q.gold_doc_ids) for q in questions])}


def metrics(rankings: Mapping[str, Sequence[str]], questions: Sequence[Question]) -> dict[str, float]:
    """Mean recall@1, recall@5 and MRR over `questions`."""
    return {name: float(values.mean()) for name, values in per_question(rankings, questions).items()}


def stop_words(chunks: Sequence[Chunk], fraction: float) -> frozenset[str]:
    """jieba tokens found in more than `fraction` of the chunks (title line and text), measured on the chunks."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    table = document_frequency_table((jieba_tokenize(f"{c.title}\n{c.text}") for c in chunks), top=10**9)
    return frozenset(tok for tok, _, share in table if share > fraction)


def _rank_all(index, sections: list[str], questions: Sequence[Question], positive_only: bool = False) -> Rankings:
    return {q.qid: section_ranking(index.scores(q.question), sections, positive_only) for q in questions}


def bm25_settings(docs: Sequence[Document], questions: Sequence[Question], chars: Sequence[int] = BM25_CHARS,
                  stop_fraction: float = STOP_FRACTION) -> list[Setting]:
    """BM25 for each chunk size, without and with the stop words of `stop_words(chunks, stop_fraction)`."""
    settings = []
    for max_chars in chars:
        chunks = chunk_documents(docs, max_chars=max_chars, overlap=1)
        sections = [c.doc_id for c in chunks]
        for stop_name, stop in (("none", frozenset()), (f"df>{stop_fraction}", stop_words(chunks, stop_fraction))):
            label = "不去停用词" if stop_name == "none" else f"去停用词（文档频率 > {stop_fraction}）"
            index = BM25Index.build(chunks, stopwords=stop)
            scores = {q.qid: index.scores(q.question) for q in questions}
            settings.append(Setting(
                "BM25", f"BM25，{max_chars} 字的块，{label}",
                {"chars": max_chars, "stop": stop_name, "n_stop": len(stop), "n_chunks": len(chunks)},
                {qid: section_ranking(s, sections) for qid, s in scores.items()}, index, sections,
                {qid: section_ranking(s, sections, positive_only=True) for qid, s in scores.items()}))
    return settings


def dense_settings(docs: Sequence[Document], questions: Sequence[Question], encoders: Mapping[str, object],
                   chars: Sequence[int] = DENSE_CHARS) -> list[Setting]:
    """The dense index of each encoder (name -> `DenseEncoder`, e.g. recipe variants) for each chunk size."""
    settings = []
    for recipe, encoder in encoders.items():
        for max_chars in chars:
            chunks = chunk_documents(docs, max_chars=max_chars, overlap=1)
            sections = [c.doc_id for c in chunks]
            index = DenseIndex.build(chunks, encoder)
            settings.append(Setting("dense", f"稠密（{recipe}），{max_chars} 字的块",
                                    {"recipe": recipe, "chars": max_chars, "n_chunks": len(chunks)},
                                    _rank_all(index, sections, questions), index, sections))
    return settings


def fuse(bm25: Setting, dense: Setting, qids: Sequence[str], k: float) -> Rankings:
    """RRF of the BM25 sections sharing a word with the question and the dense ranking (as `hybrid_ranking`)."""
    return {qid: [s for s, _ in reciprocal_rank_fusion([r for r in (bm25.positive[qid], dense.rankings[qid]) if r],
                                                       k=k)] for qid in qids}


def hybrid_settings(bm25: Sequence[Setting], dense: Sequence[Setting], questions: Sequence[Question],
                    ks: Sequence[float] = RRF_KS) -> list[Setting]:
    """RRF of every BM25 setting without stop words with every dense setting, for each fusion constant k."""
    qids = [q.qid for q in questions]
    return [Setting("hybrid", f"混合（RRF，k = {k}）：{b.name} + {d.name}", {"k": k, "bm25": b.name, "dense": d.name},
                    fuse(b, d, qids, k))
            for b in bm25 if b.params.get("stop") == "none" for d in dense for k in ks]


def choose(settings: Sequence[Setting], dev: Sequence[Question]) -> Setting:
    """The setting with the best dev recall@5, then MRR (the first one tried on a tie)."""
    if not settings:
        raise ValueError("no settings to choose from")
    return max(settings, key=lambda s: (metrics(s.rankings, dev)["R@5"], metrics(s.rankings, dev)["MRR"]))


def run_benchmark(docs: Sequence[Document], dev: Sequence[Question], test: Sequence[Question],
                  encoders: Mapping[str, object] | None = None, bm25_chars: Sequence[int] = BM25_CHARS,
                  dense_chars: Sequence[int] = DENSE_CHARS, rrf_ks: Sequence[float] = RRF_KS) -> Benchmark:
    """Rank dev and test questions with every setting and choose each retriever's setting on dev only."""
    overlap = {q.qid for q in dev} & {q.qid for q in test}
    if overlap:
        raise ValueError(f"questions in both dev and test: {sorted(overlap)[:5]}")
    questions = list(dev) + list(test)
    settings = {"BM25": bm25_settings(docs, questions, bm25_chars)}
    if encoders:
        settings["dense"] = dense_settings(docs, questions, encoders, dense_chars)
        settings["hybrid"] = hybrid_settings(settings["BM25"], settings["dense"], questions, rrf_ks)
    return Benchmark(settings, {kind: choose(found, dev) for kind, found in settings.items()})


# --- noise ------------------------------------------------------------------------------------------------------

def bootstrap_mean(values: Sequence[float], n_boot: int = 10_000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-question scores and its percentile bootstrap interval (questions resampled)."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"need a non-empty 1-D array, got shape {values.shape}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(values.mean()), float(lo), float(hi)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_boot: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """Mean of a - b over paired per-question scores and its percentile bootstrap interval (questions resampled)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need two non-empty 1-D arrays of the same length, got shapes {a.shape} and {b.shape}")
    return bootstrap_mean(a - b, n_boot, seed, level)


def paired_counts(a: Sequence[float], b: Sequence[float]) -> dict[str, int]:
    """For per-question hits (1/0): how many questions only a gets, only b gets, both get, neither gets."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    return {"only a": int((a & ~b).sum()), "only b": int((~a & b).sum()), "both": int((a & b).sum()),
            "neither": int((~a & ~b).sum())}


# --- refusing questions the book does not answer ----------------------------------------------------------------

def evaluation_book_index(docs: Sequence[Document]) -> BookIndex:
    """A `BookIndex` (the chunking `answer` uses) over `docs`, e.g. `evaluation_corpus()`."""
    chunks = chunk_documents(docs, max_chars=MAX_CHARS, overlap=OVERLAP)
    return BookIndex(chunks, BM25Index.build(chunks))


@dataclass(frozen=True)
class RefusalScores:
    """Per book question: whether its section is among those shown, and the best chunk score; the same score for
    each question the book does not answer."""

    found: np.ndarray
    best: np.ndarray
    out_of_scope_best: np.ndarray


def best_scores(index: BookIndex, questions: Sequence[str]) -> np.ndarray:
    """The best chunk score of each question (0 when no chunk shares a word with it)."""
    return np.array([(index.sections(q, 1) or [("", 0.0, [])])[0][1] for q in questions], dtype=float)


def refusal_scores(index: BookIndex, questions: Sequence[Question], out_of_scope: Sequence[str],
                   k_sections: int = K_SECTIONS) -> RefusalScores:
    """Score every book question and out-of-scope question once (thresholds are then compared without search)."""
    found = np.array([bool(q.gold_doc_ids & {d for d, _, _ in index.sections(q.question, k_sections)})
                      for q in questions])
    return RefusalScores(found, best_scores(index, [q.question for q in questions]),
                         best_scores(index, list(out_of_scope)))


def refusal_outcome(scores: RefusalScores, threshold: float) -> dict[str, int]:
    """Counts when questions scoring below `threshold` are refused."""
    answered = scores.best >= threshold
    oos_answered = scores.out_of_scope_best >= threshold
    return {"right section shown": int((answered & scores.found).sum()),
            "answered, section missed": int((answered & ~scores.found).sum()),
            "wrongly refused": int((~answered).sum()), "rightly refused": int((~oos_answered).sum()),
            "wrongly answered": int(oos_answered.sum())}


def choose_threshold(scores: RefusalScores, grid: Sequence[float]) -> tuple[float, float, float]:
    """(lowest, highest, median) of the grid thresholds maximising right-section answers + right refusals."""
    grid = np.asarray(grid, dtype=float)
    if grid.ndim != 1 or len(grid) == 0:
        raise ValueError("grid must be a non-empty list of thresholds")
    good = np.array([(o := refusal_outcome(scores, t))["right section shown"] + o["rightly refused"] for t in grid])
    best = grid[good == good.max()]
    return float(best.min()), float(best.max()), float(np.median(best))
