"""Tool calls for the assistant: OpenAI-style function schemas, the parser of a model's JSON call, allow-listed
tools (a calculator that evaluates arithmetic through `ast`, never `eval`; a lookup into the training reviews)
and the loop that runs a call, hands the result back as a `tool` turn and lets the model answer."""

from __future__ import annotations

import ast
import json
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from .chat import reply
from .data import review_splits

MAX_EXPRESSION_CHARS = 64
MAX_ABS_RESULT = 10**15
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class ToolError(ValueError):
    """A tool call that cannot run: malformed JSON, an unknown or forbidden tool, bad arguments, a failing tool."""


@dataclass(frozen=True)
class Tool:
    """A callable tool with its OpenAI-style function schema (name, description, JSON-schema parameters)."""

    name: str
    description: str
    parameters: dict
    function: Callable[..., str]
    changes_state: bool = False  # True: it acts on the world (an agent runs it only with a person's confirmation)

    @property
    def schema(self) -> dict:
        """{"type": "function", "function": {name, description, parameters}} as in the OpenAI API."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


def calculate(expression: str) -> str:
    """Evaluate + - * / // % ** and parentheses over numbers by walking the syntax tree (no names, no calls, no
    attribute access: nothing but arithmetic can run). Integral results print without a decimal point."""
    if not isinstance(expression, str) or not expression.strip():
        raise ToolError("expression must be a non-empty string")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression has {len(expression)} characters; at most {MAX_EXPRESSION_CHARS}")
    try:
        tree = ast.parse(expression.replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError as e:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from e

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 32:
                raise ToolError(f"exponent {right} too large; at most 32")
            try:
                value = _BINARY[type(node.op)](left, right)
            except ZeroDivisionError as e:
                raise ToolError("division by zero") from e
            if abs(value) > MAX_ABS_RESULT:
                raise ToolError(f"result larger than {MAX_ABS_RESULT:.0e}")
            return value
        raise ToolError(f"only numbers and + - * / // % ** are allowed, found {type(node).__name__}")

    value = walk(tree)
    if not math.isfinite(value) or abs(value) > MAX_ABS_RESULT:
        raise ToolError(f"result is not a finite number of at most {MAX_ABS_RESULT:.0e}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(round(value, 6) if isinstance(value, float) else value)


@lru_cache(maxsize=1)
def _training_reviews() -> tuple[tuple[str, int], ...]:
    s = review_splits(seed=0)
    return tuple(zip(s.train_texts, s.train_labels))


def review_lookup(keyword: str) -> str:
    """How many training reviews mention `keyword` and how many of those are positive."""
    if not isinstance(keyword, str) or not keyword.strip() or len(keyword) > 10:
        raise ToolError("keyword must be a non-empty string of at most 10 characters")
    hits = [y for t, y in _training_reviews() if keyword in t]
    return f"{len(hits)}条评论提到“{keyword}”，其中正面{sum(hits)}条"


def _string_parameter(name: str, description: str) -> dict:
    return {"type": "object", "properties": {name: {"type": "string", "description": description}},
            "required": [name], "additionalProperties": False}


TOOLS = {
    "calculator": Tool("calculator", "计算一个算术表达式（+ - * / 和括号）",
                       _string_parameter("expression", "算术表达式，例如 347*26"), calculate),
    "review_lookup": Tool("review_lookup", "统计训练集中提到某个词的评论条数和正面条数",
                          _string_parameter("keyword", "要查的词，例如 早餐"), review_lookup),
}


@dataclass(frozen=True)
class ToolCall:
    """A parsed call: the tool's name and its arguments."""

    name: str
    arguments: dict


def looks_like_call(text: str) -> bool:
    """A reply that starts with '{' is meant as a tool call (and must then parse)."""
    return text.lstrip().startswith("{")


def parse_call(text: str, tools: dict[str, Tool] = TOOLS) -> ToolCall:
    """Parse {"name": ..., "arguments": {...}} and check it against the allowed tools' schemas."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ToolError(f"the tool call is not valid JSON ({e.msg} at character {e.pos})") from e
    if not isinstance(data, dict) or set(data) != {"name", "arguments"}:
        raise ToolError("a tool call must be a JSON object with exactly 'name' and 'arguments'")
    name, arguments = data["name"], data["arguments"]
    if name not in tools:
        raise ToolError(f"tool {name!r} is not allowed; allowed tools: {sorted(tools)}")
    if not isinstance(arguments, dict):
        raise ToolError("'arguments' must be a JSON object")
    params = tools[name].parameters
    missing = [p for p in params["required"] if p not in arguments]
    extra = sorted(set(arguments) - set(params["properties"]))
    if missing or extra:
        raise ToolError(f"{name}: missing arguments {missing}, unexpected arguments {extra}")
    for key, value in arguments.items():
        if params["properties"][key]["type"] == "string" and not isinstance(value, str):
            raise ToolError(f"{name}: argument {key!r} must be a string")
    return ToolCall(name, arguments)


def execute(call: ToolCall, tools: dict[str, Tool] = TOOLS) -> str:
    """Run an allowed, parsed call; the tool's own errors come back as ToolError."""
    if call.name not in tools:
        raise ToolError(f"tool {call.name!r} is not allowed; allowed tools: {sorted(tools)}")
    return tools[call.name].function(**call.arguments)


@dataclass
class ToolRun:
    """What happened when the model answered with tools: the final answer (None when it never gave one), the
    calls it made with their results, the errors it was shown, and the whole conversation."""

    answer: str | None
    calls: list[tuple[ToolCall, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)


def run_with_tools(model, tokenizer, messages: Sequence[dict], tools: dict[str, Tool] = TOOLS, max_calls: int = 2,
                   max_errors: int = 1, max_new_tokens: int = 64) -> ToolRun:
    """Let the model reply; while it replies with a tool call, run the call and append the result as a `tool`
    turn (a call that fails is answered with "错误：…" instead, at most `max_errors` times); stop at the first
    reply that is not a call, after `max_calls` calls, or when the context is full."""
    convo = list(messages)
    run = ToolRun(None, messages=convo)
    while True:
        try:
            out = reply(model, tokenizer, convo, max_new_tokens=max_new_tokens)
        except ValueError as e:  # no room left in the context
            run.errors.append(str(e))
            return run
        if not out.text or not looks_like_call(out.text):
            if out.text:
                convo.append({"role": "assistant", "content": out.text})
            run.answer = out.text if out.finished else None
            return run
        if len(run.calls) >= max_calls:
            run.errors.append(f"more than {max_calls} tool calls")
            return run
        convo.append({"role": "assistant", "content": out.text})
        try:
            call = parse_call(out.text, tools)
            result = execute(call, tools)
        except ToolError as e:
            run.errors.append(str(e))
            if len(run.errors) > max_errors:
                return run
            convo.append({"role": "tool", "content": f"错误：{e}"})
            continue
        run.calls.append((call, result))
        convo.append({"role": "tool", "content": result})
