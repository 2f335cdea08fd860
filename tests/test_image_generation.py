"""Conditional VAE, damage masks, inpainting and scoring of generated digits."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigmodel_course.data import digits_splits
from bigmodel_course.image_generation import (CVAEConfig, ConditionalVAE, damage_mask, digit_probabilities,
                                              digit_scores, evaluate_vae, grid_labels, hidden_error, inpaint,
                                              mean_fill, mean_pairwise_distance, nearest_train_distance,
                                              sample_images, train_cvae, vae_loss, within_class_diversity)
from bigmodel_course.transformer import ModelOutput


@pytest.fixture(scope="module")
def digits():
    return digits_splits()


@pytest.fixture(scope="module")
def trained(digits):
    torch.set_num_threads(1)
    model, history = train_cvae(digits.x_train, digits.y_train, epochs=8, cfg=CVAEConfig(latent_dim=4, hidden=64),
                                val=(digits.x_val, digits.y_val), snapshot_epochs=(0, 8), per_class=2)
    return model, history


def test_vae_loss_matches_written_out_formulas():
    torch.manual_seed(0)
    logits, x = torch.randn(3, 64), torch.rand(3, 64)
    mu, logvar = torch.randn(3, 4), torch.randn(3, 4)
    recon, kl = vae_loss(logits, x, mu, logvar)
    p = torch.sigmoid(logits)
    ref_recon = -(x * p.log() + (1 - x) * (1 - p).log()).sum(1).mean()
    # KL(N(mu, sigma²) || N(0, 1)) = log(1/sigma) + (sigma² + mu²)/2 - 1/2, per dimension
    sigma = (0.5 * logvar).exp()
    ref_kl = (-sigma.log() + (sigma**2 + mu**2) / 2 - 0.5).sum(1).mean()
    assert torch.allclose(recon, ref_recon, atol=1e-5)
    assert torch.allclose(kl, ref_kl, atol=1e-5)
    zero_recon, zero_kl = vae_loss(logits, x, torch.zeros(3, 4), torch.zeros(3, 4))
    assert float(zero_kl) == 0.0


def test_training_lowers_the_loss_and_records_history(digits, trained):
    model, history = trained
    assert history.epochs == list(range(1, 9))
    assert len(history.val_loss) == 8 and len(history.train_kl) == 8
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.val_loss[-1] < history.val_loss[0]
    assert sorted(history.snapshots) == [0, 8]
    assert history.snapshots[8].shape == (20, 8, 8)
    untrained = ConditionalVAE(CVAEConfig(latent_dim=4, hidden=64))
    assert evaluate_vae(model, digits.x_test, digits.y_test) < evaluate_vae(untrained, digits.x_test, digits.y_test)


def test_training_is_reproducible(digits):
    torch.set_num_threads(1)
    a, ha = train_cvae(digits.x_train[:100], digits.y_train[:100], epochs=2, cfg=CVAEConfig(4, 32), seed=3)
    b, hb = train_cvae(digits.x_train[:100], digits.y_train[:100], epochs=2, cfg=CVAEConfig(4, 32), seed=3)
    assert ha.train_loss == hb.train_loss
    assert torch.equal(sample_images(a, [1, 2], seed=0), sample_images(b, [1, 2], seed=0))


def test_bad_training_input_is_named(digits):
    with pytest.raises(ValueError, match="images must be"):
        train_cvae(np.zeros((3, 64)), [0, 1, 2], epochs=1)
    with pytest.raises(ValueError, match="labels must be"):
        train_cvae(digits.x_train[:3], [0, 1], epochs=1)
    with pytest.raises(ValueError, match="pixel values"):
        train_cvae(np.full((2, 8, 8), 17.0), [0, 1], epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        train_cvae(digits.x_train[:3], digits.y_train[:3], epochs=0)
    with pytest.raises(ValueError, match="snapshot_epochs"):
        train_cvae(digits.x_train[:3], digits.y_train[:3], epochs=1, snapshot_epochs=(5,))
    with pytest.raises(ValueError, match="latent_dim"):
        CVAEConfig(latent_dim=0)


def test_samples_have_the_right_shape_range_and_labels(trained):
    model, _ = trained
    labels = grid_labels(3)
    assert labels.tolist() == [d for d in range(10) for _ in range(3)]
    x = sample_images(model, labels, seed=1)
    assert x.shape == (30, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 16
    z = torch.zeros(30, 4)
    manual = torch.sigmoid(model.decoder(torch.cat([z, F.one_hot(labels, 10).float()], 1))) * 16
    assert torch.allclose(sample_images(model, labels, z=z), manual.view(30, 8, 8))
    with pytest.raises(ValueError, match="z must be"):
        sample_images(model, labels, z=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="labels must be digits"):
        sample_images(model, [10])


def test_damage_masks():
    keep = damage_mask(5, "bottom_half")
    assert keep[:, :4].all() and not keep[:, 4:].any()
    block = damage_mask(50, "block", block=3, seed=1)
    assert ((~block).sum((1, 2)) == 9).all()
    for m in ~block:  # the hidden pixels form one 3×3 square
        rows, cols = torch.nonzero(m, as_tuple=True)
        assert int(rows.max() - rows.min()) == 2 and int(cols.max() - cols.min()) == 2
    assert torch.equal(block, damage_mask(50, "block", block=3, seed=1))
    with pytest.raises(ValueError, match="unknown mask kind"):
        damage_mask(2, "left")
    with pytest.raises(ValueError, match="block must be"):
        damage_mask(2, "block", block=8)


def test_mean_fill_and_hidden_error(digits):
    x = torch.as_tensor(digits.x_test[:10])
    keep = damage_mask(10, "bottom_half")
    mean_image = digits.x_train.mean(0)
    filled = mean_fill(x, keep, mean_image)
    assert torch.equal(filled[:, :4], x[:, :4])
    assert torch.allclose(filled[:, 4:], torch.as_tensor(mean_image)[4:].expand(10, 4, 8))
    err = hidden_error(filled, x, keep)
    d = (filled - x)[:, 4:]
    assert err["mae"] == pytest.approx(float(d.abs().mean()))
    assert err["rmse"] == pytest.approx(math.sqrt(float((d ** 2).mean())))
    assert hidden_error(x, x, keep) == {"mae": 0.0, "rmse": 0.0}
    with pytest.raises(ValueError, match="hides no pixel"):
        hidden_error(x, x, torch.ones_like(keep))
    with pytest.raises(ValueError, match="keep must be"):
        mean_fill(x, keep[:, :4], mean_image)


def test_inpaint_keeps_visible_pixels_and_beats_noise(digits, trained):
    model, _ = trained
    x = torch.as_tensor(digits.x_test[:40])
    keep = damage_mask(40, "block", block=3, seed=0)
    result = inpaint(model, x, keep, steps=20)
    assert torch.equal(result.images[keep], x[keep])
    assert result.objective.shape == (40, 10)
    assert torch.equal(result.labels, result.objective.argmin(1))
    assert float(result.images.min()) >= 0 and float(result.images.max()) <= 16
    noise = torch.where(keep, x, torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 16)
    assert hidden_error(result.images, x, keep)["rmse"] < hidden_error(noise, x, keep)["rmse"]
    given = inpaint(model, x, keep, steps=5, labels=digits.y_test[:40])
    assert given.objective.shape == (40, 1) and torch.equal(given.labels, torch.as_tensor(digits.y_test[:40]))
    assert all(p.requires_grad for p in model.parameters())


class _Fixed(nn.Module):
    """A 'classifier' whose logits are given per image (row i of `logits` for the i-th image seen)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.as_tensor(logits, dtype=torch.float32)

    def forward(self, pixel_values):
        assert pixel_values.shape[1:] == (1, 8, 8)
        return ModelOutput(logits=self.logits[: len(pixel_values)])


def test_digit_scores_against_hand_computed_values():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1] + [1e-9] * 7, [0.1, 0.6, 0.3] + [1e-9] * 7]))
    scores = digit_scores(_Fixed(logits), np.zeros((2, 8, 8)), [0, 2], mean=1.0, std=2.0)
    assert scores["accuracy"] == pytest.approx(0.5)
    assert scores["p_requested"] == pytest.approx((0.7 + 0.3) / 2, abs=1e-6)
    assert scores["confidence"] == pytest.approx((0.7 + 0.6) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="requested must be"):
        digit_scores(_Fixed(logits), np.zeros((2, 8, 8)), [0], mean=0.0, std=1.0)
    probs = digit_probabilities(_Fixed(logits), np.zeros((2, 8, 8)), mean=1.0, std=2.0)
    assert probs.argmax(1).tolist() == [0, 1] and probs.sum(1).tolist() == pytest.approx([1.0, 1.0])


def test_mean_pairwise_distance():
    a = np.zeros((3, 8, 8), dtype=np.float32)
    a[1, 0, 0] = 3.0
    a[2, 0, 0] = 4.0
    # pairs: 3, 4, 1 → mean 8/3
    assert mean_pairwise_distance(a) == pytest.approx(8 / 3)
    with pytest.raises(ValueError, match="two images"):
        mean_pairwise_distance(a[:1])


def test_latency_stats_against_numpy_percentile():
    from bigmodel_course.benchmarks import latency_stats, time_interleaved_samples

    rng = np.random.default_rng(0)
    seconds = rng.uniform(0.001, 0.02, size=37).tolist()
    stats = latency_stats("x", seconds, batch=4)
    assert stats.p50_ms == pytest.approx(1e3 * np.percentile(seconds, 50))
    assert stats.p99_ms == pytest.approx(1e3 * np.percentile(seconds, 99))
    assert stats.fps == pytest.approx(4 / np.percentile(seconds, 50))
    calls = []
    samples = time_interleaved_samples({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                       torch.device("cpu"), rounds=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "a", "b", "a", "b"]
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3}
    with pytest.raises(ValueError, match="no timings"):
        latency_stats("x", [])


def test_within_class_diversity_averages_the_per_digit_pairwise_distances():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 16, (40, 8, 8))
    labels = np.repeat(np.arange(10), 4)
    expected = np.mean([np.mean([np.linalg.norm(a - b) for i, a in enumerate(images[labels == d])
                                 for j, b in enumerate(images[labels == d]) if i != j]) for d in range(10)])
    assert within_class_diversity(images, labels) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="too few of \\[9\\]"):
        within_class_diversity(images[:37], labels[:37])
    with pytest.raises(ValueError, match="labels"):
        within_class_diversity(images, labels[:-1])


def test_nearest_train_distance_is_zero_for_copies_and_the_median_otherwise():
    rng = np.random.default_rng(1)
    train = rng.uniform(0, 16, (30, 8, 8))
    assert nearest_train_distance(train[:5], train) == pytest.approx(0.0, abs=1e-3)
    shifted = np.clip(train[:3] + 1.0, 0, 16)
    per_image = [min(np.linalg.norm(s - t) for t in train) for s in shifted]
    assert nearest_train_distance(shifted, train) == pytest.approx(np.median(per_image), rel=1e-5)
    with pytest.raises(ValueError, match="train_images"):
        nearest_train_distance(train[:2], train[:, :4])
