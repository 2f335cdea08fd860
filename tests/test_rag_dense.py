"""bigmodel_course.rag.dense: faiss search against brute-force cosine top_k, contrastive training, pairs, fusion."""

import random

import numpy as np
import pytest
import torch

from bigmodel_course.rag.bm25 import MAX_QUERY_CHARS, BM25Index
from bigmodel_course.rag.chunking import Chunk
from bigmodel_course.rag.corpus import Document
from bigmodel_course.rag.dense import (
    DENSE_SPECS,
    DenseEncoder,
    DenseIndex,
    DenseSpec,
    Pair,
    contrastive_loss,
    dense_dir,
    hybrid_ranking,
    ict_pairs,
    load_dense,
    sample_batch,
    section_ranking,
    title_pairs,
    train_bi_encoder,
    train_dense,
    variant,
)
from bigmodel_course.retrieval import top_k
from bigmodel_course.tokenization import CharTokenizer
from bigmodel_course.transformer import EncoderConfig, TransformerEncoder

# 16 synthetic passages, each of three sentences over its own three characters
CHARS = [chr(0x4E00 + 37 * i) for i in range(48)]
PASSAGES = []
for _i in range(16):
    a, b, c = CHARS[3 * _i:3 * _i + 3]
    PASSAGES.append((f"p{_i}", "", f"{a}{b}{c}{a}{b}。{b}{c}{a}{c}。{c}{a}{b}{b}。"))


def tiny_encoder(texts, seed=0):
    torch.manual_seed(seed)
    tok = CharTokenizer.train(texts)
    cfg = EncoderConfig(vocab_size=tok.vocab_size, max_len=64, d_model=32, n_heads=2, n_layers=2,
                        pad_token_id=tok.pad_id, dropout=0.0, attn_dropout=0.0)
    return TransformerEncoder(cfg, add_pooler=False).eval(), tok


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --- exact search ---------------------------------------------------------------------------------------------

def test_faiss_search_equals_brute_force_cosine_on_random_unit_vectors():
    rng = np.random.default_rng(0)
    corpus, queries = unit(rng, 500, 24), unit(rng, 7, 24)
    index = DenseIndex(corpus)
    for k in (1, 10, 500):
        scores, indices = index.search_vectors(queries, k)
        ref_scores, ref_indices = top_k(torch.from_numpy(queries), torch.from_numpy(corpus), k)
        np.testing.assert_array_equal(indices, ref_indices.numpy())
        np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-5)
    # vectors that are not unit length are normalised first: cosine, not raw inner product
    scaled = DenseIndex(corpus * rng.uniform(0.1, 10, size=(500, 1)).astype(np.float32))
    np.testing.assert_array_equal(scaled.search_vectors(queries * 3, 5)[1], index.search_vectors(queries, 5)[1])


def test_faiss_search_equals_brute_force_cosine_on_real_embeddings():
    texts = [t for _, _, t in PASSAGES] + ["一个没有出现过的句子。", "另一段文字，长一些，长一些，再长一些。"]
    encoder, tok = tiny_encoder(texts + ["查询"])
    dense = DenseEncoder(encoder, tok)
    emb = dense.encode(texts, batch_size=3)
    assert emb.dtype == np.float32 and emb.shape == (len(texts), 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # batching by length does not change a text's vector or its row
    np.testing.assert_allclose(emb, np.concatenate([dense.encode([t]) for t in texts]), atol=1e-5)
    index = DenseIndex.build(texts, dense)
    for query in (texts[3][:6], "查询", texts[-1]):
        hits = index.search(query, k=len(texts))
        ref_scores, ref_indices = top_k(torch.from_numpy(dense.encode([query])[0]), torch.from_numpy(emb), len(texts))
        np.testing.assert_allclose([s for _, s in hits], ref_scores.numpy(), atol=1e-5)
        s = ref_scores.numpy()
        untied = [i for i in range(len(s)) if (i == 0 or s[i - 1] - s[i] > 1e-5)
                  and (i == len(s) - 1 or s[i] - s[i + 1] > 1e-5)]  # where no score ties, the order must agree
        got = np.array([i for i, _ in hits])
        assert len(untied) > len(s) // 2
        np.testing.assert_array_equal(got[untied], ref_indices.numpy()[untied])
        np.testing.assert_allclose(index.scores(query)[got], [s for _, s in hits], atol=1e-5)


def test_dense_index_bad_inputs():
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="empty corpus"):
        DenseIndex(np.zeros((0, 8), dtype=np.float32))
    encoder, tok = tiny_encoder(["猫鱼"])
    with pytest.raises(ValueError, match="empty corpus"):
        DenseIndex.build([], DenseEncoder(encoder, tok))
    with pytest.raises(ValueError, match="zero vector"):
        DenseIndex(np.zeros((3, 8)))
    with pytest.raises(ValueError, match="NaN"):
        DenseIndex(np.full((3, 8), np.nan))
    with pytest.raises(ValueError, match="2-D"):
        DenseIndex(np.ones(8))
    index = DenseIndex.build(["猫鱼。", "鱼猫。", "猫猫。"], DenseEncoder(encoder, tok))
    for k in (0, 4, -1, True, 2.0):
        with pytest.raises(ValueError, match=r"k must be an int in \[1, 3\]"):
            index.search("猫", k=k)
    for query in ("", "   \n"):
        with pytest.raises(ValueError, match="query is empty"):
            index.search(query, k=1)
    with pytest.raises(ValueError, match="limit is"):
        index.search("猫" * (MAX_QUERY_CHARS + 1), k=1)
    with pytest.raises(ValueError, match="must be a string"):
        index.search(None, k=1)
    with pytest.raises(ValueError, match="width"):
        index.search_vectors(unit(rng, 1, 5), k=1)
    with pytest.raises(ValueError, match="without an encoder"):
        DenseIndex(unit(rng, 4, 8)).search("猫", k=1)
    with pytest.raises(ValueError, match="non-empty"):
        DenseEncoder(encoder, tok).encode(["猫", " "])
    with pytest.raises(ValueError, match="max_len"):
        DenseEncoder(encoder, tok, max_len=65)


# --- pairs and training ---------------------------------------------------------------------------------------

def test_ict_pairs_remove_the_query_sentence_unless_told_to_keep_it():
    passages = [("s1", "标题", "第一句话。第二句话！短。"), ("s2", "", "只有一句。")]
    removed = ict_pairs(passages, remove_prob=1.0, min_query_chars=4)
    assert removed == [Pair("第一句话。", "标题\n第二句话！短。", ("s1",)),
                       Pair("第二句话！", "标题\n第一句话。短。", ("s1",))]  # "短。" is too short; s2 has one sentence
    kept = ict_pairs(passages, remove_prob=0.0, min_query_chars=4)
    assert {p.passage for p in kept} == {"标题\n第一句话。第二句话！短。"}
    chunks = [Chunk("a#x:1", "a#x", "正文一。", 0, 4, "小结", "x"),
              Chunk("b#y:1", "b#y", "正文二。", 0, 4, "小结", "y")]
    pairs = title_pairs(chunks)
    assert [p.passage for p in pairs] == ["小结\n正文一。", "小结\n正文二。"]
    # the two "小结" pairs share a key, so no batch of two can be drawn from them
    with pytest.raises(ValueError, match="distinct keys"):
        sample_batch(pairs, 2, random.Random(0))
    batch = sample_batch(ict_pairs(PASSAGES, 1.0, 2), 16, random.Random(0))
    assert len({p.keys for p in batch}) == 16


def test_contrastive_training_lowers_the_loss():
    pairs = ict_pairs(PASSAGES, remove_prob=1.0, min_query_chars=2)
    encoder, tok = tiny_encoder([t for _, _, t in PASSAGES])
    probe = sample_batch(pairs, 16, random.Random(1))  # one pair of each passage

    def probe_loss():
        with torch.no_grad():
            return contrastive_loss(encoder, tok, [p.query for p in probe], [p.passage for p in probe], 0.1, 32,
                                    64).item()

    before = probe_loss()
    losses = train_bi_encoder(encoder, tok, [pairs], [1.0], steps=40, batch_size=8, lr=3e-3, temperature=0.1,
                              query_len=32, passage_len=64, seed=0)
    after = probe_loss()
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert after < 0.5 * before, (before, after)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert not encoder.training


def test_contrastive_loss_and_spec_bad_inputs():
    encoder, tok = tiny_encoder(["猫鱼"])
    with pytest.raises(ValueError, match=">= 2 queries"):
        contrastive_loss(encoder, tok, ["猫"], ["鱼"], 0.05, 16, 16)
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(encoder, tok, ["猫", "鱼"], ["鱼", "猫"], 0.0, 16, 16)
    with pytest.raises(ValueError, match="temperature"):
        DenseSpec("ci", steps=1, batch_size=2, lr=1e-3, temperature=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        DenseSpec("ci", steps=1, batch_size=1, lr=1e-3, temperature=0.05)
    with pytest.raises(ValueError, match="news_share"):
        variant("ci", news_share=1.5)
    with pytest.raises(ValueError, match="unknown run profile"):
        variant("huge")


def test_ci_profile_trains_publishes_and_reloads(tmp_path):
    book = [Document(f"p#s{i}", f"第{i}节", text, "chapters/p", f"s{i}") for i, (_, _, text) in enumerate(PASSAGES)]
    folder = train_dense("ci", root=tmp_path, book=book)
    assert folder == dense_dir("ci", root=tmp_path) and (folder / "manifest.json").is_file()
    dense = load_dense("ci", root=tmp_path, train_if_missing=False)
    spec = DENSE_SPECS["ci"]
    assert dense.meta["spec"]["steps"] == spec.steps and len(dense.meta["history"]) == spec.steps
    assert dense.meta["n_book_pairs"] > 0 and dense.meta["n_news_pairs"] > 0
    assert dense.max_len == spec.passage_len
    emb = dense.encode(["深度学习。", PASSAGES[0][2]])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # a variant lives in a folder of its own and is not trained when told not to
    with pytest.raises(FileNotFoundError):
        load_dense("ci", spec=variant("ci", temperature=0.2), root=tmp_path, train_if_missing=False)


# --- section rankings and fusion ------------------------------------------------------------------------------

class FixedEncoder:
    """Maps each known text to a fixed vector (the hand case below needs exact cosine values)."""

    def __init__(self, vectors):
        self.vectors = vectors

    def encode(self, texts, batch_size=64):
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)


def test_hybrid_ranking_fuses_bm25_and_dense_by_hand():
    bm25 = BM25Index.build(["猫 鱼", "狗 骨头", "鸟 虫子"])
    bm25_sections = ["A", "B", "C"]  # query "猫 狗": A and B tie (same idf and length), C shares no word
    chunk_vectors = np.array([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0], [0.8, 0.6]], dtype=np.float32)
    dense = DenseIndex(chunk_vectors, FixedEncoder({"猫 狗": [1.0, 0.0]}))
    dense_sections = ["C", "B", "A", "B"]  # cosines 0.6, 1.0, 0.0, 0.8: B, C, A
    assert section_ranking(bm25.scores("猫 狗"), bm25_sections, positive_only=True) == ["A", "B"]
    assert section_ranking(bm25.scores("猫 狗"), bm25_sections) == ["A", "B", "C"]
    assert section_ranking(dense.scores("猫 狗"), dense_sections) == ["B", "C", "A"]
    fused = hybrid_ranking("猫 狗", bm25, bm25_sections, dense, dense_sections, k=1)
    # A: 1/(1+1) + 1/(1+3); B: 1/(1+2) + 1/(1+1); C: 1/(1+2) (dense only)
    assert [s for s, _ in fused] == ["B", "A", "C"]
    np.testing.assert_allclose([v for _, v in fused], [1 / 3 + 1 / 2, 1 / 2 + 1 / 4, 1 / 3])
    with pytest.raises(ValueError, match="section of every chunk"):
        hybrid_ranking("猫 狗", bm25, ["A", "B"], dense, dense_sections)
    with pytest.raises(ValueError, match="scores for"):
        section_ranking(np.zeros(3), ["A", "B"])
