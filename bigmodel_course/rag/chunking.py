"""Sentence-aware chunking of Chinese (and mixed) text into pieces of bounded length with stable ids."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .corpus import Document, book_url

SENTENCE_END = "。！？；!?"
_CLOSERS = "”’」』）)\"'"
_SENTENCE = re.compile(rf"[^{SENTENCE_END}\n]*[{SENTENCE_END}]+[{re.escape(_CLOSERS)}]*|[^{SENTENCE_END}\n]+")


@dataclass(frozen=True)
class Chunk:
    """A piece of a document: `text` is ``document.text[start:end]``; title, anchor and source are the document's."""

    chunk_id: str
    doc_id: str
    text: str
    start: int
    end: int
    title: str
    anchor: str
    source: str = ""

    @property
    def url(self) -> str:
        """Citation link of the chunk's section in the built book ('' for documents that are not book pages)."""
        return book_url(self.source, self.anchor)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence: a run ending in 。！？；!? (closing quotes kept with it) or at a newline.

    Surrounding whitespace is excluded from the spans; blank pieces are dropped.
    """
    spans = []
    for match in _SENTENCE.finditer(text):
        start, end = match.span()
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start < end:
            spans.append((start, end))
    return spans


def split_sentences(text: str) -> list[str]:
    """The sentences of `text` (see `sentence_spans`), punctuation kept."""
    return [text[s:e] for s, e in sentence_spans(text)]


def chunk_spans(text: str, max_chars: int, overlap: int = 0) -> list[tuple[int, int]]:
    """Pack consecutive sentences into spans of at most `max_chars` characters (measured in the original text,
    whitespace between sentences included). Each new span starts with the last `overlap` sentences of the previous
    one, fewer when they and the next sentence would not fit (every span adds at least one new sentence).
    A sentence longer than `max_chars` is cut into pieces of `max_chars` characters.
    """
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise ValueError(f"max_chars must be an int >= 1, got {max_chars!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"overlap must be an int >= 0 (a number of sentences), got {overlap!r}")
    units = []
    for s, e in sentence_spans(text):
        units += [(p, min(p + max_chars, e)) for p in range(s, e, max_chars)]
    spans = []
    i = 0
    while i < len(units):
        j = i + 1
        while j < len(units) and units[j][1] - units[i][0] <= max_chars:
            j += 1
        spans.append((units[i][0], units[j - 1][1]))
        if j == len(units):
            break
        nxt = max(i + 1, j - overlap)
        while units[j][1] - units[nxt][0] > max_chars:
            nxt += 1
        i = nxt
    return spans


def chunk_id(doc_id: str, text: str) -> str:
    """Stable id ``<doc_id>:<first 12 hex digits of sha1(text)>`` (the same on every run and machine)."""
    return f"{doc_id}:{hashlib.sha1(text.encode('utf-8')).hexdigest()[:12]}"


def chunk_documents(documents: Iterable[Document], max_chars: int = 300, overlap: int = 1) -> list[Chunk]:
    """Chunks of every document in order (see `chunk_spans`). Ids come from `chunk_id`; a text repeated inside one
    document gets ``-2``, ``-3``... appended to its later copies so that ids stay unique."""
    chunks: list[Chunk] = []
    for doc in documents:
        if not isinstance(doc, Document):
            raise ValueError(f"chunk_documents expects Document records, got {type(doc).__name__}")
        seen: dict[str, int] = {}
        for start, end in chunk_spans(doc.text, max_chars, overlap):
            text = doc.text[start:end]
            cid = chunk_id(doc.doc_id, text)
            seen[cid] = seen.get(cid, 0) + 1
            if seen[cid] > 1:
                cid = f"{cid}-{seen[cid]}"
            chunks.append(Chunk(cid, doc.doc_id, text, start, end, doc.title, doc.anchor, doc.source))
    return chunks
