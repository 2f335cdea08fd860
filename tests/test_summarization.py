"""TextRank, PageRank, character ROUGE and the People's Daily article rebuild."""

import math
import random

import numpy as np
import pytest

from bigmodel_course.summarization import (
    Article,
    content_words,
    evaluate_headlines,
    extractive_baselines,
    lcs_length,
    overlap_similarity,
    pagerank,
    rebuild_articles,
    rouge_l,
    rouge_n,
    rouge_units,
    similarity_matrix,
    split_sentences,
    strip_dateline,
    textrank,
    textrank_summary,
)


def test_split_sentences_keeps_closing_quotes():
    assert split_sentences("他说：“好！”然后走了。真的吗？是的") == ["他说：“好！”", "然后走了。", "真的吗？", "是的"]
    assert split_sentences("  ") == []
    with pytest.raises(ValueError, match="must be a str"):
        split_sentences(None)


def test_overlap_similarity_follows_mihalcea_tarau():
    a, b = ["经济", "发展", "很快"], ["经济", "发展", "稳定", "增长"]
    assert overlap_similarity(a, b) == pytest.approx(2 / (math.log(3) + math.log(4)))
    assert overlap_similarity(["一"], ["一"]) == 0.0  # log 1 + log 1 = 0: no edge
    assert overlap_similarity([], a) == 0.0
    w = similarity_matrix([a, b, ["天气"]])
    assert np.allclose(w, w.T) and w[2].sum() == 0 and np.all(np.diag(w) == 0)


def _closed_form(w, d):
    """Solve r = (1-d)/n + d (M^T r + dangling mass / n) as a linear system, normalised to sum 1."""
    n = len(w)
    out = w.sum(1)
    m = np.where(out[:, None] > 0, w / np.where(out > 0, out, 1)[:, None], 1.0 / n)
    r = np.linalg.solve(np.eye(n) - d * m.T, np.full(n, (1 - d) / n))
    return r / r.sum()


def test_pagerank_matches_the_closed_form_solution():
    w = np.array([[0, 1, 2, 0], [1, 0, 0, 0], [2, 0, 0, 3], [0, 0, 3, 0]], dtype=float)
    assert np.allclose(pagerank(w), _closed_form(w, 0.85), atol=1e-9)
    directed = np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0]], dtype=float)  # node 2 is dangling
    assert np.allclose(pagerank(directed, 0.5), _closed_form(directed, 0.5), atol=1e-9)
    # hand-computed cases: a symmetric pair, and a graph without edges (every node dangling)
    assert np.allclose(pagerank(np.array([[0, 1], [1, 0.0]])), [0.5, 0.5])
    assert pagerank(np.zeros((3, 3))) == pytest.approx(np.full(3, 1 / 3))


def test_pagerank_agrees_with_networkx():
    nx = pytest.importorskip("networkx")
    rng = np.random.default_rng(0)
    w = rng.random((6, 6)) * (rng.random((6, 6)) > 0.4)
    np.fill_diagonal(w, 0)
    g = nx.DiGraph()
    g.add_nodes_from(range(6))
    g.add_weighted_edges_from((i, j, w[i, j]) for i in range(6) for j in range(6) if w[i, j] > 0)
    ref = nx.pagerank(g, alpha=0.85, tol=1e-12, max_iter=1000)
    assert np.allclose(pagerank(w), [ref[i] for i in range(6)], atol=1e-8)


def test_pagerank_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        pagerank(np.ones((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        pagerank(-np.ones((2, 2)))
    with pytest.raises(ValueError, match="damping"):
        pagerank(np.ones((2, 2)), damping=1.0)


def test_textrank_prefers_the_sentence_that_shares_most():
    sentences = ["经济增长带动就业增长。", "经济增长很快，就业增长也快，物价稳定。", "物价稳定让人放心。", "今天下雨。"]
    scores = textrank(sentences)
    assert scores.argmax() == 1 and scores.argmin() == 3 and scores.sum() == pytest.approx(1.0)
    assert textrank_summary("".join(sentences), k=2)[0] == sentences[0]  # original order kept
    assert "经济" in content_words("经济增长很快，就业增长也快。") and "，" not in content_words("很快，也快。")
    with pytest.raises(ValueError, match="empty"):
        textrank([])
    with pytest.raises(ValueError, match="k must be"):
        textrank_summary("好。", k=0)


def test_rouge_on_hand_computed_examples():
    # candidate 今天天气很好 (6 chars), reference 今天天气不好 (6 chars): 5 shared unigrams
    assert rouge_n("今天天气很好", "今天天气不好", 1).f1 == pytest.approx(5 / 6)
    # bigrams: 今天 天天 天气 气很 很好 vs 今天 天天 天气 气不 不好 → 3 shared of 5 and 5
    assert rouge_n("今天天气很好", "今天天气不好", 2).f1 == pytest.approx(3 / 5)
    # clipping: 的的的 vs 的 → overlap 1; P = 1/3, R = 1
    s = rouge_n("的的的", "的", 1)
    assert (s.precision, s.recall) == (pytest.approx(1 / 3), 1.0) and s.f1 == pytest.approx(0.5)
    # LCS of ABCBDAB and BDCABA is 4 (CLRS)
    assert lcs_length("ABCBDAB", "BDCABA") == 4
    r = rouge_l("中国经济发展", "经济快速发展")  # LCS 经济发展 = 4, lengths 6 and 6
    assert r.f1 == pytest.approx(4 / 6)
    assert rouge_units("你好，世界！ ") == list("你好世界")
    assert rouge_n("，", "好", 1).f1 == 0.0
    with pytest.raises(ValueError, match="n must be"):
        rouge_n("a", "a", 0)


def test_rebuild_articles_and_datelines():
    lines = ["北京举行新年音乐会", "副标题一行", "新华社北京１２月３１日电（记者张三）今晚很热闹。大家都来了。",
             "（新华社记者某某摄）", "观众鼓掌。", "第二条新闻（附图片１张）", "只有一句。"]
    arts = rebuild_articles(lines, min_sentences=2)
    assert len(arts) == 1 and arts[0].headline == "北京举行新年音乐会"
    assert arts[0].sentences == ["今晚很热闹。", "大家都来了。", "观众鼓掌。"]
    assert [a.headline for a in rebuild_articles(lines)] == ["北京举行新年音乐会", "第二条新闻"]
    assert strip_dateline("本报北京１月１日讯记者王五报道：会议召开。") == "会议召开。"
    assert strip_dateline("没有电头的句子。") == "没有电头的句子。"


def test_evaluate_headlines_scores_each_method():
    arts = [Article("经济增长很快", ["今天下雨。", "经济增长很快，就业增长也快。", "经济增长带动就业。"])]
    picks = extractive_baselines(arts[0], random.Random(0))
    assert picks["Lead-1"] == 0 and picks["TextRank"] == 1
    scores = evaluate_headlines(arts)
    assert set(scores) == {"TextRank", "Lead-1", "随机句"}
    # TextRank's pick 经济增长很快就业增长也快 (12 characters) holds the 6-character headline and 5 of its 5 bigrams
    # (增长 twice, clipped once) among its 11: ROUGE-1 F1 = 2·(6/12)·1/(6/12 + 1), ROUGE-2 F1 = 2·(5/11)·1/(5/11 + 1)
    assert scores["Lead-1"]["ROUGE-1"] == 0.0
    assert scores["TextRank"]["ROUGE-1"] == pytest.approx(2 / 3)
    assert scores["TextRank"]["ROUGE-2"] == pytest.approx(10 / 16)
    with pytest.raises(ValueError, match="empty"):
        evaluate_headlines([])


def test_peoples_daily_articles_rebuilds_the_first_article():
    from bigmodel_course.summarization import peoples_daily_articles

    articles = peoples_daily_articles(min_sentences=3)
    assert len(articles) == 2837 and all(len(a.sentences) >= 3 for a in articles)  # measured on the pinned corpus
    assert articles[0].headline == "迈向充满希望的新世纪——一九九八年新年讲话"  # the photo note is dropped
    assert articles[3].headline == "李鹏在北京考察企业" and articles[3].sentences[0] == "今天是一九九七年的最后一天。"
