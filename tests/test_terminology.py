"""One terminology, with Appendix D as the reference.

The glossary lists each preferred Chinese term, and the book's prose (markdown cells of the chapter
notebooks, the .md pages) uses it: no bare English "token"/"epoch"/"padding", no "n 元组" for n-grams,
and Chinese quotation marks instead of ASCII double quotes. Code spans, math, code fences, URLs, HTML and
MyST roles are not prose and are stripped before the check; an English term in parentheses right after
its Chinese term ("词元（token）") is the allowed first mention.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.book

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
GLOSSARY = BOOK / "appendix_d_glossary.md"

# Preferred Chinese term -> the English term the glossary gives in parentheses.
PREFERRED = {
    "词元": "token",
    "填充": "padding",
    "轮": "epoch",
    "段嵌入": "segment embedding",
    "层归一化": "layer normalization",
    "n 元语法": "n-gram",
}

CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
MATH_MARK = "\u24dc"  # ⓜ: stands for inline math, so "$k$ 元组" is still seen as "k 元组"

# Discouraged forms in Chinese prose: (name, pattern, what to write instead).
DISCOURAGED = [
    ("token", re.compile(r"(?<![\w-])tokens?(?![\w-])", re.IGNORECASE), "词元（tokens/s → 词元/秒）"),
    ("epoch", re.compile(r"(?<![\w-])epochs?(?![\w-])", re.IGNORECASE), "轮"),
    ("padding", re.compile(r"(?<![\w-])padding(?![\w-])", re.IGNORECASE), "填充"),
    ("n 元组", re.compile(rf"(?:\d+|[A-Za-z一二三四五六七八九十]|{MATH_MARK})\s*元组"),
     "n 元语法（元组指 tuple 时不算）"),
    ("ASCII quotes", re.compile(rf'"[^"\n]*[{CJK}][^"\n]*"'), "“ ”"),
]

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*)$")
DISPLAY_MATH = re.compile(r"\$\$.*?\$\$", re.DOTALL)
INLINE_MATH = re.compile(r"(?<!\\)\$(?!\s)[^$\n]+?(?<![\s\\])\$")
ROLE = re.compile(r"\{[\w:-]+\}(`+)(.+?)\1", re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
AUTOLINK = re.compile(r"<(?:https?|mailto):[^>\s]*>")
HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
LINK_TARGET = re.compile(r"\]\([^)\s]*(?:\s+\"[^\"]*\")?\)")
URL = re.compile(r"(?:https?|ftp)://\S+|www\.\S+")
LABEL = re.compile(r"^\([\w-]+\)=\s*$", re.MULTILINE)
OPTION = re.compile(r"^[ \t]*:[\w-]+:.*$", re.MULTILINE)
# An English gloss right after its Chinese term: 词元（token）, 填充掩码（padding mask）, **词元**（token）;
# or an acronym's English expansion: TTFT（time to first token）.
GLOSS = re.compile(rf"(?<=[{CJK}])(\*\*|\*)?(?:（[^（）\n]*）|\s?\([^()\n]*\))"
                   rf"|(?<=[A-Z]{{2}})(\*\*|\*)?(?:（[^（）\n{CJK}]*）|\s?\([^()\n{CJK}]*\))")


def _blank(match: re.Match) -> str:
    """Replace a match by spaces, keeping its newlines so line numbers stay right."""
    return re.sub(r"[^\n]", " ", match.group(0))


def _strip_fences(text: str) -> str:
    """Drop code fences (and `{code-cell}`, mermaid, ...) but keep the prose inside MyST directives."""
    out, stack = [], []  # stack of open fences: (fence, keep_body)
    for line in text.split("\n"):
        m = FENCE.match(line)
        if m and stack and m["fence"][0] == stack[-1][0][0] and len(m["fence"]) >= len(stack[-1][0]) \
                and not m["info"].strip():
            stack.pop()
            out.append("")
            continue
        if m and (not stack or stack[-1][1]):
            info = m["info"].strip()
            directive = re.match(r"\{([\w:-]+)\}", info)
            prose = bool(directive) and directive[1] not in {"code-cell", "code", "code-block", "mermaid", "math",
                                                            "include", "literalinclude", "bibliography", "raw"}
            stack.append((m["fence"], prose))
            out.append("")
            continue
        out.append(line if not stack or stack[-1][1] else "")
    return "\n".join(out)


def prose(text: str) -> str:
    """The Chinese prose of a markdown text: code, math, URLs, HTML and MyST syntax blanked out."""
    text = _strip_fences(text)
    text = re.sub(r"^(?: {4,}|\t).*$", lambda m: " " * len(m[0]), text, flags=re.MULTILINE)  # indented code
    text = HTML_COMMENT.sub(_blank, text)
    text = DISPLAY_MATH.sub(_blank, text)
    text = ROLE.sub(_blank, text)
    text = CODE_SPAN.sub(_blank, text)
    text = INLINE_MATH.sub(lambda m: MATH_MARK + " " * (len(m[0]) - 1), text)
    text = AUTOLINK.sub(_blank, text)
    text = HTML_TAG.sub(_blank, text)
    text = LINK_TARGET.sub(lambda m: "]" + " " * (len(m[0]) - 1), text)
    text = URL.sub(_blank, text)
    text = LABEL.sub(_blank, text)
    text = OPTION.sub(_blank, text)
    return text


def violations(text: str) -> list[tuple[int, str, str]]:
    """(line number, name of the discouraged form, snippet) for every discouraged form in the prose of `text`."""
    clean = prose(text)
    glossed = GLOSS.sub(_blank, clean)
    found = []
    for name, pattern, _ in DISCOURAGED:
        source = clean if name in {"ASCII quotes", "n 元组"} else glossed
        for m in pattern.finditer(source):
            line = source.count("\n", 0, m.start()) + 1
            start = max(0, m.start() - 20)
            snippet = re.sub(r"\s+", " ", clean[start:m.end() + 20]).strip()
            found.append((line, name, snippet))
    return found


def _texts() -> list[tuple[str, str]]:
    """(place, markdown text): each .md page of the book, and each markdown cell of the chapter notebooks."""
    texts = [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in sorted(BOOK.glob("*.md"))]
    for nb_path in sorted((ROOT / "chapters").glob("*.ipynb")):
        cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
        for i, cell in enumerate(cells):
            if cell["cell_type"] == "markdown":
                texts.append((f"{nb_path.relative_to(ROOT)} cell {i}", "".join(cell["source"])))
    return texts


def _report(found: list[tuple[str, int, str, str]]) -> str:
    hints = {name: hint for name, _, hint in DISCOURAGED}
    return "\n".join(f"{place} line {line}: {name} (write {hints[name]}): …{snippet}…"
                     for place, line, name, snippet in found)


def test_the_glossary_lists_every_preferred_term():
    text = GLOSSARY.read_text(encoding="utf-8")
    # definition-list terms: a line followed by a line starting with ": "
    terms = [m[1] for m in re.finditer(r"^([^\n:][^\n]*)\n: ", text, re.MULTILINE)]
    for chinese, english in PREFERRED.items():
        entry = [t for t in terms if re.match(rf"{re.escape(chinese)}(?:[（\s与和]|$)", t) or f"与{chinese}" in t]
        assert entry, f"appendix_d_glossary.md has no entry for {chinese} ({english})"
        assert any(english.lower() in t.lower() for t in entry), f"the glossary's {chinese} entry lacks {english!r}"


def test_the_checker_sees_what_it_should():
    bad = 'Each token 一个 tokens/s，训练 3 个 epoch，padding 掉；字符 3 元组，$k$ 元组，字二元组；他说"你好"。'
    assert [name for _, name, _ in violations(bad)] == [
        "token", "token", "epoch", "padding", "n 元组", "n 元组", "n 元组", "ASCII quotes"]
    assert violations("神经网络由多个神经元组成。") == []
    good = ("词元（token）、填充掩码（padding mask）、**轮**（epoch），`max_tokens` 与 $\\text{token}$，"
            "{ref}`padding <ch01-masks>`，[词元](https://example.org/token)，<https://x.org/epoch>，"
            "TTFT（time to first token），返回一个 `(a, b)` 元组，“引号”，`\"字符串\"`。\n\n"
            "```python\nx = \"词元\"  # token\n```\n"
            "```{admonition} 提示\n:class: tip\n正文里的 3 元语法。\n```\n")
    assert violations(good) == []
    assert [name for _, name, _ in violations("```{note}\n每个 token\n```\n")] == ["token"]
    assert [name for _, name, _ in violations("BPE（每个 token 一个编号）")] == ["token"]


def test_the_book_pages_use_the_preferred_terms():
    found = [(place, *v) for place, text in _texts() if place.startswith("book/") for v in violations(text)]
    assert not found, "discouraged forms in the book's pages (Appendix D is the reference):\n" + _report(found)


def test_the_chapters_use_the_preferred_terms():
    found = [(place, *v) for place, text in _texts() if place.startswith("chapters/") for v in violations(text)]
    assert not found, (f"{len(found)} discouraged forms in the chapters' markdown cells "
                       "(Appendix D is the reference):\n" + _report(found))
