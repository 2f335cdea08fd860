"""Image generation and repair on the 8×8 digits: a class-conditional VAE, damage masks, inpainting, scoring.

Pixels enter and leave every public function on the raw load_digits scale 0..16; the VAE works on x / 16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.vision import DIGITS_IMAGE_SIZE, DIGITS_MAX_VALUE, normalise_digits

N_PIXELS = DIGITS_IMAGE_SIZE * DIGITS_IMAGE_SIZE
N_CLASSES = 10
MASK_KINDS = ("bottom_half", "block")


def _images(x, name: str = "images") -> Tensor:
    """x as a float32 tensor (N, 8, 8) on the 0..16 scale, else ValueError naming the problem."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, Tensor) else x.detach().float()
    if t.dim() != 3 or tuple(t.shape[1:]) != (DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE):
        raise ValueError(f"{name} must be (N, 8, 8), got {tuple(t.shape)}")
    if len(t) == 0:
        raise ValueError(f"{name} is empty")
    if not torch.isfinite(t).all() or float(t.min()) < 0 or float(t.max()) > DIGITS_MAX_VALUE:
        raise ValueError(f"{name}: pixel values must lie in [0, {DIGITS_MAX_VALUE:g}]")
    return t


def _labels(y, n: int, name: str = "labels") -> Tensor:
    """y as an int64 tensor (n,) of digits 0..9, else ValueError."""
    t = torch.as_tensor(np.asarray(y)).long() if not isinstance(y, Tensor) else y.detach().long()
    if t.dim() != 1 or len(t) != n:
        raise ValueError(f"{name} must be ({n},), got {tuple(t.shape)}")
    if n and (int(t.min()) < 0 or int(t.max()) >= N_CLASSES):
        raise ValueError(f"{name} must be digits 0..{N_CLASSES - 1}")
    return t


@dataclass(frozen=True)
class CVAEConfig:
    """Sizes of the conditional VAE: MLP encoder and decoder, Gaussian latent, Bernoulli-style pixel likelihood."""

    latent_dim: int = 8
    hidden: int = 256

    def __post_init__(self) -> None:
        for name in ("latent_dim", "hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


class ConditionalVAE(nn.Module):
    """q(z | x, y) and p(x | z, y) as two MLPs; y enters both as a one-hot vector (Kingma et al., Sohn et al.)."""

    def __init__(self, cfg: CVAEConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or CVAEConfig()
        h = cfg.hidden
        self.encoder = nn.Sequential(nn.Linear(N_PIXELS + N_CLASSES, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                                     nn.Linear(h, 2 * cfg.latent_dim))
        self.decoder = nn.Sequential(nn.Linear(cfg.latent_dim + N_CLASSES, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                                     nn.Linear(h, N_PIXELS))

    def encode(self, x01: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z | x, y) for flat images x01 (B, 64) in [0, 1]."""
        mu, logvar = self.encoder(torch.cat([x01, F.one_hot(y, N_CLASSES).float()], 1)).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)

    def decode_logits(self, z: Tensor, y: Tensor) -> Tensor:
        """Pixel logits (B, 64) of p(x | z, y)."""
        return self.decoder(torch.cat([z, F.one_hot(y, N_CLASSES).float()], 1))

    def forward(self, x01: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Reconstruction logits, mu and logvar for one reparameterised draw of z."""
        mu, logvar = self.encode(x01, y)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decode_logits(z, y), mu, logvar


def vae_loss(logits: Tensor, x01: Tensor, mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image reconstruction term (binary cross-entropy summed over pixels) and KL(q || N(0, I)), batch means."""
    recon = F.binary_cross_entropy_with_logits(logits, x01, reduction="none").sum(1).mean()
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()
    return recon, kl


@dataclass
class CVAEHistory:
    """Per-epoch mean losses (train, and validation when given) and image grids sampled at chosen epochs."""

    epochs: list[int] = field(default_factory=list)
    train_recon: list[float] = field(default_factory=list)
    train_kl: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    snapshots: dict[int, Tensor] = field(default_factory=dict)  # epoch -> (10 * per_class, 8, 8) on 0..16

    @property
    def train_loss(self) -> list[float]:
        """Negative ELBO per epoch (reconstruction + KL)."""
        return [r + k for r, k in zip(self.train_recon, self.train_kl)]


@torch.no_grad()
def evaluate_vae(model: ConditionalVAE, images, labels, seed: int = 0) -> float:
    """Mean negative ELBO (one z draw per image, fixed seed) of raw 0..16 images under the model."""
    x = _images(images).flatten(1) / DIGITS_MAX_VALUE
    y = _labels(labels, len(x))
    model.eval()
    mu, logvar = model.encode(x, y)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(seed))
    logits = model.decode_logits(mu + eps * (0.5 * logvar).exp(), y)
    recon, kl = vae_loss(logits, x, mu, logvar)
    return float(recon + kl)


def train_cvae(images, labels, epochs: int, cfg: CVAEConfig | None = None, batch_size: int = 64, lr: float = 2e-3,
               val: tuple | None = None, snapshot_epochs: tuple[int, ...] = (), per_class: int = 8,
               seed: int = 0, progress: bool = False) -> tuple[ConditionalVAE, CVAEHistory]:
    """Train a ConditionalVAE on raw 0..16 images with Adam; record losses per epoch and fixed-noise samples."""
    x = _images(images).flatten(1) / DIGITS_MAX_VALUE
    y = _labels(labels, len(x))
    if not isinstance(epochs, int) or epochs <= 0:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    bad = [e for e in snapshot_epochs if not 0 <= e <= epochs]
    if bad:
        raise ValueError(f"snapshot_epochs must lie in [0, {epochs}], got {bad}")
    torch.manual_seed(seed)
    model = ConditionalVAE(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(N_CLASSES * per_class, model.cfg.latent_dim, generator=torch.Generator().manual_seed(seed + 1))
    history = CVAEHistory()
    if 0 in snapshot_epochs:
        history.snapshots[0] = sample_images(model, grid_labels(per_class), z=noise)
    steps = range(1, epochs + 1)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc="CVAE")
    for epoch in steps:
        model.train()
        order = torch.randperm(len(x), generator=gen)
        sums, n = [0.0, 0.0], 0
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            logits, mu, logvar = model(x[idx], y[idx])
            recon, kl = vae_loss(logits, x[idx], mu, logvar)
            opt.zero_grad(set_to_none=True)
            (recon + kl).backward()
            opt.step()
            sums[0] += recon.item() * len(idx)
            sums[1] += kl.item() * len(idx)
            n += len(idx)
        history.epochs.append(epoch)
        history.train_recon.append(sums[0] / n)
        history.train_kl.append(sums[1] / n)
        if val is not None:
            history.val_loss.append(evaluate_vae(model, *val, seed=seed))
        if epoch in snapshot_epochs:
            history.snapshots[epoch] = sample_images(model, grid_labels(per_class), z=noise)
    model.eval()
    return model, history


def grid_labels(per_class: int) -> Tensor:
    """Labels 0,0,…,1,1,…,9 with `per_class` of each digit (a 10 × per_class sample grid, one row per digit)."""
    if not isinstance(per_class, int) or per_class <= 0:
        raise ValueError(f"per_class must be a positive int, got {per_class!r}")
    return torch.arange(N_CLASSES).repeat_interleave(per_class)


@torch.no_grad()
def sample_images(model: ConditionalVAE, labels, z: Tensor | None = None, seed: int = 0) -> Tensor:
    """Generated digits (N, 8, 8) on 0..16: decoder means for z ~ N(0, I) (or the given z), one per requested label."""
    y = torch.as_tensor(labels).long()
    y = _labels(y, len(y))
    if z is None:
        z = torch.randn(len(y), model.cfg.latent_dim, generator=torch.Generator().manual_seed(seed))
    if tuple(z.shape) != (len(y), model.cfg.latent_dim):
        raise ValueError(f"z must be ({len(y)}, {model.cfg.latent_dim}), got {tuple(z.shape)}")
    was_training = model.training
    model.eval()
    out = torch.sigmoid(model.decode_logits(z, y)) * DIGITS_MAX_VALUE
    model.train(was_training)
    return out.view(-1, DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE)


def damage_mask(n: int, kind: str, block: int = 3, seed: int = 0) -> Tensor:
    """Boolean (n, 8, 8) mask, True where a pixel is kept: 'bottom_half' hides rows 4–7,
    'block' hides one block × block square at a uniformly random position per image."""
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")
    keep = torch.ones(n, DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE, dtype=torch.bool)
    if kind == "bottom_half":
        keep[:, DIGITS_IMAGE_SIZE // 2:] = False
        return keep
    if not isinstance(block, int) or not 1 <= block < DIGITS_IMAGE_SIZE:
        raise ValueError(f"block must be an int in [1, {DIGITS_IMAGE_SIZE - 1}], got {block!r}")
    corners = torch.randint(0, DIGITS_IMAGE_SIZE - block + 1, (n, 2), generator=torch.Generator().manual_seed(seed))
    for i, (r, c) in enumerate(corners.tolist()):
        keep[i, r:r + block, c:c + block] = False
    return keep


def _mask(keep, images: Tensor) -> Tensor:
    """keep as a bool tensor shaped like images, with at least one hidden pixel per image."""
    keep = torch.as_tensor(keep)
    if keep.dtype != torch.bool or keep.shape != images.shape:
        raise ValueError(f"keep must be a bool tensor of shape {tuple(images.shape)}, "
                         f"got {keep.dtype} {tuple(keep.shape)}")
    return keep


def mean_fill(images, keep, mean_image) -> Tensor:
    """Baseline repair: hidden pixels replaced by the per-pixel mean image (e.g. of the training set)."""
    x = _images(images)
    keep = _mask(keep, x)
    m = torch.as_tensor(np.asarray(mean_image, dtype=np.float32))
    if tuple(m.shape) != (DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE):
        raise ValueError(f"mean_image must be (8, 8), got {tuple(m.shape)}")
    return torch.where(keep, x, m.expand_as(x))


@dataclass
class InpaintResult:
    """Repaired images (N, 8, 8) on 0..16, the digit chosen for each and the objective of every candidate digit."""

    images: Tensor
    labels: Tensor
    objective: Tensor  # (N, 10): negative log-likelihood of the kept pixels + 0.5 |z|², lower is better


def inpaint(model: ConditionalVAE, images, keep, steps: int = 150, lr: float = 0.05,
            labels=None) -> InpaintResult:
    """Fill hidden pixels with the VAE: for every candidate digit, find the MAP latent z of the kept pixels
    (start at the encoder mean of the image with hidden pixels zeroed, then Adam on -log p(x_kept | z, y) - log p(z)),
    pick the digit with the lowest objective, and copy its decoded pixels into the hidden region only."""
    x = _images(images)
    keep = _mask(keep, x)
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    n = len(x)
    candidates = (torch.arange(N_CLASSES).repeat(n) if labels is None
                  else _labels(labels, n))  # image-major: image i, digits 0..9
    k = N_CLASSES if labels is None else 1
    x01 = (x.flatten(1) / DIGITS_MAX_VALUE).repeat_interleave(k, 0)
    w = keep.flatten(1).float().repeat_interleave(k, 0)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            z0, _ = model.encode(x01 * w, candidates)
        z = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)

        def objective() -> Tensor:
            nll = F.binary_cross_entropy_with_logits(model.decode_logits(z, candidates), x01, reduction="none")
            return (nll * w).sum(1) + 0.5 * z.pow(2).sum(1)

        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            objective().sum().backward()
            opt.step()
        with torch.no_grad():
            obj = objective().view(n, k)
            best = obj.argmin(1)
            rows = torch.arange(n) * k + best
            decoded = torch.sigmoid(model.decode_logits(z[rows], candidates[rows])) * DIGITS_MAX_VALUE
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    filled = torch.where(keep, x, decoded.view_as(x))
    return InpaintResult(images=filled, labels=candidates[rows], objective=obj)


def hidden_error(repaired, original, keep) -> dict[str, float]:
    """Mean absolute and root-mean-square error (0..16 scale) over the hidden pixels only."""
    a, b = _images(repaired, "repaired"), _images(original, "original")
    if a.shape != b.shape:
        raise ValueError(f"repaired {tuple(a.shape)} and original {tuple(b.shape)} differ in shape")
    hidden = ~_mask(keep, a)
    if not hidden.any():
        raise ValueError("keep hides no pixel")
    d = (a - b)[hidden]
    return {"mae": float(d.abs().mean()), "rmse": math.sqrt(float(d.pow(2).mean()))}


@torch.no_grad()
def digit_probabilities(classifier: nn.Module, images, mean: float, std: float, batch_size: int = 256) -> Tensor:
    """Class probabilities (N, 10) a digit classifier gives raw 0..16 images; it takes pixel_values (B, 1, 8, 8)
    normalised with the training mean and std."""
    x = _images(images)
    classifier.eval()
    probs = []
    for start in range(0, len(x), batch_size):
        pv = normalise_digits(x[start:start + batch_size, None], mean, std)
        probs.append(torch.softmax(classifier(pixel_values=pv).logits.float(), -1))
    return torch.cat(probs)


def digit_scores(classifier: nn.Module, images, requested, mean: float, std: float,
                 batch_size: int = 256) -> dict[str, float]:
    """How a digit classifier sees images: fraction classified as the requested digit, mean probability it gives
    the requested digit, and mean top-class confidence."""
    x = _images(images)
    y = _labels(requested, len(x), "requested")
    p = digit_probabilities(classifier, x, mean, std, batch_size)
    return {"accuracy": float((p.argmax(1) == y).float().mean()),
            "p_requested": float(p[torch.arange(len(y)), y].mean()),
            "confidence": float(p.max(1).values.mean())}


def mean_pairwise_distance(images) -> float:
    """Mean Euclidean distance (0..16 scale) between all pairs of images: a simple diversity measure."""
    x = _images(images).flatten(1)
    if len(x) < 2:
        raise ValueError("need at least two images")
    d = torch.cdist(x, x)
    n = len(x)
    return float(d.sum() / (n * (n - 1)))


def within_class_diversity(images, labels) -> float:
    """Mean over the digits 0–9 of `mean_pairwise_distance` among the images of that digit (0..16 scale)."""
    x, y = _images(images), torch.as_tensor(np.asarray(labels))
    if len(y) != len(x):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    missing = [d for d in range(N_CLASSES) if int((y == d).sum()) < 2]
    if missing:
        raise ValueError(f"need at least two images of every digit, too few of {missing}")
    return float(np.mean([mean_pairwise_distance(x[y == d]) for d in range(N_CLASSES)]))


def nearest_train_distance(images, train_images) -> float:
    """Median over `images` of the Euclidean distance (0..16 scale) to the closest of `train_images`: small values
    mean the generator copies its training set."""
    x, train = _images(images).flatten(1), _images(train_images, "train_images").flatten(1)
    # the direct formula: the matrix-product shortcut cdist takes for large inputs is off by ~0.05 for exact copies
    return float(torch.cdist(x, train, compute_mode="donot_use_mm_for_euclid_dist").min(1).values.median())
