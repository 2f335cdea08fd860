import json
import re
from collections import Counter

import pytest

from bigmodel_course.chat import CHAT_CHARACTERS, CHAT_TOKENS, render
from bigmodel_course.data.instructions import (
    CALCULATOR,
    DIRECT_SYSTEM,
    LABELS,
    PHRASINGS,
    REFUSAL,
    SPLITS,
    TASKS,
    build_instructions,
    direct_arithmetic,
    split_of,
)
from bigmodel_course.tokenization import CharTokenizer

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def data():
    return {split: build_instructions(split, n_per_task=400) for split in SPLITS}


def test_split_of_is_stable_and_about_80_10_10():
    counts = Counter(split_of(f"key-{i}") for i in range(20000))
    assert split_of("pd-7") == split_of("pd-7")
    assert 0.78 < counts["train"] / 20000 < 0.82 and 0.09 < counts["val"] / 20000 < 0.11


def test_every_split_has_every_task_and_several_phrasings(data):
    for split, examples in data.items():
        tasks = Counter(e.task for e in examples)
        assert set(tasks) == set(TASKS), split
        assert all(tasks[t] == 400 for t in TASKS if t != "refuse")
    train = data["train"]
    for task, keys in [("sentiment", ["sentiment"]), ("segment", ["segment"]), ("entity", ["person", "place"]),
                       ("arith", ["add", "mul"])]:
        openings = {e.messages[0]["content"] for e in train if e.task == task}
        used = {p for k in keys for p in PHRASINGS[k] if any(_fits(p, o) for o in openings)}
        assert len(used) >= 3, (task, used)
    assert any(len(e.messages) == 4 for e in train if e.task == "sentiment"), "no multi-turn sentiment example"
    direct = sum(not e.uses_tool for e in train if e.task == "arith") / 400
    assert 0.15 < direct < 0.35  # about a quarter asked without the tool


def _fits(template: str, text: str) -> bool:
    head = template.split("{")[0]
    return text.startswith(head) if head else text.endswith(template.split("}")[-1])


def test_no_source_is_shared_between_splits(data):
    sources = {split: {e.source for e in examples} for split, examples in data.items()}
    assert not sources["train"] & sources["test"] and not sources["train"] & sources["val"]
    assert not sources["val"] & sources["test"]
    full = {split: {e.source for e in build_instructions(split) if e.task == "refuse"} for split in SPLITS}
    assert not full["train"] & full["test"] and len(full["train"]) > len(full["test"]) > 0


def test_answers_are_right_by_construction(data):
    for e in data["train"] + data["test"]:
        question = next(m["content"] for m in e.messages if m["role"] == "user")
        if e.task == "sentiment":
            assert e.answer in LABELS
        elif e.task == "segment":
            words = e.answer.split("/")
            assert len(words) >= 2 and "".join(words) in question
        elif e.task == "entity":
            assert all(name in question for name in e.answer.split("、"))
        elif e.task == "arith" and not e.uses_tool:
            assert e.messages[0]["content"] == DIRECT_SYSTEM and len(e.messages) == 3
            a, b = map(int, re.findall(r"\d{3}", question))
            assert e.answer == str(a + b if re.search("[+加]", question) else a * b)
        elif e.task == "arith":
            call = json.loads(e.messages[1]["content"])
            assert call["name"] == CALCULATOR
            a, op, b = _parse(call["arguments"]["expression"])
            assert e.answer == e.messages[2]["content"] == str(a + b if op == "+" else a * b)
            assert str(a) in question and str(b) in question
            assert e.prompt == e.messages[:1]
            direct = direct_arithmetic(e)
            assert direct.prompt == direct.messages[:2] and direct.answer == e.answer and not direct.uses_tool
        else:
            assert e.answer == REFUSAL
        if not e.uses_tool:
            assert e.prompt == e.messages[:-1] and e.messages[-1]["content"] == e.answer


def _parse(expression: str) -> tuple[int, str, int]:
    op = "+" if "+" in expression else "*"
    a, b = expression.split(op)
    return int(a), op, int(b)


def test_every_conversation_fits_the_128_token_context(data):
    texts = [m["content"] for split in data.values() for e in split for m in e.messages]
    tok = CharTokenizer.train(texts).with_characters(CHAT_CHARACTERS).with_special_tokens(CHAT_TOKENS)
    longest = max(len(render(e.messages, tok).input_ids) for split in data.values() for e in split)
    assert longest <= 128


def test_build_is_deterministic_and_rejects_bad_arguments(data):
    again = build_instructions("test", n_per_task=400)
    assert [e.messages for e in again] == [e.messages for e in data["test"]]
    assert [e.messages for e in build_instructions("test", n_per_task=400, seed=1)] != [e.messages for e in again]
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        build_instructions("dev")
    with pytest.raises(ValueError, match="n_per_task must be a positive int"):
        build_instructions("train", n_per_task=0)
    with pytest.raises(ValueError, match="direct_share must be in"):
        build_instructions("train", direct_share=1.5)
    with pytest.raises(ValueError, match="not a tool-using arithmetic example"):
        direct_arithmetic(next(e for e in again if e.task == "segment"))
