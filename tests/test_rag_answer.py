"""`ask`: the cached book index, extractive answers with links, refusal, the command line."""

import json
import os

import pytest

from bigmodel_course.cli import main
from bigmodel_course.rag.answer import REFUSE_BELOW, BookIndex, answer, book_fingerprint, check_question
from bigmodel_course.rag.questions import OUT_OF_SCOPE, load_questions


def write_book(root, extra=""):
    """A two-page book: one chapter notebook (a code cell among markdown cells) and one Markdown page."""
    (root / "chapters").mkdir(parents=True, exist_ok=True)
    (root / "book").mkdir(exist_ok=True)
    cells = [
        {"cell_type": "markdown", "metadata": {}, "source": "# 第9章 量化\n\n本章讲模型压缩。"},
        {"cell_type": "code", "metadata": {}, "source": "print('量化 量化 量化')", "outputs": [],
         "execution_count": None},
        {"cell_type": "markdown", "metadata": {},
         "source": "(ch09-int4)=\n## 四位量化\n\n分组量化把每组权重存成四位整数。每组有一个缩放系数。"
                   "组越小，误差越小。" + extra},
        {"cell_type": "markdown", "metadata": {},
         "source": "(ch09-serving)=\n## 连续批处理\n\n连续批处理在每一步解码之后接纳新的请求。"},
    ]
    nb = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (root / "chapters" / "ch09_test.ipynb").write_text(json.dumps(nb, ensure_ascii=False), encoding="utf-8")
    (root / "book" / "faq.md").write_text("# 常见问题\n\n安装环境要用 make 命令。\n", encoding="utf-8")
    return root


def test_answer_quotes_the_right_section_with_its_link(tmp_path):
    index = BookIndex.build(write_book(tmp_path))
    result = answer("分组量化的缩放系数是什么？", index, refuse_below=0.0)
    assert result.passages and result.passages[0].doc_id == "ch09_test#ch09-int4"
    assert result.passages[0].url == "chapters/ch09_test.html#ch09-int4"
    assert "缩放系数" in result.passages[0].text
    assert result.sections[0] == ("ch09_test#ch09-int4", "四位量化", "chapters/ch09_test.html#ch09-int4")
    assert all("print(" not in c.text for c in index.chunks)  # code cells are not part of the book's text
    assert [p.score for p in result.passages] == sorted((p.score for p in result.passages), reverse=True)


def test_a_question_that_shares_no_word_or_scores_too_low_is_refused(tmp_path):
    index = BookIndex.build(write_book(tmp_path))
    assert answer("今天天气好吗", index, refuse_below=0.0).passages == []  # no word in common
    low = answer("分组量化的缩放系数是什么？", index, refuse_below=1e9)
    assert low.passages == [] and low.sections == []


def test_index_is_cached_and_rebuilt_when_the_book_changes(tmp_path):
    root = write_book(tmp_path / "repo")
    folder = tmp_path / "index"
    first = BookIndex.load_or_build(root, folder)
    assert (folder / "meta.json").is_file()
    again = BookIndex.load(folder)
    q = "连续批处理什么时候接纳新请求？"
    assert again.fingerprint == first.fingerprint == book_fingerprint(root)
    assert list(again.bm25.scores(q)) == pytest.approx(list(first.bm25.scores(q)))
    assert answer(q, again, refuse_below=0.0) == answer(q, first, refuse_below=0.0)
    write_book(root, extra="新加的一句讲投机解码。")
    stat = (root / "chapters" / "ch09_test.ipynb").stat()
    os.utime(root / "chapters" / "ch09_test.ipynb", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    rebuilt = BookIndex.load_or_build(root, folder)
    assert rebuilt.fingerprint != first.fingerprint
    assert any("投机解码" in c.text for c in rebuilt.chunks)
    (folder / "chunks.json").write_text("{broken", encoding="utf-8")  # an unreadable cache is rebuilt
    assert BookIndex.load_or_build(root, folder).fingerprint == rebuilt.fingerprint
    with pytest.raises(ValueError, match="no readable book index"):
        (folder / "chunks.json").write_text("{broken", encoding="utf-8")
        BookIndex.load(folder)


def test_bad_questions_and_settings_are_refused_with_clear_errors(tmp_path):
    index = BookIndex.build(write_book(tmp_path))
    for bad, message in [("", "empty"), ("   ", "empty"), ("问" * 1001, "limit is 1000"), (None, "must be a string")]:
        with pytest.raises(ValueError, match=message):
            check_question(bad)
        with pytest.raises(ValueError, match=message):
            answer(bad, index)
    with pytest.raises(ValueError, match="max_sentences"):
        answer("量化", index, max_sentences=0)
    with pytest.raises(ValueError, match="no chapters"):
        book_fingerprint(tmp_path / "nowhere")


def test_ask_command_prints_quotes_and_links_or_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path / "cache"))
    root = write_book(tmp_path / "repo")
    assert main(["ask", "分组量化的缩放系数是什么？", "--root", str(root)]) == 0
    assert "没有找到" in capsys.readouterr().out  # the book's threshold is too high for a two-page corpus
    assert main(["ask", "分组量化的缩放系数是什么？", "--root", str(root), "--refuse-below", "0"]) == 0
    out = capsys.readouterr().out
    assert "缩放系数" in out and "chapters/ch09_test.html#ch09-int4" in out
    assert main(["ask", "分组量化的缩放系数是什么？", "--root", str(root), "--json", "--refuse-below", "0"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sections"][0]["doc_id"] == "ch09_test#ch09-int4"
    assert main(["ask", "", "--root", str(root)]) == 2
    assert "question is empty" in capsys.readouterr().err
    assert main(["ask", "量化", "--sentences", "0", "--root", str(root)]) == 2


def test_on_the_real_book_dev_questions_are_answered_and_unrelated_ones_refused(tmp_path):
    """The threshold was chosen on these dev questions (tools/rag_ask_eval.py); this guards against regressions."""
    index = BookIndex.load_or_build(folder=tmp_path / "index")
    dev = load_questions("dev")
    shown = [bool(q.gold_doc_ids & {d for d, _, _ in answer(q.question, index).sections}) for q in dev]
    assert sum(shown) / len(dev) >= 0.85
    assert all(answer(q, index).passages == [] for q in OUT_OF_SCOPE["dev"])
    assert REFUSE_BELOW > 0


def test_service_route_answers_and_refuses_bad_bodies_in_the_service_error_shape(tmp_path):
    from fastapi.testclient import TestClient

    from bigmodel_course.serving import ModelRegistry, create_app
    from bigmodel_course.serving.rag_api import RAG_ROUTE

    index = BookIndex.build(write_book(tmp_path / "repo"))
    # the two-page test book needs a lower threshold than the book's
    app = create_app(ModelRegistry(tmp_path / "registry"), rag_index=index, rag_refuse_below=0.0)
    with TestClient(app) as client:
        ok = client.post(RAG_ROUTE, json={"question": "分组量化的缩放系数是什么？", "max_sentences": 2})
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["sections"][0]["url"] == "chapters/ch09_test.html#ch09-int4" and len(body["passages"]) <= 2
        assert client.post(RAG_ROUTE, json={"question": "今天天气好吗"}).json()["passages"] == []
        for payload, status, words in [({"question": ""}, 422, "question is empty"),
                                       ({"question": "问" * 1001}, 422, "question"),
                                       ({}, 422, "question"), ({"question": 3}, 422, "question"),
                                       ({"question": "量化", "max_sentences": 0}, 422, "max_sentences"),
                                       ({"question": "量化", "extra": 1}, 422, "extra")]:
            r = client.post(RAG_ROUTE, json=payload)
            assert r.status_code == status and words in r.json()["detail"], (payload, r.text)
        bad = client.post(RAG_ROUTE, content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "not valid JSON" in bad.json()["detail"]
        assert 'route="/v1/rag/ask"' in client.get("/metrics").text  # a bounded metric label
    plain = create_app(ModelRegistry(tmp_path / "registry"))
    with TestClient(plain) as client:
        assert client.post(RAG_ROUTE, json={"question": "量化"}).status_code == 404  # not served unless asked
