"""A small denoising diffusion model (DDPM) on the 8×8 digits: training, ancestral sampling and RePaint inpainting.

Ho et al. (2020): corrupt an image with Gaussian noise in T small steps, train a network to predict the noise that
was added, then generate by running the chain backwards from pure noise. The network here is an MLP over the 64
pixels (with the time step and the digit as inputs); a share of training examples sees the label "no digit", so one
model samples both conditionally ("draw a 7") and unconditionally (needed to repair an image of an unknown digit).

Inpainting follows RePaint (Lugmayr et al., 2022): at every reverse step the kept pixels are replaced by a freshly
noised copy of the original, and each step is re-done a few times (one step forward in noise, one back) so the
generated region has time to agree with the kept one.

Pixels enter and leave every public function on the raw load_digits scale 0..16, like `image_generation`; the model
works on x / 8 - 1 in [-1, 1].
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.vision import DIGITS_IMAGE_SIZE, DIGITS_MAX_VALUE
from .image_generation import N_CLASSES, N_PIXELS, _images, _labels, _mask

NO_LABEL = N_CLASSES  # the label index that means "any digit"


@dataclass(frozen=True)
class DDPMConfig:
    """Noise schedule and denoiser sizes. `label_dropout` is the share of training images shown as NO_LABEL."""

    timesteps: int = 200
    hidden: int = 256
    blocks: int = 3
    time_dim: int = 64
    label_dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("timesteps", "hidden", "blocks", "time_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.time_dim % 2:
            raise ValueError(f"time_dim must be even, got {self.time_dim}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1), got {self.label_dropout!r}")


def cosine_alpha_bar(timesteps: int, s: float = 0.008) -> Tensor:
    """ᾱ_t for t = 1..T of the cosine schedule (Nichol & Dhariwal, 2021), each β_t = 1 - ᾱ_t/ᾱ_{t-1} capped at 0.999."""
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0).float()


def _time_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of integer time steps, as the Transformer's position encoding."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class _Block(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.cond = nn.Linear(hidden, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.SiLU(), nn.Linear(2 * hidden, hidden))

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        return h + self.mlp(self.norm(h) + self.cond(c))


class DiffusionDenoiser(nn.Module):
    """ε_θ(x_t, t, y): predicts the noise in a noised image (B, 64) given the step t (B,) and label y (B,)."""

    def __init__(self, cfg: DDPMConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or DDPMConfig()
        h = self.cfg.hidden
        self.inp = nn.Linear(N_PIXELS, h)
        self.time = nn.Sequential(nn.Linear(self.cfg.time_dim, h), nn.SiLU(), nn.Linear(h, h))
        self.label = nn.Embedding(N_CLASSES + 1, h)
        self.blocks = nn.ModuleList(_Block(h) for _ in range(self.cfg.blocks))
        self.out = nn.Sequential(nn.LayerNorm(h), nn.SiLU(), nn.Linear(h, N_PIXELS))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.register_buffer("alpha_bar", cosine_alpha_bar(self.cfg.timesteps), persistent=False)

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        c = self.time(_time_embedding(t, self.cfg.time_dim)) + self.label(y)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, c)
        return self.out(h)


def _to_model(x: Tensor) -> Tensor:
    return x.flatten(1) / (DIGITS_MAX_VALUE / 2) - 1


def _to_pixels(x: Tensor) -> Tensor:
    return ((x.clamp(-1, 1) + 1) * (DIGITS_MAX_VALUE / 2)).view(-1, DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE)


def diffusion_loss(model: DiffusionDenoiser, x0: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
    """Mean squared error of the predicted noise at a uniformly drawn step (the "simple" loss of Ho et al.)."""
    t = torch.randint(0, model.cfg.timesteps, (len(x0),), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    ab = model.alpha_bar[t][:, None]
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    return F.mse_loss(model(xt, t, y), noise)


@dataclass
class DDPMHistory:
    """Mean training loss per epoch, and the validation loss (same noise every epoch) when a validation set is given."""

    epochs: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)


@torch.no_grad()
def evaluate_ddpm(model: DiffusionDenoiser, images, labels, draws: int = 4, seed: int = 0) -> float:
    """The training loss on raw 0..16 images, averaged over `draws` fixed (step, noise) draws per image."""
    x0 = _to_model(_images(images))
    y = _labels(labels, len(x0))
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    return float(torch.stack([diffusion_loss(model, x0, y, gen) for _ in range(draws)]).mean())


def train_ddpm(images, labels, epochs: int, cfg: DDPMConfig | None = None, batch_size: int = 128, lr: float = 2e-3,
               ema_decay: float = 0.995, val: tuple | None = None, seed: int = 0,
               progress: bool = False) -> tuple[DiffusionDenoiser, DDPMHistory]:
    """Train a DiffusionDenoiser on raw 0..16 images with AdamW and a cosine learning-rate decay; the returned model
    holds the exponential moving average of the weights (decay `ema_decay` per step), which samples better."""
    x0 = _to_model(_images(images))
    y = _labels(labels, len(x0))
    if not isinstance(epochs, int) or epochs <= 0:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay!r}")
    torch.manual_seed(seed)
    model = DiffusionDenoiser(cfg)
    ema = copy.deepcopy(model).requires_grad_(False)
    per_epoch = math.ceil(len(x0) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * per_epoch)
    gen = torch.Generator().manual_seed(seed)
    history = DDPMHistory()
    steps = range(1, epochs + 1)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc="DDPM")
    for epoch in steps:
        model.train()
        order = torch.randperm(len(x0), generator=gen)
        total = 0.0
        for start in range(0, len(x0), batch_size):
            idx = order[start:start + batch_size]
            yb = y[idx].clone()
            yb[torch.rand(len(idx), generator=gen) < model.cfg.label_dropout] = NO_LABEL
            loss = diffusion_loss(model, x0[idx], yb, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - ema_decay)
            total += loss.item() * len(idx)
        history.epochs.append(epoch)
        history.train_loss.append(total / len(x0))
        if val is not None:
            history.val_loss.append(evaluate_ddpm(ema, *val, seed=seed))
    ema.eval()
    return ema, history


def _reverse_step(model: DiffusionDenoiser, x: Tensor, t: int, y: Tensor, gen: torch.Generator) -> Tensor:
    """One ancestral step x_t -> x_{t-1}: the posterior q(x_{t-1} | x_t, x̂_0) with x̂_0 clipped to [-1, 1]."""
    ab = model.alpha_bar[t]
    ab_prev = model.alpha_bar[t - 1] if t > 0 else torch.tensor(1.0)
    beta = 1 - ab / ab_prev
    eps = model(x, torch.full((len(x),), t, dtype=torch.long), y)
    x0_hat = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
    mean = (ab_prev.sqrt() * beta / (1 - ab)) * x0_hat + ((1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)) * x
    if t == 0:
        return mean
    var = beta * (1 - ab_prev) / (1 - ab)
    return mean + var.sqrt() * torch.randn(x.shape, generator=gen)


def _sample_labels(labels, n: int) -> Tensor:
    if labels is None:
        return torch.full((n,), NO_LABEL, dtype=torch.long)
    y = torch.as_tensor(labels).long()
    return _labels(y, len(y))


@torch.no_grad()
def ddpm_sample(model: DiffusionDenoiser, labels=None, n: int | None = None, seed: int = 0) -> Tensor:
    """Generated digits (N, 8, 8) on 0..16 by ancestral sampling from pure noise: one per requested label, or `n`
    unconditional samples when labels is None."""
    if labels is None and (not isinstance(n, int) or n <= 0):
        raise ValueError("give labels, or a positive n for unconditional samples")
    y = _sample_labels(labels, n or 0)
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    x = torch.randn(len(y), N_PIXELS, generator=gen)
    for t in reversed(range(model.cfg.timesteps)):
        x = _reverse_step(model, x, t, y, gen)
    return _to_pixels(x)


@torch.no_grad()
def ddpm_inpaint(model: DiffusionDenoiser, images, keep, resample: int = 5, labels=None, seed: int = 0) -> Tensor:
    """RePaint: fill the hidden pixels (keep False) of raw 0..16 images with a sample that agrees with the kept ones.
    At each reverse step the kept pixels are the original noised to that step; each step is repeated `resample`
    times, going one step back up in noise in between. labels=None repairs without being told the digit."""
    x_img = _images(images)
    keep = _mask(keep, x_img)
    if not isinstance(resample, int) or resample <= 0:
        raise ValueError(f"resample must be a positive int, got {resample!r}")
    n = len(x_img)
    y = _sample_labels(labels, n)
    if len(y) != n:
        raise ValueError(f"labels must be ({n},), got ({len(y)},)")
    x0 = _to_model(x_img)
    k = keep.flatten(1).float()
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    ab = model.alpha_bar
    x = torch.randn(n, N_PIXELS, generator=gen)
    for t in reversed(range(model.cfg.timesteps)):
        for u in range(resample):
            if t > 0:
                known = ab[t - 1].sqrt() * x0 + (1 - ab[t - 1]).sqrt() * torch.randn(x0.shape, generator=gen)
            else:
                known = x0
            unknown = _reverse_step(model, x, t, y, gen)
            x_prev = k * known + (1 - k) * unknown
            if u < resample - 1 and t > 0:
                beta = 1 - ab[t] / ab[t - 1]
                x = (1 - beta).sqrt() * x_prev + beta.sqrt() * torch.randn(x_prev.shape, generator=gen)
        x = x_prev
    return torch.where(keep, x_img, _to_pixels(x))
