"""bigmodel_course.rag chunking, BM25 (checked against bm25s) and ranking metrics (checked by hand)."""

import math

import numpy as np
import pytest

from bigmodel_course.rag.bm25 import MAX_QUERY_CHARS, BM25Index, document_frequency_table, jieba_tokenize
from bigmodel_course.rag.chunking import Chunk, chunk_documents, chunk_id, chunk_spans, split_sentences
from bigmodel_course.rag.corpus import Document
from bigmodel_course.rag.evaluation import mrr, recall_at_k, reciprocal_rank_fusion

TOY = ["猫 喜欢 吃 鱼 鱼", "狗 喜欢 啃 骨头", "the cat sat on the mat", "a dog and a cat", "鱼 在 水 里 游 游 游",
       "cat cat dog 鱼"]


# --- chunking -------------------------------------------------------------------------------------------------

def test_split_sentences_keeps_punctuation_and_closing_quotes():
    assert split_sentences("你好。“真的吗？”他说！\nabc def\n\n最后；尾巴") == [
        "你好。", "“真的吗？”", "他说！", "abc def", "最后；", "尾巴"]


def test_chunk_spans_pack_sentences_with_overlap_and_cut_long_ones():
    text = "一二三。四五六七八九十。甲乙丙丁戊己庚辛壬癸子丑。短。"
    assert [text[s:e] for s, e in chunk_spans(text, 12, 0)] == [
        "一二三。四五六七八九十。", "甲乙丙丁戊己庚辛壬癸子丑", "。短。"]
    # one sentence of overlap when it fits together with the next sentence
    short = "甲。乙。丙。丁。"
    assert [short[s:e] for s, e in chunk_spans(short, 4, 1)] == ["甲。乙。", "乙。丙。", "丙。丁。"]
    assert [text[s:e] for s, e in chunk_spans(text, 8, 1)] == [
        "一二三。", "四五六七八九十。", "甲乙丙丁戊己庚辛", "壬癸子丑。短。"]
    for max_chars in (1, 3, 7, 100):
        spans = chunk_spans(text, max_chars, 2)
        assert all(e - s <= max_chars for s, e in spans)
        covered = set().union(*(range(s, e) for s, e in spans))
        assert covered == {i for i, ch in enumerate(text)}  # nothing lost


def test_chunk_bad_parameters():
    with pytest.raises(ValueError, match="max_chars"):
        chunk_spans("文本。", 0)
    with pytest.raises(ValueError, match="overlap"):
        chunk_spans("文本。", 10, -1)
    with pytest.raises(ValueError, match="Document"):
        chunk_documents(["not a document"], 10)


def test_chunk_ids_are_stable_and_unique():
    doc = Document("p#s", "标题", "同一句。同一句。另一句。", "chapters/p", "s")
    chunks = chunk_documents([doc], max_chars=4, overlap=0)
    assert [c.text for c in chunks] == ["同一句。", "同一句。", "另一句。"]
    # sha1("同一句。") in UTF-8, first 12 hex digits: a fixed value, not Python's per-process hash()
    assert chunks[0].chunk_id == "p#s:" + __import__("hashlib").sha1("同一句。".encode()).hexdigest()[:12]
    assert chunks[0].chunk_id == chunk_id("p#s", "同一句。")
    assert chunks[1].chunk_id == chunks[0].chunk_id + "-2"
    assert len({c.chunk_id for c in chunks}) == 3
    assert all(doc.text[c.start:c.end] == c.text for c in chunks)
    assert chunks[2].url == "chapters/p.html#s" and chunks[2].title == "标题"
    assert chunk_documents([], 10) == []


# --- BM25 ---------------------------------------------------------------------------------------------------

def test_bm25_matches_bm25s_lucene():
    bm25s = pytest.importorskip("bm25s")
    from bm25s.scoring import _score_idf_lucene

    for df, n in ((1, 6), (3, 6), (6, 6)):  # bm25s's "lucene" idf is the formula we implement
        assert _score_idf_lucene(df, n) == pytest.approx(math.log(1 + (n - df + 0.5) / (df + 0.5)))
    for k1, b in ((1.5, 0.75), (1.2, 0.3), (0.9, 1.0)):
        ours = BM25Index.build(TOY, tokenizer=str.split, k1=k1, b=b)
        ref = bm25s.BM25(method="lucene", k1=k1, b=b, dtype="float64")
        ref.index([t.split() for t in TOY], show_progress=False)
        for query in ("cat 鱼", "鱼 鱼 dog", "喜欢 the mat", "猫"):
            np.testing.assert_allclose(ours.scores(query), ref.get_scores(query.split()), atol=1e-6)


def test_bm25_hand_computed_score():
    index = BM25Index.build(["a b", "a"], tokenizer=str.split, k1=1.5, b=0.75)
    idf_b = math.log(1 + (2 - 1 + 0.5) / (1 + 0.5))
    norm = 1.5 * (1 - 0.75 + 0.75 * 2 / 1.5)
    assert index.scores("b")[0] == pytest.approx(idf_b * 1 / (1 + norm))
    assert index.scores("b")[1] == 0.0
    assert index.search("zzz", k=2) == [(0, 0.0), (1, 0.0)]  # unknown tokens: all zero, corpus order


def test_bm25_search_stopwords_and_chunks():
    index = BM25Index.build(TOY, tokenizer=str.split)
    top = index.search("鱼", k=3)
    assert [i for i, _ in top][0] == 0 and top[0][1] >= top[1][1] >= top[2][1]
    stopped = BM25Index.build(TOY, tokenizer=str.split, stopwords={"鱼"})
    assert not stopped.scores("鱼").any()
    chunk = Chunk("d:1", "d", "注意力机制", 0, 5, "缩放点积", "")
    index = BM25Index.build([chunk, "别的 内容"], tokenizer=jieba_tokenize)
    assert index.search("缩放点积", k=1)[0][0] == 0  # a chunk is indexed with its title


def test_bm25_bad_inputs():
    index = BM25Index.build(TOY, tokenizer=str.split)
    with pytest.raises(ValueError, match="query is empty"):
        index.scores("   ")
    with pytest.raises(ValueError, match="limit"):
        index.scores("猫" * (MAX_QUERY_CHARS + 1))
    with pytest.raises(ValueError, match="corpus size"):
        index.search("cat", k=len(TOY) + 1)
    with pytest.raises(ValueError, match="corpus size"):
        index.search("cat", k=0)
    with pytest.raises(ValueError, match="empty corpus"):
        BM25Index.build([])
    with pytest.raises(ValueError, match="empty after tokenization"):
        BM25Index.build(["。，", "!"])
    with pytest.raises(ValueError, match="b must be"):
        BM25Index.build(TOY, b=1.5)


def test_jieba_tokenize_and_document_frequency_table():
    assert jieba_tokenize("我们在学习BM25，真好！") == ["我们", "在", "学习", "bm25", "真", "好"]
    table = document_frequency_table([["的", "猫"], ["的", "狗"], ["的", "猫", "猫"]], top=2)
    assert table == [("的", 3, 1.0), ("猫", 2, 2 / 3)]
    with pytest.raises(ValueError, match="empty"):
        document_frequency_table([])
    with pytest.raises(ValueError, match="token lists"):
        document_frequency_table(["一个字符串"])


# --- metrics ------------------------------------------------------------------------------------------------

def test_recall_and_mrr_by_hand():
    ranked = ["a", "b", "a", "c", "d"]  # the repeated "a" counts once
    assert recall_at_k(ranked, {"c"}, 2) == 0.0
    assert recall_at_k(ranked, {"c"}, 3) == 1.0
    assert recall_at_k(ranked, {"b", "d", "z"}, 4) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, "b", 10) == 1.0
    assert mrr(ranked, {"c", "d"}) == pytest.approx(1 / 3)
    assert mrr(ranked, {"z"}) == 0.0
    with pytest.raises(ValueError, match="gold_ids is empty"):
        mrr(ranked, set())
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(ranked, {"a"}, 0)


def test_reciprocal_rank_fusion_by_hand():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "c"]], k=60)
    assert [item for item, _ in fused] == ["b", "c", "a"]
    scores = dict(fused)
    assert scores["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 62)
    assert scores["a"] == pytest.approx(1 / 61)
    assert reciprocal_rank_fusion([["x", "y"], ["y", "x"]], k=1) == [("x", 0.5 + 1 / 3), ("y", 0.5 + 1 / 3)]
    with pytest.raises(ValueError, match="non-empty"):
        reciprocal_rank_fusion([])


def test_bm25_finds_the_gold_sections_of_most_dev_questions():
    """End to end on the book: measured dev recall@5 is about 0.92; a broken loader or tokenizer falls far below."""
    from bigmodel_course.rag.corpus import load_book_sections
    from bigmodel_course.rag.questions import load_questions

    chunks = chunk_documents(load_book_sections(), max_chars=300, overlap=1)
    index = BM25Index.build(chunks)
    doc_of = [c.doc_id for c in chunks]
    dev = load_questions("dev")
    hits = [recall_at_k([doc_of[i] for i, _ in index.search(q.question, k=50)], q.gold_doc_ids, 5) for q in dev]
    assert np.mean(hits) >= 0.8
