import json
import random

import pytest

import bigmodel_course.tools as tools_module
from bigmodel_course.chat import Reply
from bigmodel_course.data import review_splits
from bigmodel_course.data.instructions import tool_call
from bigmodel_course.tools import (
    TOOLS,
    ToolCall,
    ToolError,
    calculate,
    execute,
    parse_call,
    review_lookup,
    run_with_tools,
)

pytestmark = pytest.mark.unit


def test_calculator_agrees_with_plain_arithmetic():
    rng = random.Random(0)
    for _ in range(300):
        a, b, c = rng.randint(-999, 999), rng.randint(1, 999), rng.randint(1, 99)
        assert calculate(f"{a}+{b}") == str(a + b)
        assert calculate(f"{a}*{b}") == str(a * b)
        assert calculate(f"({a}-{b})*{c}") == str((a - b) * c)
        assert calculate(f"{a}×{b}") == str(a * b)  # the multiplication sign people type
    assert calculate("7/2") == "3.5" and calculate("8/2") == "4" and calculate("2**10") == "1024"
    assert calculate("-(3+4)%5") == str(-(3 + 4) % 5) and calculate("1/3") == "0.333333"


@pytest.mark.parametrize("expression, error", [
    ("__import__('os').system('ls')", "only numbers"),
    ("(1).__class__", "only numbers"),
    ("x + 1", "only numbers"),
    ("[1, 2]", "only numbers"),
    ("1 if 1 else 2", "only numbers"),
    ("'a' * 3", "only numbers"),
    ("1/0", "division by zero"),
    ("2**100", "exponent 100 too large"),
    ("99999999*99999999", "result larger than"),
    ("1e400", "not a finite number"),
    ("1+", "not an arithmetic expression"),
    ("", "non-empty string"),
    ("1+" * 40 + "1", "at most 64"),
])
def test_calculator_refuses_anything_but_arithmetic(expression, error):
    with pytest.raises(ToolError, match=error):
        calculate(expression)


def test_parse_call_accepts_the_training_format_and_names_each_problem():
    call = parse_call(tool_call("347*26"))
    assert call == ToolCall("calculator", {"expression": "347*26"}) and execute(call) == str(347 * 26)
    bad = [
        ('{"name":"calculator","arguments":{"expression":"1+1"}', "not valid JSON"),
        ('["calculator"]', "exactly 'name' and 'arguments'"),
        ('{"name":"shell","arguments":{"cmd":"rm -rf /"}}', "tool 'shell' is not allowed"),
        ('{"name":"calculator","arguments":"1+1"}', "'arguments' must be a JSON object"),
        ('{"name":"calculator","arguments":{}}', r"missing arguments \['expression'\]"),
        ('{"name":"calculator","arguments":{"expression":"1","x":2}}', r"unexpected arguments \['x'\]"),
        ('{"name":"calculator","arguments":{"expression":12}}', "must be a string"),
    ]
    for text, error in bad:
        with pytest.raises(ToolError, match=error):
            parse_call(text)
    only_lookup = {"review_lookup": TOOLS["review_lookup"]}
    with pytest.raises(ToolError, match="tool 'calculator' is not allowed"):
        parse_call(tool_call("1+1"), only_lookup)
    with pytest.raises(ToolError, match="not allowed"):
        execute(call, only_lookup)


def test_schemas_have_the_openai_shape():
    for name, tool in TOOLS.items():
        schema = tool.schema
        assert schema["type"] == "function" and schema["function"]["name"] == name
        params = schema["function"]["parameters"]
        assert params["type"] == "object" and set(params["required"]) <= set(params["properties"])
        json.dumps(schema)  # serialisable


def test_review_lookup_counts_the_training_reviews():
    s = review_splits(seed=0)
    hits = [y for t, y in zip(s.train_texts, s.train_labels) if "早餐" in t]
    assert review_lookup("早餐") == f"{len(hits)}条评论提到“早餐”，其中正面{sum(hits)}条"
    with pytest.raises(ToolError, match="at most 10 characters"):
        review_lookup("早" * 11)


def scripted(monkeypatch, replies):
    """Replace the model's reply with a scripted sequence; returns the conversations it was shown."""
    seen = []

    def fake_reply(model, tokenizer, messages, max_new_tokens=64):
        seen.append(list(messages))
        text = replies.pop(0)
        return Reply(text, True, len(text) + 1)

    monkeypatch.setattr(tools_module, "reply", fake_reply)
    return seen


def test_the_loop_runs_the_call_and_hands_back_the_result(monkeypatch):
    seen = scripted(monkeypatch, [tool_call("347*26"), "9022"])
    run = run_with_tools(None, None, [{"role": "user", "content": "计算 347×26"}])
    assert run.answer == "9022" and run.errors == []
    assert run.calls == [(ToolCall("calculator", {"expression": "347*26"}), "9022")]
    assert seen[1][-2:] == [{"role": "assistant", "content": tool_call("347*26")}, {"role": "tool", "content": "9022"}]


def test_the_loop_reports_a_bad_call_once_then_gives_up(monkeypatch):
    seen = scripted(monkeypatch, ['{"name":"calculator"', tool_call("1+1"), "2"])
    run = run_with_tools(None, None, [{"role": "user", "content": "1加1"}])
    assert run.answer == "2" and len(run.errors) == 1 and "not valid JSON" in run.errors[0]
    assert seen[1][-1]["role"] == "tool" and seen[1][-1]["content"].startswith("错误：")
    scripted(monkeypatch, ['{"name":"shell","arguments":{}}', '{"bad', "x"])
    run = run_with_tools(None, None, [{"role": "user", "content": "删掉文件"}], max_errors=1)
    assert run.answer is None and len(run.errors) == 2 and "not allowed" in run.errors[0]
    scripted(monkeypatch, [tool_call("1+1")] * 3)
    run = run_with_tools(None, None, [{"role": "user", "content": "1加1"}], max_calls=2)
    assert run.answer is None and run.errors == ["more than 2 tool calls"] and len(run.calls) == 2
