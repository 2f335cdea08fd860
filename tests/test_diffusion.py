"""The DDPM on the 8×8 digits: schedule, the reverse step against the forward process, RePaint, training."""

import pytest
import torch

from bigmodel_course.diffusion import (
    NO_LABEL,
    DDPMConfig,
    DiffusionDenoiser,
    _reverse_step,
    _to_model,
    cosine_alpha_bar,
    ddpm_inpaint,
    ddpm_sample,
    evaluate_ddpm,
    train_ddpm,
)
from bigmodel_course.image_generation import damage_mask


class Oracle(DiffusionDenoiser):
    """Knows the clean images x0 (model scale) and returns the exact noise: eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)."""

    def __init__(self, x0: torch.Tensor, cfg: DDPMConfig) -> None:
        super().__init__(cfg)
        self.x0 = x0

    def forward(self, x, t, y):
        ab = self.alpha_bar[t][:, None]
        return (x - ab.sqrt() * self.x0) / (1 - ab).sqrt()


def _digits(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 17, (n, 8, 8), generator=torch.Generator().manual_seed(seed)).float()


def test_cosine_schedule():
    ab = cosine_alpha_bar(100)
    assert ab.shape == (100,)
    assert (ab[1:] < ab[:-1]).all() and 0.99 < ab[0] < 1 and ab[-1] < 1e-3
    betas = 1 - ab / torch.cat([torch.ones(1), ab[:-1]])
    assert (betas > 0).all() and (betas <= 0.999 + 1e-6).all()


def test_reverse_step_keeps_the_forward_marginals():
    """With the exact noise, x_t ~ q(x_t | x0) mapped through one reverse step must be ~ q(x_{t-1} | x0):
    mean sqrt(ab_{t-1}) x0 and variance 1 - ab_{t-1} (the posterior mean and variance of Ho et al., eq. 7)."""
    cfg = DDPMConfig(timesteps=50)
    n = 20_000
    x0 = torch.full((n, 64), 0.6)
    model = Oracle(x0, cfg)
    gen = torch.Generator().manual_seed(0)
    for t in (1, 10, 30, 49):
        ab = model.alpha_bar
        xt = ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * torch.randn(x0.shape, generator=gen)
        prev = _reverse_step(model, xt, t, torch.zeros(n, dtype=torch.long), gen)
        assert prev.mean().item() == pytest.approx(ab[t - 1].sqrt().item() * 0.6, abs=3e-3)
        assert prev.var().item() == pytest.approx(1 - ab[t - 1].item(), rel=0.02, abs=2e-4)


def test_sampling_with_the_exact_noise_returns_the_image():
    images = _digits(4)
    cfg = DDPMConfig(timesteps=30)
    out = ddpm_sample(Oracle(_to_model(images), cfg), labels=[1, 2, 3, 4], seed=0)
    assert torch.allclose(out, images, atol=1e-3)


def test_repaint_keeps_known_pixels_and_recovers_hidden_ones_with_the_exact_noise():
    images = _digits(6, seed=1)
    keep = damage_mask(6, "bottom_half")
    cfg = DDPMConfig(timesteps=20)
    out = ddpm_inpaint(Oracle(_to_model(images), cfg), images, keep, resample=3)
    assert torch.equal(out[keep], images[keep])
    assert torch.allclose(out[~keep], images[~keep], atol=1e-3)


@pytest.mark.slow
def test_training_learns_and_samples_are_valid():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = torch.as_tensor(digits.images[:64]).float(), torch.as_tensor(digits.target[:64])
    cfg = DDPMConfig(timesteps=20, hidden=64, blocks=1, time_dim=16)
    untrained = DiffusionDenoiser(cfg)
    # the output layer starts at zero: it predicts no noise, so the loss is E[eps^2] = 1
    assert evaluate_ddpm(untrained, images, labels) == pytest.approx(1.0, abs=0.05)
    model, history = train_ddpm(images, labels, epochs=100, cfg=cfg, batch_size=32, ema_decay=0.9,
                                val=(images, labels), seed=0)
    assert len(history.train_loss) == len(history.val_loss) == 100
    assert history.val_loss[-1] < 0.8 * history.val_loss[0]
    a = ddpm_sample(model, labels=[7, 7, 0], seed=3)
    assert a.shape == (3, 8, 8) and a.min() >= 0 and a.max() <= 16
    assert torch.equal(a, ddpm_sample(model, labels=[7, 7, 0], seed=3))  # seeded
    assert ddpm_sample(model, n=5).shape == (5, 8, 8)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="label_dropout"):
        DDPMConfig(label_dropout=1.0)
    with pytest.raises(ValueError, match="time_dim"):
        DDPMConfig(time_dim=15)
    model = DiffusionDenoiser(DDPMConfig(timesteps=5, hidden=16, blocks=1, time_dim=8))
    with pytest.raises(ValueError, match="positive n"):
        ddpm_sample(model)
    with pytest.raises(ValueError, match="digits 0..9"):
        ddpm_sample(model, labels=[NO_LABEL])
    with pytest.raises(ValueError, match="resample"):
        ddpm_inpaint(model, _digits(2), damage_mask(2, "block"), resample=0)
    with pytest.raises(ValueError, match="labels must be"):
        ddpm_inpaint(model, _digits(2), damage_mask(2, "block"), labels=[1, 2, 3])
