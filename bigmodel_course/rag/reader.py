"""Generative answers grounded in retrieved passages, measured on People's Daily.

Questions are made from its sentences by cloze translation (Lewis et al. 2019): one named person, place or
organisation is replaced by a question word, and the name is the answer. A reader (the course's GPT fine-tuned
inside its pre-trained context) answers each question two ways: closed book, from what its weights hold (its
pre-training read only reviews; fine-tuning saw the train questions), and open book, with a retrieved passage quoted
in the prompt. The measures are exact match, refusals ("资料里没有提到。") and faithfulness: the share of the
answer's character n-grams found in the passage it was shown.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from ..chat import reply
from ..data.corpora import load_peoples_daily_tagged
from ..data.instructions import SPLITS, name_runs, split_of
from ..long_context import LongSFTSpec, TunedModel, fine_tune_long, load_tuned, publish_run
from ..utils import cache_dir, get_profile
from .bm25 import BM25Index
from .chunking import Chunk, chunk_documents
from .corpus import PEOPLES_DAILY_SOURCE, Document

WH = {"nr": "谁", "ns": "哪里", "nt": "哪个机构"}  # question word for a person, place, organisation
WH_BEFORE_NOUN = {"nr": "哪位", "ns": "哪里的", "nt": "哪个机构的"}  # 安子文同志 → 哪位同志
QUESTION_CHARS = (12, 40)  # length of the sentences turned into questions, inclusive
MIN_OTHER_HAN = 8  # Chinese characters besides the name (drops table rows such as 昆明１．４－０．３)
SENTENCE_ENDS = "。！？"
LEADING_CLOSERS = "”’」』）)》"
NOT_IN_PASSAGE = "资料里没有提到。"
_HAN = re.compile(r"[\u4e00-\u9fff]")


@dataclass(frozen=True)
class ClozeQuestion:
    """A question made from one sentence of People's Daily line `line`; `answer` is the name it asks for."""

    qid: str
    question: str
    answer: str
    kind: str
    sentence: str
    line: int
    split: str


def _sentences(tagged: Sequence[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    sentence: list[tuple[str, str]] = []
    for word, tag in tagged:
        sentence.append((word, tag))
        if tag == "w" and word in SENTENCE_ENDS:
            yield sentence
            sentence = []
    if sentence:
        yield sentence


def questions_from(sentence: Sequence[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(question, answer, tag) for each person, place or organisation named exactly once in a tagged sentence of
    QUESTION_CHARS characters; the other names stay in the question. Before a noun the question word takes the
    noun (哪位同志)."""
    text = "".join(w for w, _ in sentence)
    body = text.lstrip(LEADING_CLOSERS)
    if not QUESTION_CHARS[0] <= len(body) <= QUESTION_CHARS[1]:
        return []
    out = []
    for name, tag, after in name_runs(sentence, WH):
        if len(name) < 2 or body.count(name) != 1 or len(_HAN.findall(body)) - len(name) < MIN_OTHER_HAN:
            continue
        next_tag = sentence[after][1] if after < len(sentence) else ""
        wh = WH_BEFORE_NOUN[tag] if next_tag.startswith("n") and next_tag not in WH else WH[tag]
        out.append((body.replace(name, wh).rstrip(SENTENCE_ENDS) + "？", name, tag))
    return out


@lru_cache(maxsize=1)
def _all_questions() -> tuple[ClozeQuestion, ...]:
    """Every question of the train lines; one question drawn per val / test line, so no two share a passage."""
    rng = random.Random("cloze-0")
    out = []
    for i, line in enumerate(load_peoples_daily_tagged()):
        split = split_of(f"pd-{i}")
        made = [(q, "".join(w for w, _ in s).lstrip(LEADING_CLOSERS)) for s in _sentences(line)
                for q in questions_from(s)]
        if made and split != "train":
            made = [rng.choice(made)]
        for k, ((question, answer, tag), sentence) in enumerate(made):
            out.append(ClozeQuestion(f"pd-{i}" + (f".{k}" if split == "train" else ""), question, answer, tag,
                                     sentence, i, split))
    return tuple(out)


def cloze_questions(split: str) -> list[ClozeQuestion]:
    """The questions of one split (train / val / test, by line: the split of the course's other People's Daily
    tasks)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return [q for q in _all_questions() if q.split == split]


class PassageIndex:
    """People's Daily lines cut into chunks of at most `max_chars` characters at sentence ends, searched by BM25."""

    def __init__(self, max_chars: int) -> None:
        lines = ["".join(w for w, _ in line) for line in load_peoples_daily_tagged()]
        docs = [Document(f"pd-{i}", text[:20], text, PEOPLES_DAILY_SOURCE, "") for i, text in enumerate(lines)]
        self.chunks: list[Chunk] = chunk_documents(docs, max_chars=max_chars, overlap=0)
        self.bm25 = BM25Index.build(self.chunks)
        self._by_doc: dict[str, list[Chunk]] = {}
        for c in self.chunks:
            self._by_doc.setdefault(c.doc_id, []).append(c)

    def retrieve(self, question: str, k: int = 1) -> list[Chunk]:
        """The `k` chunks that score highest for `question`."""
        return [self.chunks[i] for i, _ in self.bm25.search(question, k=k)]

    def gold(self, question: ClozeQuestion) -> Chunk:
        """The chunk holding the sentence the question was made from."""
        return next(c for c in self._by_doc[f"pd-{question.line}"] if question.sentence in c.text)


@lru_cache(maxsize=2)
def passage_index(max_chars: int) -> PassageIndex:
    """The People's Daily passage index of `max_chars`-character chunks (built once per process, in seconds)."""
    return PassageIndex(max_chars)


def open_book(question: str, passage: str) -> list[dict]:
    """The prompt with a passage: the question first, then the passage quoted in 「」 (a causal model reads the
    passage already knowing what is asked; no system prompt, so every token of the context goes to these two)."""
    return [{"role": "user", "content": f"问题：{question}\n资料：「{passage}」"}]


def closed_book(question: str) -> list[dict]:
    """The prompt without a passage."""
    return [{"role": "user", "content": f"问题：{question}"}]


def distractor(question: ClozeQuestion, index: PassageIndex, rng: random.Random) -> Chunk:
    """A random chunk of another line that does not contain the answer."""
    while True:
        chunk = rng.choice(index.chunks)
        if chunk.doc_id != f"pd-{question.line}" and question.answer not in chunk.text:
            return chunk


def reader_conversations(questions: Sequence[ClozeQuestion], index: PassageIndex, distractor_share: float = 0.15,
                         seed: int = 0) -> list[list[dict]]:
    """Training conversations: each question closed book (answered with the name) and open book with the
    retrieved passage (the name when the passage holds it, else NOT_IN_PASSAGE); a `distractor_share` of the
    questions also with an unrelated passage (NOT_IN_PASSAGE)."""
    rng = random.Random(f"reader-{seed}")
    out = []
    for q in questions:
        out.append([*closed_book(q.question), {"role": "assistant", "content": q.answer}])
        passage = index.retrieve(q.question)[0].text
        target = q.answer if q.answer in passage else NOT_IN_PASSAGE
        out.append([*open_book(q.question, passage), {"role": "assistant", "content": target}])
        if rng.random() < distractor_share:
            out.append([*open_book(q.question, distractor(q, index, rng).text),
                        {"role": "assistant", "content": NOT_IN_PASSAGE}])
    rng.shuffle(out)
    return out


@dataclass(frozen=True)
class ReaderSpec:
    """The reader's fine-tuning: questions used (None: all of the train split), the passage length, the context
    and the optimizer."""

    n_questions: int | None
    passage_chars: int
    max_len: int
    max_steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    distractor_share: float = 0.15


READER_SPECS = {
    "ci": ReaderSpec(n_questions=40, passage_chars=60, max_len=128, max_steps=8, batch_size=8, lr=1e-3,
                     warmup_steps=2),
    "full": ReaderSpec(n_questions=None, passage_chars=60, max_len=128, max_steps=3000, batch_size=16, lr=1e-3,
                       warmup_steps=50),
}


def reader_dir(profile: str, root: Path | None = None) -> Path:
    """Cache folder of the profile's reader."""
    return (root or cache_dir("reader")) / get_profile(profile).name


def train_reader(profile: str = "full", root: Path | None = None, progress: bool = True) -> Path:
    """Fine-tune the profile's reader on `reader_conversations` of the train split and publish it."""
    profile = get_profile(profile).name
    spec = READER_SPECS[profile]
    questions = cloze_questions("train")[: spec.n_questions]
    conversations = reader_conversations(questions, passage_index(spec.passage_chars), spec.distractor_share)
    run = fine_tune_long(conversations, LongSFTSpec(spec.max_len, spec.max_steps, spec.batch_size, spec.lr,
                                                    spec.warmup_steps), profile, progress)
    return publish_run(run, {"profile": profile, "spec": asdict(spec), "questions": len(questions)},
                       reader_dir(profile, root))


class Reader(TunedModel):
    """A loaded reader: model, chat tokenizer, training history and run facts."""

    @property
    def index(self) -> PassageIndex:
        """The passage index of the chunk length the reader was trained with."""
        return passage_index(self.meta["spec"]["passage_chars"])

    def answer(self, messages: Sequence[dict], max_new_tokens: int = 16) -> str:
        """The greedy reply to a prompt of `open_book` or `closed_book`."""
        return reply(self.model, self.tokenizer, messages, max_new_tokens=max_new_tokens).text.strip()


def load_reader(profile: str | None = None, root: Path | None = None, progress: bool = True) -> Reader:
    """Load the profile's reader from the cache, training it first when missing or trained with another spec."""
    profile = get_profile(profile).name
    return load_tuned(reader_dir(profile, root), lambda: train_reader(profile, root, progress), READER_SPECS[profile],
                      "RAG reader", Reader)


def faithfulness(answer: str, passages: Sequence[str], n: int = 2) -> float:
    """Share of the answer's character n-grams (its characters when shorter than n) found in any passage."""
    if not answer:
        raise ValueError("faithfulness of an empty answer is undefined")
    grams = [answer[i:i + n] for i in range(len(answer) - n + 1)] or list(answer)
    return sum(any(g in p for p in passages) for g in grams) / len(grams)


def align_answer(question: str, passage: str, context: int = 4) -> str | None:
    """The rule that undoes the cloze: find up to `context` characters on each side of the question word in the
    passage and return what lies between them (None when they are not found or enclose over 12 characters). The
    的 of 哪里的 / 哪个机构的 was added by the question, so what follows it is what follows the name."""
    for wh in sorted({*WH.values(), *WH_BEFORE_NOUN.values()}, key=len, reverse=True):
        at = question.find(wh)
        if at < 0:
            continue
        before, after = question[:at][-context:], question[at + len(wh):].rstrip("？")[:context]
        start = passage.find(before) + len(before) if before else None
        if before and start < len(before):
            continue
        end = passage.find(after, start or 0) if after else -1
        if end < 0:
            continue
        if start is None:  # the name opens the sentence: back up to the previous punctuation
            start = max(passage.rfind(p, 0, end) for p in "，。！？；：「“ ") + 1
        if 0 < end - start <= 12:
            return passage[start:end]
    return None


def majority_answers(questions: Sequence[ClozeQuestion]) -> dict[str, str]:
    """The most frequent answer of each kind (nr / ns / nt): the closed-book baseline that knows no text."""
    counts: dict[str, Counter] = {}
    for q in questions:
        counts.setdefault(q.kind, Counter())[q.answer] += 1
    return {kind: c.most_common(1)[0][0] for kind, c in counts.items()}


@dataclass(frozen=True)
class ReaderRecord:
    """One test question read four ways: closed book, with the retrieved passage, with the passage it came from
    (oracle) and with an unrelated passage (distractor)."""

    question: ClozeQuestion
    retrieved: str
    closed: str
    open: str
    oracle: str
    distracted: str
    distractor_passage: str

    @property
    def hit(self) -> bool:
        """The retrieved passage holds the answer."""
        return self.question.answer in self.retrieved

    @property
    def open_faithfulness(self) -> float | None:
        """`faithfulness` of the open-book answer to the retrieved passage; None when it refused or said nothing."""
        return None if self.open in (NOT_IN_PASSAGE, "") else faithfulness(self.open, [self.retrieved])


def read_questions(reader: Reader, questions: Sequence[ClozeQuestion], index: PassageIndex,
                   seed: int = 0) -> list[ReaderRecord]:
    """Each question answered by the reader closed book, with the top retrieved chunk, the gold chunk and a
    distractor chunk."""
    rng = random.Random(f"reader-eval-{seed}")
    out = []
    for q in questions:
        retrieved = index.retrieve(q.question)[0].text
        other = distractor(q, index, rng).text
        out.append(ReaderRecord(q, retrieved, reader.answer(closed_book(q.question)),
                                reader.answer(open_book(q.question, retrieved)),
                                reader.answer(open_book(q.question, index.gold(q).text)),
                                reader.answer(open_book(q.question, other)), other))
    return out


def summarize(records: Sequence[ReaderRecord]) -> dict[str, float]:
    """Exact match of each way of asking, refusals, and faithfulness of the open-book answers that are not refusals
    (mean, and share fully found in the passage); with a distractor passage, the share refused and the share
    answered with a name not in the passage."""
    if not records:
        raise ValueError("no records to summarize")
    n = len(records)
    faith = [f for r in records if (f := r.open_faithfulness) is not None]
    return {
        "n": n,
        "retrieval_hit": sum(r.hit for r in records) / n,
        "closed_em": sum(r.closed == r.question.answer for r in records) / n,
        "open_em": sum(r.open == r.question.answer for r in records) / n,
        "oracle_em": sum(r.oracle == r.question.answer for r in records) / n,
        "open_refused": sum(r.open == NOT_IN_PASSAGE for r in records) / n,
        "open_faithfulness": sum(faith) / len(faith) if faith else float("nan"),
        "open_fully_supported": sum(f == 1.0 for f in faith) / len(faith) if faith else float("nan"),
        "distractor_refused": sum(r.distracted == NOT_IN_PASSAGE for r in records) / n,
        "distractor_made_up": sum(r.distracted not in (NOT_IN_PASSAGE, "")
                                  and r.distracted not in r.distractor_passage for r in records) / n,
    }
