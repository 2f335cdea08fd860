"""Synthetic user sequences, baselines, ranking metrics and the next-item Transformer."""

import math

import numpy as np
import pytest
import torch

from bigmodel_course.recommendation import (ItemSequenceDataset, WorldConfig, entropy_bits, expected_hit_rate,
                                            generate_sequences, make_world, markov_scores, next_item_config,
                                            popularity_scores, rank_metrics, train_next_item_model,
                                            transformer_scores)

SMALL = WorldConfig(n_items=40, n_categories=4, seq_len=12)


def test_world_structure():
    w = make_world(SMALL, seed=0)
    assert np.bincount(w.category).tolist() == [10, 10, 10, 10]
    for c in range(4):
        assert w.popularity[w.category == c].sum() == pytest.approx(1.0)
    assert (w.category[w.related] == w.category).all()  # related items share the category
    assert (w.related != np.arange(40)).all()
    assert sorted(w.related.tolist()) == list(range(40))  # every item is exactly one item's related item
    assert np.allclose(w.category_matrix().sum(1), 1.0)


def test_bad_world_config_is_named():
    with pytest.raises(ValueError, match="2 items per category"):
        WorldConfig(n_items=5, n_categories=4)
    with pytest.raises(ValueError, match="p_stay"):
        WorldConfig(p_stay=1.5)
    with pytest.raises(ValueError, match="seq_len"):
        WorldConfig(seq_len=2)


def test_generated_sequences_follow_the_process():
    cfg = WorldConfig(n_items=40, n_categories=4, seq_len=12, p_related=1.0)
    w = make_world(cfg, seed=1)
    s = generate_sequences(w, 50, seed=2)
    assert s.items.shape == (50, 12)
    assert (s.items[:, 1:] == w.related[s.items[:, :-1]]).all()  # p_related = 1: always the related item
    assert np.allclose(s.last_item_probs[np.arange(50), w.related[s.items[:, -2]]], 1.0)
    s2 = generate_sequences(make_world(SMALL, 0), 2000, seed=3)
    assert np.allclose(s2.last_item_probs.sum(1), 1.0)
    assert np.array_equal(s2.items, generate_sequences(make_world(SMALL, 0), 2000, seed=3).items)


def test_oracle_probabilities_match_the_empirical_frequencies():
    # users grouped by their second-to-last item: the mean oracle row must match how often each last item occurs
    cfg = WorldConfig(n_items=8, n_categories=2, seq_len=3, p_related=0.3, p_stay=0.5, p_drift=0.0)
    w = make_world(cfg, seed=0)
    s = generate_sequences(w, 40000, seed=0)
    prev = s.items[:, -2]
    for item in np.unique(prev)[:3]:
        rows = prev == item
        empirical = np.bincount(s.items[rows, -1], minlength=8) / rows.sum()
        assert np.abs(empirical - s.last_item_probs[rows].mean(0)).max() < 0.03


def test_popularity_and_markov_scores_against_loops():
    h = np.array([[0, 1, 2, 1], [1, 2, 0, 2]])
    assert popularity_scores(h, 4).tolist() == [2, 3, 3, 0]
    m = markov_scores(h, 4)
    counts = np.zeros((4, 4))
    for row in h:
        for a, b in zip(row[:-1], row[1:]):
            counts[a, b] += 1
    pop = np.array([2, 3, 3, 0]) / 4.0
    assert np.allclose(m.numpy(), counts + pop)
    with pytest.raises(ValueError, match="out of range"):
        popularity_scores(h, 2)


def test_rank_metrics_against_a_brute_force_loop():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(200, 30)).astype(float)  # many ties
    targets = rng.integers(0, 30, size=200)
    hr = ndcg = 0.0
    for s, t in zip(scores, targets):
        rank = sum(1 for v in s if v >= s[t])
        if rank <= 10:
            hr += 1
            ndcg += 1 / math.log2(rank + 1)
    got = rank_metrics(scores, targets, k=10)
    assert got["HR@10"] == pytest.approx(hr / 200)
    assert got["NDCG@10"] == pytest.approx(ndcg / 200)
    perfect = rank_metrics(np.eye(5), np.arange(5), k=1)
    assert perfect == {"HR@1": 1.0, "NDCG@1": 1.0}
    with pytest.raises(ValueError, match="targets must be"):
        rank_metrics(scores, np.full(200, 30))
    with pytest.raises(ValueError, match="k must be"):
        rank_metrics(scores, targets, k=0)


def test_expected_hit_rate_and_entropy():
    p = np.array([[0.5, 0.25, 0.25, 0.0], [0.25, 0.25, 0.25, 0.25]])
    assert expected_hit_rate(p, k=1) == pytest.approx((0.5 + 0.25) / 2)
    assert entropy_bits(p) == pytest.approx((1.5 + 2.0) / 2)


def test_dataset_shifts_ids_and_model_learns_the_related_item():
    torch.set_num_threads(1)
    cfg = WorldConfig(n_items=20, n_categories=2, seq_len=8, p_related=0.9)
    w = make_world(cfg, seed=0)
    s = generate_sequences(w, 400, seed=0)
    hist, target = s.items[:, :-1], s.items[:, -1]
    ds = ItemSequenceDataset(hist)
    assert torch.equal(ds[0]["input_ids"], torch.as_tensor(hist[0]) + 1)
    model, log = train_next_item_model(hist, next_item_config(20, 8, d_model=32, n_layers=1), epochs=15,
                                       batch_size=64, lr=1e-2)
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    scores = transformer_scores(model, hist)
    assert scores.shape == (400, 20)
    pop = popularity_scores(hist, 20).expand(400, -1)
    assert rank_metrics(scores, target, k=1)["HR@1"] > rank_metrics(pop, target, k=1)["HR@1"] + 0.3
    with pytest.raises(ValueError, match="vocab_size"):
        train_next_item_model(hist, next_item_config(5, 8), epochs=1)
