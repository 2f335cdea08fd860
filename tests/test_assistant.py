import pytest
import torch

import bigmodel_course.assistant as assistant
from bigmodel_course.assistant import (
    evaluate,
    evaluate_few_shot,
    few_shot_prompt,
    judge_reply,
    score,
    segmentation_f1,
    word_spans,
)
from bigmodel_course.chat import Reply
from bigmodel_course.data.instructions import REFUSAL, Example, direct_arithmetic, tool_call
from bigmodel_course.tokenization import CharTokenizer
from bigmodel_course.tools import ToolRun
from bigmodel_course.transformer import GPT, GPTConfig

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


TOOL_Q = Example("arith", ({"role": "user", "content": "计算 100+200"},
                           {"role": "assistant", "content": tool_call("100+200")},
                           {"role": "tool", "content": "300"}, {"role": "assistant", "content": "300"}), "300",
                 "add-100-200")


def test_judge_reply_orders_malformed_wrong_and_right():
    s = example("sentiment", "正面")
    assert judge_reply(s, "正面", True) == 2.0 and judge_reply(s, "负面", True) == 1.0
    assert judge_reply(s, "正面", False) == 0.0  # cut off before <|end|>
    assert judge_reply(example("segment", "伤情/虽/有"), "伤情/虽有", True) == pytest.approx(1.0 + 0.4)
    # a tool-using question is answered by its call: right when running it gives the answer
    assert judge_reply(TOOL_Q, tool_call("100+200"), True) == 2.0
    assert judge_reply(TOOL_Q, tool_call("100+201"), True) == 1.0
    assert judge_reply(TOOL_Q, '{"name":"calculator"', True) == 0.0  # malformed JSON
    assert judge_reply(TOOL_Q, '{"name":"shell","arguments":{"cmd":"ls"}}', True) == 0.0  # not an allowed tool
    assert judge_reply(TOOL_Q, "300", True) == 0.0  # answered without calling the tool


@pytest.fixture(scope="module")
def plain_tok():
    return CharTokenizer.train(["问答：计算一二三好不正面负这家店很"], min_freq=1)


def test_few_shot_prompt_packs_demos_that_fit(plain_tok):
    q = example("sentiment", "正面", ({"role": "user", "content": "这家店好不好"},
                                       {"role": "assistant", "content": "正面"}))
    demo = example("sentiment", "负面", ({"role": "user", "content": "很不好"},
                                          {"role": "assistant", "content": "负面"}))
    ids, used = few_shot_prompt(q, [demo] * 5, plain_tok, max_len=40, room=4)
    text = plain_tok.decode(ids, skip_special=False)
    assert used == 2 and len(ids) + 4 <= 40  # a demo takes 10 tokens, the question 10, [SEP] 1
    assert text == "[SEP]问：很不好答：负面[SEP]问：很不好答：负面[SEP]问：这家店好不好答："
    ids, used = few_shot_prompt(q, [demo], plain_tok, max_len=15, room=4)  # no room for a demo: zero-shot
    assert used == 0 and plain_tok.decode(ids, skip_special=False) == "[SEP]问：这家店好不好答："
    with pytest.raises(ValueError, match="no room"):
        few_shot_prompt(q, [demo], plain_tok, max_len=12, room=4)
    # a tool-using question is asked with its first turn only (a base model has no tools)
    ids, _ = few_shot_prompt(TOOL_Q, [], plain_tok, max_len=40, room=4)
    assert len(ids) == 1 + len("问：计算 100+200答：")


def test_evaluate_few_shot_reads_up_to_the_next_text_boundary(plain_tok):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=plain_tok.vocab_size, max_len=48, d_model=16, n_heads=2, n_layers=1)).eval()
    q = example("sentiment", "正面", ({"role": "user", "content": "好不好"}, {"role": "assistant", "content": "正面"}))
    result = evaluate_few_shot(model, plain_tok, [q], [q], max_new_tokens=6)["sentiment"]
    assert result["n"] == 1 and result["shots"] == 1.0
    judged = result["judged"][0]
    assert judged.score == float(judged.answer == "正面") and isinstance(judged.well_formed, bool)
