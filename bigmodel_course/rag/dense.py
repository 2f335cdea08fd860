"""Dense retrieval in Chinese: a bi-encoder on top of the course's own pre-trained character-level BERT, trained
contrastively on pairs that the corpora give without any labels, and exact inner-product search with faiss.

all-MiniLM-L6-v2 cannot serve here: its word-piece vocabulary maps most Chinese characters to [UNK]. Our BERT
(`pretrained.load_pretrained("bert", profile)`) reads characters, but it was trained for masked language modelling,
not for putting a question and the passage answering it close together. The bi-encoder learns that from pairs:

* **inverse cloze** (Lee et al., 2019): a sentence of a passage is the query, the passage the positive; the
  sentence is removed from the passage in `remove_prob` of the pairs (so the model must match meaning, not copy),
  left in the rest (so it still rewards word overlap). Passages are chunks of the book's own sections (title line
  + text, exactly as they are indexed) and windows of consecutive People's Daily sentences;
* **title -> text**: a section's heading is the query, a chunk of its text the positive.

None of this reads the evaluation questions (`questions.py`): the book's text is the corpus being searched, and
fitting the encoder to it is the unsupervised domain adaptation every retrieval system may do. The book is read as
the benchmark reads it (`benchmark.evaluation_corpus`), without the page that discusses the evaluation questions.

Training uses in-batch negatives: in a batch of B pairs each query's positive is its own passage and the other B - 1
passages are its negatives, scored by the symmetric InfoNCE loss of Chapter 7's mini-CLIP (`multimodal.clip_loss`)
with a fixed temperature. A batch never holds two pairs from one section (or one heading), so no negative is in
fact a positive. Queries and passages share one encoder; a text's vector is the mean of its token vectors (real
tokens only), scaled to unit length, so the inner product is the cosine similarity.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..model_cache import load_or_train, publish, read_meta, write_model_files
from ..multimodal import clip_loss
from ..tokenization import CharTokenizer
from ..transformer import EncoderConfig, TransformerEncoder, mean_pool
from ..utils import cache_dir, get_profile, seed_everything
from .bm25 import BM25Index, _text_of, check_query
from .chunking import Chunk, chunk_documents, split_sentences
from .corpus import Document
from .evaluation import reciprocal_rank_fusion

PAIR_KINDS = ("ict", "title")


@dataclass(frozen=True)
class DenseSpec:
    """Data, sizes and hyper-parameters of one bi-encoder training run."""

    pretrained: str  # profile of the pre-trained BERT the encoder starts from
    steps: int
    batch_size: int  # pairs per step; each query has batch_size - 1 in-batch negatives
    lr: float
    temperature: float  # InfoNCE logits are cosine / temperature
    warmup_share: float = 0.1  # one-cycle schedule: share of the steps spent warming up
    query_len: int = 64  # tokens (special tokens included) of a query, at most
    passage_len: int = 128  # tokens of a passage, at most (the pre-trained BERT's context)
    chunk_chars: int = 110  # book chunks used as passages (see `chunk_documents`)
    news_share: float = 0.25  # share of the pairs drawn from People's Daily
    news_window: int = 5  # consecutive People's Daily sentences per passage
    n_news_windows: int | None = None  # None: every window
    remove_prob: float = 0.9  # inverse cloze: share of pairs whose query sentence is removed from the passage
    title_share: float = 0.3  # share of the book pairs that are title -> text
    min_query_chars: int = 6  # shorter sentences are not used as queries
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "query_len", "passage_len", "chunk_chars", "news_window",
                     "min_query_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (in-batch negatives), got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive number, got {self.temperature!r}")
        for name in ("warmup_share", "news_share", "remove_prob", "title_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        get_profile(self.pretrained)


DENSE_SPECS = {
    "ci": DenseSpec("ci", steps=12, batch_size=8, lr=1e-3, temperature=0.05, query_len=32, passage_len=64,
                    chunk_chars=60, n_news_windows=200),
    # 87 s on two otherwise idle CPU cores (tools/rag_eval.py prints each recipe's training time)
    "full": DenseSpec("full", steps=400, batch_size=32, lr=2e-4, temperature=0.05),
}


@dataclass(frozen=True)
class Pair:
    """One training pair; `keys` name what it was made from (section, heading): a batch never repeats a key."""

    query: str
    passage: str
    keys: tuple[str, ...]


# --- pairs from the corpora -------------------------------------------------------------------------------------

def ict_pairs(passages: Sequence[tuple[str, str, str]], remove_prob: float, min_query_chars: int,
              seed: int = 0) -> list[Pair]:
    """Inverse-cloze pairs: for each (key, title, text) passage, each of its sentences with at least
    `min_query_chars` characters is a query; the positive is ``title\\ntext`` (or the text alone when the title is
    ''), without that sentence in `remove_prob` of the pairs. Passages of a single sentence give no pair."""
    if not 0.0 <= remove_prob <= 1.0:
        raise ValueError(f"remove_prob must be in [0, 1], got {remove_prob!r}")
    rng = random.Random(seed)
    pairs = []
    for key, title, text in passages:
        sentences = split_sentences(text)
        if len(sentences) < 2:
            continue
        for i, sentence in enumerate(sentences):
            if len(sentence) < min_query_chars:
                continue
            rest = sentences[:i] + sentences[i + 1:] if rng.random() < remove_prob else sentences
            body = "".join(rest)
            pairs.append(Pair(sentence, f"{title}\n{body}" if title else body, (key,)))
    return pairs


def title_pairs(chunks: Sequence[Chunk], min_query_chars: int = 2) -> list[Pair]:
    """(heading, chunk as indexed) pairs of book chunks; a heading shared by several sections ("小结") is one key,
    so no batch holds two of them."""
    return [Pair(c.title, _text_of(c), (c.doc_id, f"title:{c.title}")) for c in chunks
            if len(c.title.strip()) >= min_query_chars]


def news_passages(window: int, n_windows: int | None = None) -> list[tuple[str, str, str]]:
    """People's Daily as (key, '', text) windows of `window` consecutive sentences (one per line of the file)."""
    from ..data import load_peoples_daily

    lines = [line for line in load_peoples_daily() if line.strip()]
    starts = range(0, len(lines) - window + 1, window)
    if n_windows is not None:
        starts = starts[:n_windows]
    return [(f"pd-{s}", "", "".join(lines[s:s + window])) for s in starts]


def corpus_pairs(spec: DenseSpec, book: Sequence[Document]) -> tuple[list[Pair], list[Pair]]:
    """(book pairs, news pairs) for `spec`: inverse-cloze and title pairs of the book's chunks, inverse-cloze pairs
    of People's Daily windows (empty when spec.news_share is 0)."""
    chunks = chunk_documents(book, max_chars=spec.chunk_chars, overlap=0)
    book_ict = ict_pairs([(c.doc_id, c.title, c.text) for c in chunks], spec.remove_prob, spec.min_query_chars,
                         seed=spec.seed)
    titles = title_pairs(chunks)
    # title pairs make up title_share of the book pairs (drawn with repetition when there are fewer)
    rng = random.Random(spec.seed)
    n_titles = round(len(book_ict) * spec.title_share / (1 - spec.title_share)) if spec.title_share < 1 else len(
        titles)
    book_pairs = book_ict + [titles[rng.randrange(len(titles))] for _ in range(n_titles)] if titles else book_ict
    news = []
    if spec.news_share > 0:
        news = ict_pairs(news_passages(spec.news_window, spec.n_news_windows), spec.remove_prob,
                         spec.min_query_chars, seed=spec.seed + 1)
    return book_pairs, news


def sample_batch(pairs: Sequence[Pair], size: int, rng: random.Random, max_tries: int = 50) -> list[Pair]:
    """`size` pairs drawn at random such that no two share a key (none is another's false negative)."""
    if len(pairs) < size:
        raise ValueError(f"need at least {size} pairs for a batch, got {len(pairs)}")
    batch, used = [], set()
    for _ in range(size * max_tries):
        pair = pairs[rng.randrange(len(pairs))]
        if used.isdisjoint(pair.keys):
            batch.append(pair)
            used.update(pair.keys)
            if len(batch) == size:
                return batch
    raise ValueError(f"could not draw {size} pairs with distinct keys: the pairs come from too few sources")


# --- the bi-encoder ---------------------------------------------------------------------------------------------

def embed(encoder: TransformerEncoder, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Unit-length text vectors (B, d): the mean of the last hidden states over real tokens, L2-normalised."""
    hidden = encoder(input_ids, attention_mask).last_hidden_state
    return F.normalize(mean_pool(hidden, attention_mask), dim=-1)


def contrastive_loss(encoder: TransformerEncoder, tokenizer: CharTokenizer, queries: Sequence[str],
                     passages: Sequence[str], temperature: float, query_len: int, passage_len: int) -> Tensor:
    """Symmetric InfoNCE with in-batch negatives (`multimodal.clip_loss`) of queries[i] <-> passages[i]."""
    if len(queries) != len(passages) or len(queries) < 2:
        raise ValueError(f"need >= 2 queries and as many passages, got {len(queries)} and {len(passages)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    q = tokenizer.batch_encode(list(queries), max_len=query_len)
    p = tokenizer.batch_encode(list(passages), max_len=passage_len)
    return clip_loss(embed(encoder, q["input_ids"], q["attention_mask"]),
                     embed(encoder, p["input_ids"], p["attention_mask"]), 1.0 / temperature)


def train_bi_encoder(encoder: TransformerEncoder, tokenizer: CharTokenizer, pair_pools: Sequence[Sequence[Pair]],
                     shares: Sequence[float], steps: int, batch_size: int, lr: float, temperature: float,
                     query_len: int, passage_len: int, warmup_share: float = 0.1, seed: int = 0,
                     progress: bool = False) -> list[float]:
    """AdamW + one-cycle schedule on the contrastive loss; each batch takes round(share * batch_size) pairs from
    each pool (the rest from the first), keys distinct within a pool. Returns every step's loss."""
    from tqdm import tqdm

    if len(pair_pools) != len(shares) or not pair_pools:
        raise ValueError("give one share per pool of pairs")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    counts = [round(s * batch_size) for s in shares]
    counts[0] = batch_size - sum(counts[1:])
    seed_everything(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=max(warmup_share, 1.0 / steps))
    encoder.train()
    losses = []
    for _ in tqdm(range(steps), desc="bi-encoder", disable=not progress):
        batch = [pair for pool, n in zip(pair_pools, counts) if n > 0 for pair in sample_batch(pool, n, rng)]
        loss = contrastive_loss(encoder, tokenizer, [b.query for b in batch], [b.passage for b in batch],
                                temperature, query_len, passage_len)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    encoder.eval()
    return losses


class DenseEncoder:
    """A trained bi-encoder: `encode(texts)` gives unit-length float32 vectors, one row per text."""

    def __init__(self, encoder: TransformerEncoder, tokenizer: CharTokenizer, max_len: int | None = None,
                 meta: dict | None = None) -> None:
        if not isinstance(encoder, TransformerEncoder):
            raise ValueError(f"encoder must be a TransformerEncoder, got {type(encoder).__name__}")
        max_len = encoder.cfg.max_len if max_len is None else max_len
        if isinstance(max_len, bool) or not isinstance(max_len, int) or not 3 <= max_len <= encoder.cfg.max_len:
            raise ValueError(f"max_len must be an int in [3, {encoder.cfg.max_len}], got {max_len!r}")
        self.encoder = encoder.eval()
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.meta = meta or {}

    @property
    def dim(self) -> int:
        """Width of the vectors."""
        return self.encoder.cfg.d_model

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors; texts longer than max_len tokens are cut. Texts are batched by
        length (less padding), the rows come back in the order given."""
        if isinstance(texts, str) or not isinstance(texts, Sequence) or len(texts) == 0:
            raise ValueError("texts must be a non-empty list of strings")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"texts[{i}] must be a non-empty string")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                enc = self.tokenizer.batch_encode([texts[i] for i in rows], max_len=self.max_len)
                out[rows] = embed(self.encoder, enc["input_ids"], enc["attention_mask"]).float().numpy()
        return out


def encoder_from_pretrained(pretrained_model) -> TransformerEncoder:
    """A copy of a pre-trained BERT's encoder without its pooler (mean pooling replaces it)."""
    cfg = EncoderConfig.from_dict(pretrained_model.cfg.to_dict())
    encoder = TransformerEncoder(cfg, add_pooler=False)
    state = {k: v for k, v in pretrained_model.encoder.state_dict().items() if not k.startswith("pooler.")}
    encoder.load_state_dict(state)
    return encoder


def spec_key(spec: DenseSpec) -> str:
    """Short stable hash of a spec: variants tried on dev get cache folders of their own."""
    return hashlib.sha1(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:10]


def dense_dir(profile: str, spec: DenseSpec | None = None, root: Path | None = None) -> Path:
    """Cache folder of the bi-encoder of `profile` (its DENSE_SPECS recipe), or of a variant `spec`."""
    profile = get_profile(profile).name
    base = root or cache_dir("dense")
    if spec is None or spec == DENSE_SPECS[profile]:
        return base / f"bi-encoder-{profile}"
    return base / f"bi-encoder-{profile}-{spec_key(spec)}"


def train_dense(profile: str, spec: DenseSpec | None = None, root: Path | None = None,
                pretrained_root: Path | None = None, book: Sequence[Document] | None = None,
                progress: bool = False) -> Path:
    """Train the bi-encoder of `profile` (or the variant `spec`) from the pre-trained BERT and publish it
    atomically in the cache; returns its folder."""
    from ..pretrained import load_pretrained
    from .benchmark import evaluation_corpus

    profile = get_profile(profile).name
    spec = spec or DENSE_SPECS[profile]
    pre = load_pretrained("bert", spec.pretrained, root=pretrained_root, progress=progress)
    encoder = encoder_from_pretrained(pre.model)
    if spec.passage_len > encoder.cfg.max_len or spec.query_len > encoder.cfg.max_len:
        raise ValueError(f"query_len/passage_len exceed the encoder's context of {encoder.cfg.max_len} tokens")
    book_pairs, news = corpus_pairs(spec, evaluation_corpus() if book is None else book)
    pools, shares = [book_pairs], [1.0 - spec.news_share]
    if news:
        pools.append(news)
        shares.append(spec.news_share)
    start = time.perf_counter()
    losses = train_bi_encoder(encoder, pre.tokenizer, pools, shares, spec.steps, spec.batch_size, spec.lr,
                              spec.temperature, spec.query_len, spec.passage_len, spec.warmup_share, spec.seed,
                              progress)
    seconds = time.perf_counter() - start
    meta = {"profile": profile, "spec": asdict(spec), "train_seconds": round(seconds, 1),
            "n_book_pairs": len(book_pairs), "n_news_pairs": len(news),
            "pretrained": {"path": str(pre.path), "created": pre.meta.get("created")},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    history = [{"step": i + 1, "loss": loss} for i, loss in enumerate(losses)]
    target = dense_dir(profile, spec, root)
    with publish(target) as tmp:
        write_model_files(tmp, encoder, meta, config=encoder.cfg.to_dict(), tokenizer=pre.tokenizer,
                          history=history)
    return target


def load_dense(profile: str | None = None, spec: DenseSpec | None = None, root: Path | None = None,
               pretrained_root: Path | None = None, train_if_missing: bool = True,
               progress: bool = False) -> DenseEncoder:
    """The trained bi-encoder of a profile (or the variant `spec`) from the cache, trained first when missing or
    trained with another recipe."""
    from ..model_cache import HISTORY_FILE, read_json
    from ..pretrained import read_model_folder

    profile = get_profile(profile).name
    want = spec or DENSE_SPECS[profile]

    def read(folder: Path) -> DenseEncoder:
        encoder, tokenizer, meta = read_model_folder(folder, EncoderConfig,
                                                     lambda cfg: TransformerEncoder(cfg, add_pooler=False))
        meta["history"] = read_json(folder, HISTORY_FILE)
        return DenseEncoder(encoder, tokenizer, max_len=want.passage_len, meta=meta)

    def stale(folder: Path) -> bool:
        return read_meta(folder).get("spec") != asdict(want)

    return load_or_train(dense_dir(profile, spec, root),
                         lambda: train_dense(profile, want, root, pretrained_root, progress=progress), read,
                         what="dense bi-encoder", train_if_missing=train_if_missing, stale=stale)


def variant(profile: str, **changes) -> DenseSpec:
    """The profile's recipe with some fields changed (for sweeps on the dev questions)."""
    return replace(DENSE_SPECS[get_profile(profile).name], **changes)


# --- the index --------------------------------------------------------------------------------------------------

def _unit_rows(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows, dim), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name} contains a zero vector, whose cosine similarity is undefined")
    return np.ascontiguousarray(x / norms)


class DenseIndex:
    """Exact cosine search over unit vectors: faiss `IndexFlatIP` (inner product of unit vectors = cosine)."""

    def __init__(self, embeddings, encoder: DenseEncoder | None = None) -> None:
        import faiss

        emb = _unit_rows(embeddings, "embeddings")
        if len(emb) == 0:
            raise ValueError("cannot build a dense index over an empty corpus")
        self.embeddings = emb
        self.encoder = encoder
        self.index = faiss.IndexFlatIP(emb.shape[1])
        self.index.add(emb)

    @classmethod
    def build(cls, items: Sequence[str | Chunk], encoder: DenseEncoder, batch_size: int = 64) -> DenseIndex:
        """Index texts, or chunks (a chunk is embedded as its title, a newline and its text, as BM25 reads it)."""
        if isinstance(items, str) or not isinstance(items, Sequence):
            raise ValueError("items must be a sequence of texts or chunks")
        if len(items) == 0:
            raise ValueError("cannot build a dense index over an empty corpus")
        return cls(encoder.encode([_text_of(item) for item in items], batch_size=batch_size), encoder)

    @property
    def num_documents(self) -> int:
        """Number of indexed vectors."""
        return self.index.ntotal

    def _check_k(self, k) -> None:
        n = self.num_documents
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise ValueError(f"k must be an int in [1, {n}] (the corpus size), got {k!r}")

    def embed_query(self, query: str) -> np.ndarray:
        """The query's unit vector (1, dim); the same checks as `BM25Index.scores`."""
        check_query(query)
        if self.encoder is None:
            raise ValueError("this index was built from vectors without an encoder: use search_vectors")
        return self.encoder.encode([query])

    def search_vectors(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices), each (Q, k), of the k most cosine-similar rows for each query vector, best first."""
        self._check_k(k)
        q = _unit_rows(queries, "queries")
        if q.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"query width {q.shape[1]} != index width {self.embeddings.shape[1]}")
        scores, indices = self.index.search(q, k)
        return scores, indices

    def search(self, query: str, k: int = 10) -> list[tuple[int, float]]:
        """The `k` nearest documents as (index, cosine), best first."""
        self._check_k(k)
        scores, indices = self.search_vectors(self.embed_query(query), k)
        return [(int(i), float(s)) for i, s in zip(indices[0], scores[0])]

    def scores(self, query: str) -> np.ndarray:
        """Cosine similarity of `query` to every document (length `num_documents`)."""
        return (self.embeddings @ self.embed_query(query)[0]).astype(np.float64)


# --- section rankings and their fusion --------------------------------------------------------------------------

def section_ranking(scores: np.ndarray, chunk_sections: Sequence[str], positive_only: bool = False) -> list[str]:
    """Sections ordered by their best chunk's score (ties keep corpus order). With `positive_only`, chunks scoring
    0 or less are left out (BM25: no query word in common)."""
    scores = np.asarray(scores)
    if scores.shape != (len(chunk_sections),):
        raise ValueError(f"{scores.shape[0] if scores.ndim else 0} scores for {len(chunk_sections)} chunks")
    order = np.argsort(-scores, kind="stable")
    if positive_only:
        order = order[scores[order] > 0]
    return list(dict.fromkeys(chunk_sections[i] for i in order))


def hybrid_ranking(question: str, bm25: BM25Index, bm25_sections: Sequence[str], dense: DenseIndex,
                   dense_sections: Sequence[str], k: float = 60) -> list[tuple[str, float]]:
    """(section, fused score) best first: reciprocal-rank fusion of the BM25 and the dense section rankings of
    `question` (each section ranked by its best chunk; the two indexes may be built over different chunkings of
    the same sections; `*_sections[i]` is the section of chunk i). BM25 ranks only chunks sharing a word with
    the question."""
    if bm25.num_documents != len(bm25_sections) or dense.num_documents != len(dense_sections):
        raise ValueError("give the section of every chunk of each index")
    rankings = [section_ranking(bm25.scores(question), bm25_sections, positive_only=True),
                section_ranking(dense.scores(question), dense_sections)]
    return reciprocal_rank_fusion([r for r in rankings if r], k=k)
