"""Ask the book: rank its sections for a question and quote the sentences that answer it, each with its link.

The answer is extractive: every sentence is copied from the book, so nothing is made up, and each comes with the
section it was taken from. The index (the book's chunks and their BM25 weights) is built once, cached under
``<cache>/rag/book-index`` and rebuilt when a chapter or a page of the book changes (their sizes and modification
times are its fingerprint).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from ..files import atomic_directory
from ..utils import cache_dir
from .bm25 import BM25Index, check_query, jieba_tokenize
from .chunking import Chunk, chunk_documents, split_sentences
from .corpus import SKIPPED_BOOK_PAGES, default_root, load_book_sections

MAX_CHARS = 600  # chunk size with the best BM25 MRR on the dev questions (tools/rag_eval.py prints each setting)
OVERLAP = 1  # sentences carried into the next chunk
INDEX_VERSION = 1  # bump when the stored format or the chunking changes
K_SECTIONS = 3  # sections shown with an answer
# Below this best-chunk BM25 score the book is taken not to answer the question: the middle of the thresholds that
# do best on the dev questions and the dev out-of-scope questions (tools/rag_ask_eval.py prints both).
REFUSE_BELOW = 4.55


@dataclass(frozen=True)
class Passage:
    """One quoted sentence and the section it comes from."""

    text: str
    title: str
    url: str
    doc_id: str
    score: float


@dataclass(frozen=True)
class Answer:
    """The quoted sentences (best first) and the sections retrieved for the question (best first)."""

    question: str
    passages: list[Passage]
    sections: list[tuple[str, str, str]]  # (doc_id, title, url)

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return {"question": self.question, "passages": [asdict(p) for p in self.passages],
                "sections": [{"doc_id": d, "title": t, "url": u} for d, t, u in self.sections]}


def book_fingerprint(root: str | Path | None = None) -> str:
    """sha256 of the names, sizes and modification times of the files the book's sections are read from."""
    root = default_root() if root is None else Path(root)
    files = sorted((root / "chapters").glob("*.ipynb")) + sorted(
        p for p in (root / "book").glob("*.md") if p.name not in SKIPPED_BOOK_PAGES)
    if not files:
        raise ValueError(f"{root} has no chapters/*.ipynb: pass the root of the book's repository")
    digest = hashlib.sha256(f"v{INDEX_VERSION}".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class BookIndex:
    """The book's chunks with a BM25 index over them; `sections` ranks sections by their best chunk."""

    def __init__(self, chunks: list[Chunk], bm25: BM25Index, fingerprint: str = "") -> None:
        if len(chunks) != bm25.num_documents:
            raise ValueError(f"{len(chunks)} chunks but the BM25 index holds {bm25.num_documents} documents")
        self.chunks = chunks
        self.bm25 = bm25
        self.fingerprint = fingerprint

    @classmethod
    def build(cls, root: str | Path | None = None) -> BookIndex:
        """Chunk every section of the book and index the chunks."""
        chunks = chunk_documents(load_book_sections(root), max_chars=MAX_CHARS, overlap=OVERLAP)
        return cls(chunks, BM25Index.build(chunks), book_fingerprint(root))

    def save(self, folder: str | Path) -> Path:
        """Write the index to `folder` atomically (JSON, NumPy and SciPy files; no pickle)."""
        with atomic_directory(Path(folder)) as tmp:
            (tmp / "chunks.json").write_text(json.dumps([asdict(c) for c in self.chunks], ensure_ascii=False),
                                             encoding="utf-8")
            (tmp / "vocabulary.json").write_text(json.dumps(self.bm25.vocabulary, ensure_ascii=False),
                                                 encoding="utf-8")
            sparse.save_npz(tmp / "weights.npz", self.bm25.weights.tocsr())
            np.save(tmp / "idf.npy", self.bm25.idf)
            meta = {"fingerprint": self.fingerprint, "version": INDEX_VERSION, "k1": self.bm25.k1,
                    "b": self.bm25.b, "stopwords": sorted(self.bm25.stopwords)}
            (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> BookIndex:
        """Read an index written by `save` (the tokenizer is always `jieba_tokenize`)."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            chunks = [Chunk(**c) for c in json.loads((folder / "chunks.json").read_text(encoding="utf-8"))]
            vocabulary = json.loads((folder / "vocabulary.json").read_text(encoding="utf-8"))
            weights = sparse.load_npz(folder / "weights.npz").tocsr()
            idf = np.load(folder / "idf.npy", allow_pickle=False)
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"no readable book index in {folder}: {err}") from err
        bm25 = BM25Index(weights, vocabulary, jieba_tokenize, frozenset(meta["stopwords"]), meta["k1"], meta["b"],
                         idf)
        return cls(chunks, bm25, meta["fingerprint"])

    @classmethod
    def load_or_build(cls, root: str | Path | None = None, folder: str | Path | None = None) -> BookIndex:
        """The cached index when it matches the book on disk, else a new one (then cached)."""
        folder = Path(folder) if folder is not None else cache_dir("rag") / "book-index"
        fingerprint = book_fingerprint(root)
        if (folder / "meta.json").is_file():
            try:
                index = cls.load(folder)
                if index.fingerprint == fingerprint:
                    return index
            except ValueError:
                pass  # unreadable: rebuild it
        index = cls.build(root)
        index.save(folder)
        return index

    def sections(self, question: str, k: int = 3) -> list[tuple[str, float, list[int]]]:
        """The `k` best sections with a positive score: (doc_id, best chunk score, chunk indices best first)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        scores = self.bm25.scores(question)
        ranked: dict[str, list[int]] = {}
        for i in np.argsort(-scores, kind="stable"):
            if scores[i] <= 0:
                break
            doc_id = self.chunks[i].doc_id
            if doc_id in ranked:
                ranked[doc_id].append(int(i))
            elif len(ranked) < k:
                ranked[doc_id] = [int(i)]
        return [(doc_id, float(scores[ids[0]]), ids) for doc_id, ids in ranked.items()]


def check_question(question: str) -> str:
    """The question stripped; a clear error when it is not a non-empty string of at most MAX_QUERY_CHARS."""
    return check_query(question, "question")


def answer(question: str, index: BookIndex, k_sections: int = K_SECTIONS, max_sentences: int = 3,
           chunks_per_section: int = 2, refuse_below: float = REFUSE_BELOW) -> Answer:
    """Quote the sentences of the best sections' best chunks that share the most informative words with the
    question (the sum of the BM25 idf of the question's distinct tokens found in the sentence); ties keep the
    earlier section and position. No passage and no section when the best chunk scores below `refuse_below`."""
    question = check_question(question)
    if isinstance(max_sentences, bool) or not isinstance(max_sentences, int) or max_sentences < 1:
        raise ValueError(f"max_sentences must be a positive int, got {max_sentences!r}")
    bm25 = index.bm25
    wanted = {bm25.vocabulary[t] for t in bm25.tokenize(question) if t in bm25.vocabulary}
    ranked = index.sections(question, k_sections)
    if not ranked or ranked[0][1] < refuse_below:
        return Answer(question, [], [])
    candidates = []
    for rank, (doc_id, _, ids) in enumerate(ranked):
        seen = set()
        for i in ids[:chunks_per_section]:
            chunk = index.chunks[i]
            for position, sentence in enumerate(split_sentences(chunk.text)):
                if sentence in seen:  # overlapping chunks repeat a sentence
                    continue
                seen.add(sentence)
                found = {bm25.vocabulary[t] for t in bm25.tokenize(sentence) if t in bm25.vocabulary} & wanted
                score = float(sum(bm25.idf[j] for j in found))
                if score > 0:
                    candidates.append((-score, rank, position, Passage(sentence, chunk.title, chunk.url, doc_id,
                                                                       score)))
    candidates.sort(key=lambda c: c[:3])
    first = {}
    for doc_id, _, ids in ranked:
        chunk = index.chunks[ids[0]]
        first[doc_id] = (doc_id, chunk.title, chunk.url)
    return Answer(question, [c[3] for c in candidates[:max_sentences]], list(first.values()))


def format_answer(result: Answer, html_root: str | Path | None = None) -> str:
    """The answer as terminal text: numbered quotes with their section and link, then the sections retrieved.

    With `html_root` (the built book's folder) the links are absolute file:// URLs.
    """
    def link(url: str) -> str:
        if html_root is None or not url:
            return url
        page, _, anchor = url.partition("#")
        uri = (Path(html_root).resolve() / page).as_uri()
        return f"{uri}#{anchor}" if anchor else uri

    lines = [f"问：{result.question}"]
    if not result.passages:
        lines.append("书中没有找到与这个问题相关的内容。")
        return "\n".join(lines)
    lines.append("答（摘自书中，按相关程度排序）：")
    for n, p in enumerate(result.passages, start=1):
        lines.append(f"{n}. {p.text}")
        lines.append(f"   —— {p.title}  {link(p.url)}")
    lines.append("相关章节：")
    lines += [f"- {title}  {link(url)}" for _, title, url in result.sections]
    return "\n".join(lines)
