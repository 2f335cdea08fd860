"""Measuring an assistant on the instruction tasks: per-task scores of its replies and whether they are well-formed.

Scores: sentiment, entity, arithmetic and refusal replies are right when they equal the reference answer
(entity names compared as a set); segmentation replies get the word-level F1 of their word spans (Chinese word
segmentation's usual measure). A reply is well-formed when it ends with <|end|> inside the token budget and, when
the task needs the calculator, every call the model made parsed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from .chat import reply
from .data.instructions import TASKS, Example
from .tools import run_with_tools


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


def evaluate(model, tokenizer, examples: Sequence[Example], max_new_tokens: int = 64) -> dict[str, dict]:
    """Per task (arithmetic split into through-the-tool and direct): n, mean score and well-formed share."""
    groups: dict[str, list[Judged]] = defaultdict(list)
    for e in examples:
        judged = answer_example(model, tokenizer, e, max_new_tokens)
        key = "arith_direct" if e.task == "arith" and not e.uses_tool else e.task
        groups[key].append(judged)
    order = [t for t in (*TASKS, "arith_direct") if t in groups]
    return {t: {"n": len(groups[t]), "score": sum(j.score for j in groups[t]) / len(groups[t]),
                "well_formed": sum(j.well_formed for j in groups[t]) / len(groups[t]), "judged": groups[t]}
            for t in order}
