"""The book's retrieval evaluation set: reader questions in Chinese, each with the sections that answer it.

`questions.jsonl` (shipped with the package) holds one record per line:
``{"id": "q001", "question": "...", "page": "ch05_compression", "sections": ["ch05-pruning"], "split": "dev"}``.
`sections` are section keys of `corpus.split_sections` (the MyST label, or the heading slug when the heading has no
label), so the gold document ids are ``<page>#<section>``. The split is fixed in the file: within each page the
questions alternate between dev and test (pages alternate which half gets the first one), so both halves cover every
page and no question is in both. Tune on dev; report test once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

SPLITS = ("dev", "test")
QUESTIONS_FILE = "questions.jsonl"


@dataclass(frozen=True)
class Question:
    """One evaluation question and the ids of the book sections that answer it."""

    qid: str
    question: str
    page: str
    sections: tuple[str, ...]
    split: str

    @property
    def gold_doc_ids(self) -> frozenset[str]:
        """``<page>#<section>`` for each answering section (the `Document.doc_id` of book sections)."""
        return frozenset(f"{self.page}#{s}" for s in self.sections)


def _parse(line: str, number: int) -> Question:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{QUESTIONS_FILE} line {number}: not JSON ({err})") from err
    missing = {"id", "question", "page", "sections", "split"} - record.keys()
    if missing:
        raise ValueError(f"{QUESTIONS_FILE} line {number}: missing fields {sorted(missing)}")
    if record["split"] not in SPLITS:
        raise ValueError(f"{QUESTIONS_FILE} line {number}: split must be one of {SPLITS}, got {record['split']!r}")
    if not record["question"].strip() or not record["sections"]:
        raise ValueError(f"{QUESTIONS_FILE} line {number}: empty question or no answering section")
    return Question(record["id"], record["question"], record["page"], tuple(record["sections"]), record["split"])


def load_questions(split: str | None = None) -> list[Question]:
    """All questions in file order, or only those of `split` ('dev' or 'test')."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    text = resources.files(__package__).joinpath(QUESTIONS_FILE).read_text(encoding="utf-8")
    questions = [_parse(line, n) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    return [q for q in questions if split is None or q.split == split]
