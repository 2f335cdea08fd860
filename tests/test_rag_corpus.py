"""bigmodel_course.rag.corpus and .questions: the book split into citable sections, People's Daily documents,
and the evaluation questions whose gold sections must exist in the book."""

import json
from collections import Counter
from pathlib import Path

import pytest

from bigmodel_course.rag.benchmark import EVAL_EXCLUDED_PAGES
from bigmodel_course.rag.corpus import (
    Document,
    clean_markdown,
    default_root,
    heading_slug,
    load_book_sections,
    load_peoples_daily_documents,
    sphinx_id,
    split_sections,
)
from bigmodel_course.rag.questions import load_questions

ROOT = Path(__file__).resolve().parents[1]

PAGE = """# 第9章 测试页

开头的一段。

(ch09-first)=
## 第一节

正文见 {doc}`第一章 <ch01_concepts>` 和 {cite}`vaswani2017attention`，式 {eq}`eq-x`，图 {numref}`fig-y`。

```{admonition} 勘误：一个标题
:class: warning
提示框里的字。
```

```python
# 这不是标题
x = 1
```

### int8 小节

**加粗**的字。

## 空的节

## 又一个 int8 小节

最后。
"""


@pytest.fixture(scope="module")
def book():
    return load_book_sections()


def test_clean_markdown_keeps_role_text_and_drops_fences_and_options():
    text = clean_markdown(PAGE)
    assert "第一章" in text and "ch01_concepts" not in text  # the title of `title <target>`
    assert "vaswani2017attention" not in text  # a citation key is noise in quoted text
    assert "eq-x" in text and "fig-y" in text
    assert "{doc}" not in text and "`" not in text and "```" not in text and ":class:" not in text
    assert "勘误：一个标题" in text and "提示框里的字。" in text
    assert "(ch09-first)=" not in text and "**" not in text


def test_split_sections_labels_anchors_and_code_comments():
    docs = split_sections(PAGE, "chapters/ch09_test")
    ids = [d.doc_id for d in docs]
    assert ids == ["ch09_test#测试页", "ch09_test#ch09-first", "ch09_test#int8-小节",
                   "ch09_test#又一个-int8-小节"]
    by_id = {d.doc_id: d for d in docs}
    assert by_id["ch09_test#ch09-first"].url == "chapters/ch09_test.html#ch09-first"
    assert by_id["ch09_test#ch09-first"].title == "第一节"
    assert "# 这不是标题" in by_id["ch09_test#ch09-first"].text  # a comment inside a code fence is not a heading
    assert by_id["ch09_test#int8-小节"].anchor == "int8"  # the Sphinx id of a heading with ASCII text
    # the second heading whose Sphinx id would be "int8" gets a numbered id in HTML: cite the page instead
    assert by_id["ch09_test#又一个-int8-小节"].anchor == ""
    assert by_id["ch09_test#测试页"].url == "chapters/ch09_test.html"
    assert all(d.page == "ch09_test" and d.source == "chapters/ch09_test" for d in docs)


def test_slugs():
    assert heading_slug("勘误：ResNet-50 不是 Transformer") == "勘误-resnet-50-不是-transformer"
    # a section number is not part of the key: renumbering a chapter keeps every key
    assert heading_slug("1.6.2 为什么要除以 $\\sqrt{d_k}$") == heading_slug("为什么要除以 $\\sqrt{d_k}$")
    assert heading_slug("第3章 大模型应用开发实战") == "大模型应用开发实战"
    assert sphinx_id("int8 量化的原理") == "int8" and sphinx_id("第5章 模型压缩") == ""


def test_book_sections_cover_every_page_with_unique_ids(book):
    pages = {d.page for d in book}
    chapters = {p.stem for p in (ROOT / "chapters").glob("*.ipynb")}
    assert chapters <= pages
    assert "intro" in pages and "references" not in pages and "workshop_timings" not in pages
    assert len({d.doc_id for d in book}) == len(book)
    assert all(isinstance(d, Document) and d.text.strip() for d in book)
    labelled = next(d for d in book if d.doc_id == "ch05_compression#ch05-quantization"
                    or d.doc_id == "ch05_compression#int8-量化的原理")
    assert labelled.url.startswith("chapters/ch05_compression.html#")


def test_book_root_default_and_errors(tmp_path):
    assert default_root() == ROOT
    with pytest.raises(ValueError, match="no chapters/ folder"):
        load_book_sections(tmp_path)
    (tmp_path / "chapters").mkdir()
    (tmp_path / "chapters" / "ch01_x.ipynb").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not a valid notebook"):
        load_book_sections(tmp_path)


def test_book_root_parameter_reads_another_tree(tmp_path):
    (tmp_path / "chapters").mkdir()
    (tmp_path / "book").mkdir()
    nb = {"cells": [{"cell_type": "markdown", "source": ["# 标题\n", "\n", "正文。"]},
                    {"cell_type": "code", "source": "# 代码里的注释\nprint(1)"}]}
    (tmp_path / "chapters" / "ch01_x.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    (tmp_path / "book" / "references.md").write_text("# 参考文献\n\n文献。", encoding="utf-8")
    docs = load_book_sections(tmp_path)
    assert [(d.doc_id, d.text) for d in docs] == [("ch01_x#标题", "正文。")]


def test_peoples_daily_documents_are_windows_of_paragraphs():
    from bigmodel_course.data import load_peoples_daily

    lines = load_peoples_daily()
    docs = load_peoples_daily_documents(paragraphs_per_doc=50)
    assert len(docs) == -(-len(lines) // 50)
    assert docs[0].text == "\n".join(lines[:50]) and docs[0].doc_id == "pd-00000" and docs[0].url == ""
    assert sum(d.text.count("\n") + 1 for d in docs) == len(lines)
    with pytest.raises(ValueError, match="paragraphs_per_doc"):
        load_peoples_daily_documents(0)


def test_questions_are_many_unique_and_split_by_page():
    questions = load_questions()
    assert len(questions) >= 120
    assert len({q.qid for q in questions}) == len(questions)
    assert len({q.question for q in questions}) == len(questions)
    dev, test = load_questions("dev"), load_questions("test")
    assert dev and test and len(dev) + len(test) == len(questions)
    assert not {q.qid for q in dev} & {q.qid for q in test}
    assert not {q.question for q in dev} & {q.question for q in test}
    per_page = Counter(q.page for q in questions)
    dev_pages = Counter(q.page for q in dev)
    for page, n in per_page.items():  # stratified: each page's questions split as evenly as possible
        assert abs(2 * dev_pages[page] - n) <= 1, page
    with pytest.raises(ValueError, match="split"):
        load_questions("train")


def test_every_chapter_has_questions_and_every_gold_section_exists(book):
    doc_ids = {d.doc_id for d in book}
    questions = load_questions()
    # the page that runs the benchmark has no questions of its own: it is left out of the evaluation corpus
    chapters = {p.stem for p in (ROOT / "chapters").glob("*.ipynb")} - EVAL_EXCLUDED_PAGES
    assert chapters <= {q.page for q in questions}
    missing = [(q.qid, g) for q in questions for g in sorted(q.gold_doc_ids) if g not in doc_ids]
    assert not missing, f"gold sections not found in the book (renamed heading or label?): {missing}"
