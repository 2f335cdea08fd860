import pytest

import bigmodel_course.assistant as assistant
from bigmodel_course.assistant import evaluate, score, segmentation_f1, word_spans
from bigmodel_course.chat import Reply
from bigmodel_course.data.instructions import REFUSAL, Example, direct_arithmetic, tool_call
from bigmodel_course.tools import ToolRun

pytestmark = pytest.mark.unit


def test_segmentation_f1_by_hand():
    assert word_spans(["伤情", "虽", "有"]) == {(0, 2), (2, 3), (3, 4)}
    assert segmentation_f1("伤情/虽/有/好转", "伤情/虽/有/好转") == 1.0
    # predicted 伤情/虽有/好转: 2 of 3 predicted spans right, 2 of 4 gold spans found
    p, r = 2 / 3, 2 / 4
    assert segmentation_f1("伤情/虽有/好转", "伤情/虽/有/好转") == pytest.approx(2 * p * r / (p + r))
    assert segmentation_f1("", "伤情/虽") == 0.0 and segmentation_f1("伤/情虽", "伤情/虽") == 0.0


def example(task, answer, messages=None):
    messages = messages or ({"role": "user", "content": "问题"}, {"role": "assistant", "content": answer})
    return Example(task, messages, answer, "src")


def test_score_per_task():
    assert score(example("sentiment", "正面"), " 正面") == 1.0 and score(example("sentiment", "正面"), "负面") == 0.0
    assert score(example("entity", "北京、上海"), "上海、北京") == 1.0
    assert score(example("entity", "北京、上海"), "北京") == 0.0
    assert score(example("refuse", REFUSAL), REFUSAL) == 1.0 and score(example("refuse", REFUSAL), None) == 0.0
    assert score(example("segment", "伤情/虽"), "伤情/虽") == 1.0


def test_evaluate_groups_tasks_and_checks_format(monkeypatch):
    tool_q = Example("arith", ({"role": "user", "content": "计算 100+200"},
                               {"role": "assistant", "content": tool_call("100+200")},
                               {"role": "tool", "content": "300"}, {"role": "assistant", "content": "300"}), "300",
                     "add-100-200")
    direct_q = direct_arithmetic(tool_q)
    replies = {"好不好": Reply("正面", True, 3), "直接": Reply("301", True, 4), "未完": Reply("负", False, 8)}

    def fake_reply(model, tokenizer, messages, max_new_tokens=64):
        key = "直接" if messages[0]["role"] == "system" else messages[-1]["content"]
        return replies[key]

    def fake_tools(model, tokenizer, messages, max_new_tokens=64):
        return ToolRun("300", calls=[("call", "300")], errors=[])

    monkeypatch.setattr(assistant, "reply", fake_reply)
    monkeypatch.setattr(assistant, "run_with_tools", fake_tools)
    sentiment = example("sentiment", "正面", ({"role": "user", "content": "好不好"},
                                              {"role": "assistant", "content": "正面"}))
    cut = example("sentiment", "负面", ({"role": "user", "content": "未完"}, {"role": "assistant", "content": "负面"}))
    result = evaluate(None, None, [sentiment, cut, tool_q, direct_q])
    assert list(result) == ["sentiment", "arith", "arith_direct"]
    assert result["sentiment"]["score"] == 0.5 and result["sentiment"]["well_formed"] == 0.5
    assert result["arith"]["score"] == 1.0 and result["arith"]["well_formed"] == 1.0
    assert result["arith_direct"]["score"] == 0.0 and result["arith_direct"]["n"] == 1
