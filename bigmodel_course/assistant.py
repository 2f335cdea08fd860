"""Measuring an assistant on the instruction tasks: per-task scores of its replies and whether they are well-formed.

Scores: sentiment, entity, arithmetic and refusal replies are right when they equal the reference answer
(entity names compared as a set); segmentation replies get the word-level F1 of their word spans (Chinese word
segmentation's usual measure). A reply is well-formed when it ends with <|end|> inside the token budget and, when
the task needs the calculator, every call the model made parsed.

A base model (no chat tokens) is asked few-shot instead (`evaluate_few_shot`): solved examples of the same task as
plain text, "问：…答：…", one per text ([SEP] between them, the boundary it was pre-trained on), then the question and
"答："; its answer is what it writes up to the next [SEP].
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from .chat import reply
from .generation import generate
from .data.instructions import TASKS, Example
from .tokenization import CharTokenizer
from .tools import ToolError, execute, parse_call, run_with_tools


def word_spans(words: Sequence[str]) -> set[tuple[int, int]]:
    """(start, end) character offsets of consecutive words."""
    spans, start = set(), 0
    for w in words:
        spans.add((start, start + len(w)))
        start += len(w)
    return spans


def segmentation_f1(predicted: str, gold: str, sep: str = "/") -> float:
    """F1 of the predicted word spans against the gold ones (words joined by `sep`); 0 for an empty prediction."""
    pred = word_spans([w for w in predicted.split(sep) if w])
    ref = word_spans([w for w in gold.split(sep) if w])
    hits = len(pred & ref)
    if not pred or not hits:
        return 0.0
    precision, recall = hits / len(pred), hits / len(ref)
    return 2 * precision * recall / (precision + recall)


def score(example: Example, answer: str | None) -> float:
    """How right `answer` is for the example's task (1.0 = right; segmentation: word F1)."""
    if answer is None:
        return 0.0
    answer = answer.strip()
    if example.task == "segment":
        return segmentation_f1(answer, example.answer)
    if example.task == "entity":
        return float(set(answer.split("、")) == set(example.answer.split("、")))
    return float(answer == example.answer)


def judge_reply(example: Example, text: str, finished: bool) -> float:
    """How good one reply to the example's prompt is, for building preference pairs: 0 malformed (no <|end|>;
    for a tool-using question, not a valid allowed call), 1 well-formed but wrong, 1 + score when well-formed. For a
    tool-using question the reply is the call, right when running it gives the answer."""
    if not finished:
        return 0.0
    if example.uses_tool:
        try:
            result = execute(parse_call(text))
        except ToolError:
            return 0.0
        return 1.0 + float(result == example.answer)
    return 1.0 + score(example, text)


def decision_points(example: Example) -> list[tuple[tuple[dict, ...], str, Callable[[str, bool], float]]]:
    """Each point of the example where the assistant replies, as (prompt, the data's reply, judge of a reply):
    one for most tasks; two for a tool-using question (the call, judged by running it; and the answer after the
    tool's result, right when it is the result)."""
    points = [(example.prompt, example.messages[len(example.prompt)]["content"], partial(judge_reply, example))]
    if example.uses_tool:
        def answer(text: str, finished: bool) -> float:
            return 1.0 + float(text.strip() == example.answer) if finished else 0.0

        points.append((example.messages[:-1], example.answer, answer))
    return points


@dataclass(frozen=True)
class Judged:
    """One example's reply, score and well-formedness."""

    example: Example
    answer: str | None
    score: float
    well_formed: bool


def answer_example(model, tokenizer, example: Example, max_new_tokens: int = 64) -> Judged:
    """Ask the model the example's prompt (through the calculator loop when the task uses the tool) and judge."""
    if example.uses_tool:
        run = run_with_tools(model, tokenizer, example.prompt, max_new_tokens=max_new_tokens)
        well_formed = run.answer is not None and not run.errors and len(run.calls) > 0
        return Judged(example, run.answer, score(example, run.answer), well_formed)
    out = reply(model, tokenizer, example.prompt, max_new_tokens=max_new_tokens)
    return Judged(example, out.text, score(example, out.text), out.finished)


def _group(example: Example) -> str:
    """The row an example is reported in: its task, arithmetic split into through-the-tool and direct."""
    return "arith_direct" if example.task == "arith" and not example.uses_tool else example.task


def _per_task(judged: Sequence[Judged], **extra: Sequence[float]) -> dict[str, dict]:
    """n, mean score, well-formed share and the judged replies per row, plus the mean of each `extra` series."""
    rows: dict[str, list[int]] = defaultdict(list)
    for i, j in enumerate(judged):
        rows[_group(j.example)].append(i)
    return {t: {"n": len(rows[t]), "score": sum(judged[i].score for i in rows[t]) / len(rows[t]),
                "well_formed": sum(judged[i].well_formed for i in rows[t]) / len(rows[t]),
                **{k: sum(v[i] for i in rows[t]) / len(rows[t]) for k, v in extra.items()},
                "judged": [judged[i] for i in rows[t]]}
            for t in (*TASKS, "arith_direct") if t in rows}


def evaluate(model, tokenizer, examples: Sequence[Example], max_new_tokens: int = 64) -> dict[str, dict]:
    """Per task (arithmetic split into through-the-tool and direct): n, mean score and well-formed share."""
    return _per_task([answer_example(model, tokenizer, e, max_new_tokens) for e in examples])


def _as_text(messages: Sequence[dict]) -> str:
    """Turns as 问：…答：… (system and tool turns left out: a base model knows neither)."""
    parts = {"user": "问：", "assistant": "答："}
    return "".join(parts[m["role"]] + m["content"] for m in messages if m["role"] in parts)


def _question_ids(example: Example, tokenizer: CharTokenizer) -> list[int]:
    """The example's question as 问：…答： ids (a sentiment follow-up keeps its earlier turns; every other task is
    asked with its first turn, arithmetic directly)."""
    question = [m for m in example.messages if m["role"] == "user"][:1]
    if example.task == "sentiment" and not example.uses_tool:
        question = [m for m in example.prompt if m["role"] in ("user", "assistant")]
    return tokenizer.encode(_as_text(question) + "答：", add_special=False)


def few_shot_prompt(example: Example, demos: Sequence[Example], tokenizer: CharTokenizer, max_len: int,
                    room: int) -> tuple[list[int], int]:
    """Ids of [SEP] demo [SEP] demo … [SEP] question 答： with as many `demos` (asked directly, final turn only) as
    fit in `max_len` − `room` tokens; returns (ids, demos used)."""
    tail = _question_ids(example, tokenizer)
    ids, used = [tokenizer.sep_id], 0
    for d in demos:
        demo = tokenizer.encode(_as_text([next(m for m in d.messages if m["role"] == "user")])
                                + "答：" + d.answer, add_special=False) + [tokenizer.sep_id]
        if len(ids) + len(demo) + len(tail) + room > max_len:
            break
        ids, used = ids + demo, used + 1
    ids = ids + tail
    if len(ids) + room > max_len:
        raise ValueError(f"the question alone takes {len(ids)} tokens; no room for a {room}-token answer")
    return ids, used


def evaluate_few_shot(model, tokenizer: CharTokenizer, examples: Sequence[Example], demos: Sequence[Example],
                      max_new_tokens: int = 40) -> dict[str, dict]:
    """Per task like `evaluate`, for a base model asked few-shot with demos of the same task (arithmetic always
    directly: a base model cannot call tools); `shots` is the mean number of demos that fit. A long question
    leaves the answer fewer than `max_new_tokens` tokens (what is left of the context)."""
    by_task: dict[str, list[Example]] = defaultdict(list)
    for d in demos:
        by_task[d.task].append(d)
    judged, shots = [], []
    for e in examples:
        room = min(max_new_tokens, model.cfg.max_len - 1 - len(_question_ids(e, tokenizer)))
        ids, used = few_shot_prompt(e, by_task[e.task], tokenizer, model.cfg.max_len, room)
        out = generate(model, torch.tensor([ids]), max_new_tokens=room, stop_ids=(tokenizer.sep_id,))[0, len(ids):]
        out = out.tolist()
        finished = tokenizer.sep_id in out
        text = tokenizer.decode(out[: out.index(tokenizer.sep_id)] if finished else out)
        judged.append(Judged(e, text, score(e, text), finished))
        shots.append(used)
    return _per_task(judged, shots=shots)
