"""bigmodel_course.rag.benchmark on a tiny corpus: rankings per setting, dev-only choices, paired noise, refusal."""

import numpy as np
import pytest

from bigmodel_course.rag.benchmark import (
    RefusalScores,
    Setting,
    bm25_settings,
    bootstrap_mean,
    choose,
    choose_threshold,
    dense_settings,
    evaluation_book_index,
    evaluation_corpus,
    fuse,
    hybrid_settings,
    metrics,
    paired_bootstrap,
    paired_counts,
    per_question,
    refusal_outcome,
    refusal_scores,
    run_benchmark,
    stop_words,
)
from bigmodel_course.rag.bm25 import BM25Index
from bigmodel_course.rag.chunking import chunk_documents
from bigmodel_course.rag.corpus import Document
from bigmodel_course.rag.dense import hybrid_ranking, section_ranking
from bigmodel_course.rag.questions import Question

DOCS = [
    Document("p1#cat", "猫", "猫喜欢吃鱼。猫每天睡很久。", "chapters/p1", "cat"),
    Document("p1#dog", "狗", "狗喜欢啃骨头。狗会看家。", "chapters/p1", "dog"),
    Document("p2#bird", "鸟", "鸟在天上飞。鸟吃虫子。", "chapters/p2", "bird"),
    Document("self#page", "检索", "猫狗鸟的问题都在这里。", "chapters/self", "page"),
]
DEV = [Question("d1", "猫喜欢吃什么？", "p1", ("cat",), "dev"), Question("d2", "谁会看家？", "p1", ("dog",), "dev")]
TEST = [Question("t1", "鸟吃什么？", "p2", ("bird",), "test"), Question("t2", "狗啃什么？", "p1", ("dog",), "test")]
VOCAB = sorted(set("".join(d.title + d.text for d in DOCS) + "".join(q.question for q in DEV + TEST)))


class CharBagEncoder:
    """Unit vectors of character counts (plus a constant, so no text maps to zero)."""

    def encode(self, texts, batch_size=64):
        out = np.ones((len(texts), len(VOCAB) + 1), dtype=np.float32)
        for row, text in enumerate(texts):
            for ch in text:
                if ch in VOCAB:
                    out[row, VOCAB.index(ch)] += 1
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_evaluation_corpus_leaves_out_the_benchmark_pages():
    assert [d.doc_id for d in evaluation_corpus(DOCS, frozenset({"self"}))] == ["p1#cat", "p1#dog", "p2#bird"]
    with pytest.raises(ValueError, match="no documents left"):
        evaluation_corpus(DOCS[3:], frozenset({"self"}))


def test_metrics_by_hand():
    rankings = {"d1": ["p1#dog", "p1#cat"], "d2": ["p1#dog"]}
    per = per_question(rankings, DEV)
    np.testing.assert_allclose(per["R@1"], [0.0, 1.0])
    np.testing.assert_allclose(per["MRR"], [0.5, 1.0])
    assert metrics(rankings, DEV) == {"R@1": 0.5, "R@5": 1.0, "MRR": 0.75}
    with pytest.raises(ValueError, match="no ranking"):
        metrics({"d1": []}, DEV)
    with pytest.raises(ValueError, match="no questions"):
        metrics(rankings, [])


def test_stop_words_are_measured_on_the_chunks():
    chunks = chunk_documents(DOCS[:3], max_chars=50)
    # "喜欢" and "吃" are each in 2 of 3 chunks, every other word in at most one
    assert stop_words(chunks, 0.5) == {"喜欢", "吃"}
    assert stop_words(chunks, 0.7) == frozenset()
    with pytest.raises(ValueError, match="fraction"):
        stop_words(chunks, 0.0)


def test_bm25_settings_rank_like_the_index_itself():
    docs = evaluation_corpus(DOCS, frozenset({"self"}))
    settings = bm25_settings(docs, DEV + TEST, chars=(8, 50), stop_fraction=0.5)
    assert [s.name for s in settings] == ["BM25，8 字的块，不去停用词", "BM25，8 字的块，去停用词（文档频率 > 0.5）",
                                          "BM25，50 字的块，不去停用词", "BM25，50 字的块，去停用词（文档频率 > 0.5）"]
    s = settings[2]
    chunks = chunk_documents(docs, max_chars=50, overlap=1)
    index = BM25Index.build(chunks)
    for q in DEV + TEST:
        assert s.rankings[q.qid] == section_ranking(index.scores(q.question), [c.doc_id for c in chunks])
        assert s.positive[q.qid] == section_ranking(index.scores(q.question), [c.doc_id for c in chunks], True)
    assert settings[3].params["n_stop"] == 2 and settings[3].index.stopwords == {"喜欢", "吃"}


def test_fusion_equals_hybrid_ranking():
    docs = evaluation_corpus(DOCS, frozenset({"self"}))
    bm25 = bm25_settings(docs, DEV + TEST, chars=(50,))
    dense = dense_settings(docs, DEV + TEST, {"chars": CharBagEncoder()}, chars=(8,))
    assert [d.name for d in dense] == ["稠密（chars），8 字的块"]
    for k in (1, 60):
        fused = fuse(bm25[0], dense[0], [q.qid for q in DEV + TEST], k)
        for q in DEV + TEST:
            expected = hybrid_ranking(q.question, bm25[0].index, bm25[0].sections, dense[0].index, dense[0].sections,
                                      k=k)
            assert fused[q.qid] == [s for s, _ in expected]
    hybrid = hybrid_settings(bm25, dense, DEV, ks=(3, 30))
    assert [h.params["k"] for h in hybrid] == [3, 30]  # the stop-word BM25 setting is not fused


def test_choose_uses_recall_at_5_then_mrr_and_keeps_the_first_on_ties():
    def setting(name, d1, d2):
        return Setting("BM25", name, {}, {"d1": d1, "d2": d2})

    filler = [f"x{i}" for i in range(5)]
    low = setting("low", filler + ["p1#cat"], ["p1#dog"])  # R@5 0.5
    late = setting("late", ["x", "p1#cat"], ["x", "p1#dog"])  # R@5 1, MRR 0.5
    early = setting("early", ["p1#cat"], ["x", "p1#dog"])  # R@5 1, MRR 0.75
    again = setting("again", ["x", "p1#dog", "p1#cat"], ["p1#dog"])  # R@5 1, MRR (1/3 + 1) / 2: worse
    assert choose([low, late, early, again], DEV).name == "early"
    assert choose([early, setting("copy", ["p1#cat"], ["x", "p1#dog"])], DEV).name == "early"
    with pytest.raises(ValueError, match="no settings"):
        choose([], DEV)


def test_run_benchmark_chooses_on_dev_and_refuses_shared_questions():
    docs = evaluation_corpus(DOCS, frozenset({"self"}))
    bench = run_benchmark(docs, DEV, TEST, {"chars": CharBagEncoder()}, bm25_chars=(8, 50), dense_chars=(8,),
                          rrf_ks=(1, 60))
    assert set(bench.settings) == {"BM25", "dense", "hybrid"}
    assert len(bench.settings["hybrid"]) == 2 * 1 * 2
    for kind, found in bench.settings.items():
        assert bench.chosen[kind] is choose(found, DEV)
        assert all(set(s.rankings) == {"d1", "d2", "t1", "t2"} for s in found)
    assert set(run_benchmark(docs, DEV, TEST, bm25_chars=(50,)).chosen) == {"BM25"}
    with pytest.raises(ValueError, match="both dev and test"):
        run_benchmark(docs, DEV, DEV[:1])


def test_paired_bootstrap_and_counts():
    a, b = np.array([1, 1, 0, 1, 0, 1.0]), np.array([0, 1, 0, 1, 1, 0.0])
    mean, lo, hi = paired_bootstrap(a, b, n_boot=2000, seed=0)
    assert mean == pytest.approx(1 / 6) and lo < mean < hi and -1 <= lo and hi <= 1
    assert paired_bootstrap(a, a) == (0.0, 0.0, 0.0)
    assert paired_bootstrap(a, a - 0.5) == pytest.approx((0.5, 0.5, 0.5))
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    assert paired_counts(a, b) == {"only a": 2, "only b": 1, "both": 2, "neither": 1}
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap(a, b[:3])
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap(a, b, n_boot=0)
    with pytest.raises(ValueError, match="shapes"):
        paired_counts(a, b[:2])


def test_bootstrap_mean_is_the_paired_bootstrap_against_zero():
    a = np.array([1, 1, 0, 1, 0, 1.0])
    mean, lo, hi = bootstrap_mean(a, n_boot=2000, seed=0)
    assert mean == pytest.approx(4 / 6) and 0 <= lo < mean < hi <= 1
    assert (mean, lo, hi) == paired_bootstrap(a, np.zeros(6), n_boot=2000, seed=0)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean([])


def test_refusal_outcome_and_threshold_by_hand():
    scores = RefusalScores(found=np.array([True, True, False]), best=np.array([5.0, 2.0, 4.0]),
                           out_of_scope_best=np.array([1.0, 3.0]))
    assert refusal_outcome(scores, 2.5) == {"right section shown": 1, "answered, section missed": 1,
                                            "wrongly refused": 1, "rightly refused": 1, "wrongly answered": 1}
    # right answers + right refusals: t<=1: 2+0, 1<t<=2: 2+1, 2<t<=3: 1+1, 3<t<=5: 1+2, t>5: 0+2
    assert choose_threshold(scores, [0.5, 1.5, 2.0, 2.5, 3.5, 4.5, 6.0]) == (1.5, 4.5, 2.75)  # best: 1.5, 2.0, 3.5, 4.5
    with pytest.raises(ValueError, match="grid"):
        choose_threshold(scores, [])


def test_refusal_scores_on_a_tiny_book_index():
    index = evaluation_book_index(evaluation_corpus(DOCS, frozenset({"self"})))
    scores = refusal_scores(index, DEV + TEST, ["今天天气怎么样？"], k_sections=1)
    assert scores.found.tolist() == [True, True, True, True]
    assert (scores.best > 0).all() and scores.out_of_scope_best.tolist() == [0.0]
    assert refusal_outcome(scores, 1e-9)["rightly refused"] == 1
