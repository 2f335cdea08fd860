"""Instruction data built offline from the project's corpora, for teaching a small GPT to follow instructions.

Five tasks, each asked in several phrasings:

- sentiment: a review (the Chapter 4 corpus) → 正面 / 负面; some conversations ask about a second review in a
  second user turn;
- segment: a clause of People's Daily (Jan 1998, hand-segmented) → its words joined by "/";
- entity: a clause → the person names (人名) or place names (地名) it mentions, joined by "、" (the corpus's
  nr / ns tags; a surname and given name tagged separately are joined);
- arith: addition or multiplication of three-digit numbers, answered through a calculator tool call
  (an OpenAI-style JSON call, the tool's result as a `tool` turn, then the answer); a share is asked under the
  system prompt DIRECT_SYSTEM and answered with the number directly, so the same model can be measured both ways
  (`direct_arithmetic`);
- refuse: questions no offline corpus can answer (weather, prices, bookings, today's news) → a fixed refusal.

Splits follow the source text, so no test text is ever seen in training: reviews keep their Chapter 4 split
(`review_splits`), People's Daily clauses and arithmetic problems and refusal questions go to train / val / test
by a hash of their source sentence or problem (80 / 10 / 10).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import lru_cache

from .corpora import load_peoples_daily_tagged, review_splits

TASKS = ("sentiment", "segment", "entity", "arith", "refuse")
SPLITS = ("train", "val", "test")
REFUSAL = "抱歉，这个问题超出了我能回答的范围。"
DIRECT_SYSTEM = "不要调用工具，直接回答。"
LABELS = ("负面", "正面")
CALCULATOR = "calculator"
MAX_REVIEW_CHARS = 48  # a review longer than this is not used (the conversation must fit 128 tokens)
CLAUSE_CHARS = (6, 22)  # People's Daily clauses used for segment / entity, inclusive

PHRASINGS = {
    "sentiment": ("这条评论是正面还是负面？{text}", "判断情感：{text}", "“{text}”这条评论的态度是正面还是负面？",
                  "请判断下面评论的情感倾向。\n{text}"),
    "sentiment_followup": ("那这条呢？{text}", "再判断一条：{text}"),
    "segment": ("请给这句话分词：{text}", "把下面的句子切分成词，用“/”隔开：{text}", "分词：{text}"),
    "person": ("这句话里提到了哪些人？{text}", "找出句子中的人名：{text}"),
    "place": ("这句话里提到了哪些地名？{text}", "找出句子中的地名：{text}"),
    "add": ("计算 {a}+{b}", "{a}加{b}等于多少？", "请算一下 {a} 加上 {b}"),
    "mul": ("计算 {a}×{b}", "{a}乘{b}等于多少？", "请算一下 {a} 乘以 {b}"),
}
_REFUSE_TEMPLATES = ("{x}明天的天气怎么样？", "帮我预订{x}的酒店。", "{x}现在的房价是多少？", "今天{x}有什么新闻？",
                     "从这里到{x}要开多久的车？", "{x}最好吃的餐厅在哪里？")
_REFUSE_SLOTS = ("北京", "上海", "广州", "深圳", "杭州", "成都", "武汉", "西安", "南京", "重庆", "天津", "苏州",
                 "长沙", "郑州", "青岛", "大连", "厦门", "昆明", "沈阳", "哈尔滨", "济南", "福州", "合肥", "南昌")


@dataclass(frozen=True)
class Example:
    """One conversation ending with the assistant's answer; `answer` is that last reply, `source` the text or
    problem it was built from (what the split follows)."""

    task: str
    messages: tuple[dict, ...]
    answer: str
    source: str

    @property
    def uses_tool(self) -> bool:
        """True for arithmetic answered through the calculator (no DIRECT_SYSTEM prompt)."""
        return self.task == "arith" and self.messages[0]["role"] != "system"

    @property
    def prompt(self) -> tuple[dict, ...]:
        """What a model is given at evaluation: the question alone when it must call the tool itself, every turn
        before the final answer otherwise."""
        return self.messages[:1] if self.uses_tool else self.messages[:-1]


def direct_arithmetic(example: Example) -> Example:
    """The same arithmetic problem asked under DIRECT_SYSTEM: answered with the number, no tool call."""
    if not example.uses_tool:
        raise ValueError(f"not a tool-using arithmetic example: {example.task}")
    messages = ({"role": "system", "content": DIRECT_SYSTEM}, example.messages[0], _assistant(example.answer))
    return Example("arith", messages, example.answer, example.source)


def split_of(key: str) -> str:
    """train / val / test for a source key, by a stable hash (80 / 10 / 10)."""
    bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 10
    return "train" if bucket < 8 else "val" if bucket == 8 else "test"


def tool_call(expression: str) -> str:
    """The assistant's call of the calculator, as compact JSON (OpenAI-style name + arguments)."""
    return json.dumps({"name": CALCULATOR, "arguments": {"expression": expression}}, ensure_ascii=False,
                      separators=(",", ":"))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def sentiment_examples(split: str, rng: random.Random, followup_share: float = 0.2) -> list[Example]:
    """Every short review of the split; a `followup_share` of them get a second review in a second turn."""
    _check_split(split)
    s = review_splits(seed=0)
    texts, labels = {"train": (s.train_texts, s.train_labels), "val": (s.val_texts, s.val_labels),
                     "test": (s.test_texts, s.test_labels)}[split]
    pool = [(t, y) for t, y in zip(texts, labels) if len(t) <= MAX_REVIEW_CHARS and "\n" not in t]
    out = []
    for text, label in pool:
        messages = [_user(rng.choice(PHRASINGS["sentiment"]).format(text=text)), _assistant(LABELS[label])]
        if rng.random() < followup_share:
            other, other_label = rng.choice(pool)
            if len(text) + len(other) <= MAX_REVIEW_CHARS + 16:
                messages += [_user(rng.choice(PHRASINGS["sentiment_followup"]).format(text=other)),
                             _assistant(LABELS[other_label])]
        out.append(Example("sentiment", tuple(messages), messages[-1]["content"], text))
    return out


@lru_cache(maxsize=1)
def _clauses() -> tuple[tuple[int, tuple[tuple[str, str], ...]], ...]:
    """(sentence index, clause) for every run of tagged words between punctuation, of CLAUSE_CHARS characters."""
    out = []
    for i, sentence in enumerate(load_peoples_daily_tagged()):
        clause: list[tuple[str, str]] = []
        for word, tag in [*sentence, ("。", "w")]:
            if tag == "w":
                n = sum(len(w) for w, _ in clause)
                if len(clause) >= 2 and CLAUSE_CHARS[0] <= n <= CLAUSE_CHARS[1]:
                    out.append((i, tuple(clause)))
                clause = []
            else:
                clause.append((word, tag))
    return tuple(out)


def clause_texts() -> tuple[str, ...]:
    """The People's Daily clauses of CLAUSE_CHARS characters, as plain text."""
    return tuple("".join(w for w, _ in clause) for _, clause in _clauses())


def name_runs(words: Sequence[tuple[str, str]], tags: Collection[str]) -> list[tuple[str, str, int]]:
    """(name, tag, index of the word after it) for each run of adjacent words with the same tag in `tags`, joined
    (a surname and given name are tagged separately), in order."""
    out, run, tag = [], "", None
    for i, (word, t) in enumerate([*words, ("", "")]):
        if t in tags and t == tag:
            run += word
            continue
        if run:
            out.append((run, tag, i))
        run, tag = (word, t) if t in tags else ("", None)
    return out


def _names(clause: Sequence[tuple[str, str]], tag: str) -> list[str]:
    """The distinct names tagged `tag` in order (`name_runs`)."""
    return list(dict.fromkeys(name for name, _, _ in name_runs(clause, (tag,))))


def segment_examples(split: str, rng: random.Random, n: int) -> list[Example]:
    """`n` People's Daily clauses of the split → words joined by '/'."""
    _check_split(split)
    pool = [(i, c) for i, c in _clauses() if split_of(f"pd-{i}") == split]
    out = []
    for i, clause in rng.sample(pool, min(n, len(pool))):
        text = "".join(w for w, _ in clause)
        answer = "/".join(w for w, _ in clause)
        messages = (_user(rng.choice(PHRASINGS["segment"]).format(text=text)), _assistant(answer))
        out.append(Example("segment", messages, answer, f"pd-{i}"))
    return out


def entity_examples(split: str, rng: random.Random, n: int) -> list[Example]:
    """`n` clauses of the split that name people (nr) or places (ns) → those names joined by '、'."""
    _check_split(split)
    pool = []
    for i, clause in _clauses():
        if split_of(f"pd-{i}") != split:
            continue
        for kind, tag in (("person", "nr"), ("place", "ns")):
            names = _names(clause, tag)
            if names:
                pool.append((i, clause, kind, names))
    out = []
    for i, clause, kind, names in rng.sample(pool, min(n, len(pool))):
        text = "".join(w for w, _ in clause)
        answer = "、".join(names)
        messages = (_user(rng.choice(PHRASINGS[kind]).format(text=text)), _assistant(answer))
        out.append(Example("entity", messages, answer, f"pd-{i}"))
    return out


def arithmetic_examples(split: str, rng: random.Random, n: int) -> list[Example]:
    """`n` additions or multiplications of two three-digit numbers whose problem hashes into the split: the
    assistant calls the calculator, reads its result and answers with the number."""
    _check_split(split)
    out, seen = [], set()
    while len(out) < n:
        a, b, op = rng.randint(100, 999), rng.randint(100, 999), rng.choice(("add", "mul"))
        key = f"{op}-{a}-{b}"
        if key in seen or split_of(key) != split:
            continue
        seen.add(key)
        expression = f"{a}{'+' if op == 'add' else '*'}{b}"
        result = str(a + b if op == "add" else a * b)
        messages = (_user(rng.choice(PHRASINGS[op]).format(a=a, b=b)), _assistant(tool_call(expression)),
                    {"role": "tool", "content": result}, _assistant(result))
        out.append(Example("arith", messages, result, key))
    return out


def refusal_examples(split: str, rng: random.Random) -> list[Example]:
    """Every question of the split (template × place) that needs live or outside information → REFUSAL."""
    _check_split(split)
    out = []
    for t, template in enumerate(_REFUSE_TEMPLATES):
        for x in _REFUSE_SLOTS:
            key = f"refuse-{t}-{x}"
            if split_of(key) == split:
                messages = (_user(template.format(x=x)), _assistant(REFUSAL))
                out.append(Example("refuse", messages, REFUSAL, key))
    rng.shuffle(out)
    return out


def build_instructions(split: str, n_per_task: int | None = None, seed: int = 0,
                       direct_share: float = 0.25) -> list[Example]:
    """The instruction examples of one split: up to `n_per_task` of each task (None: every sentiment and refusal
    example, and as many segment / entity / arithmetic examples as there are sentiment ones), shuffled; a
    `direct_share` of the arithmetic problems is asked under DIRECT_SYSTEM instead of through the tool."""
    _check_split(split)
    if n_per_task is not None and (not isinstance(n_per_task, int) or n_per_task < 1):
        raise ValueError(f"n_per_task must be a positive int or None, got {n_per_task!r}")
    if not 0.0 <= direct_share <= 1.0:
        raise ValueError(f"direct_share must be in [0, 1], got {direct_share!r}")
    rng = random.Random(f"{seed}-{split}")
    sentiment = sentiment_examples(split, rng)
    n = len(sentiment) if n_per_task is None else n_per_task
    arith = [direct_arithmetic(e) if rng.random() < direct_share else e for e in arithmetic_examples(split, rng, n)]
    examples = (sentiment[:n] + segment_examples(split, rng, n) + entity_examples(split, rng, n) + arith
                + refusal_examples(split, rng)[:n])
    rng.shuffle(examples)
    return examples
