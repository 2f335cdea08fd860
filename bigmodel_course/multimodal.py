"""A small CLIP-style model: digit images and Chinese number captions in one embedding space.

The image side is a small CNN, the text side a character-level Transformer encoder (mean-pooled); both end in a
linear projection and L2 normalisation. Training uses the symmetric InfoNCE loss with a learnable temperature;
zero-shot classification picks the class whose embedded caption(s) are most cosine-similar to the image.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm  # plain text bars: tqdm.auto warns in Jupyter without ipywidgets

from .tokenization import CharTokenizer
from .transformer import EncoderConfig, TransformerEncoder, mean_pool

NUMBER_WORDS = tuple("零一二三四五六七八九")
# captions seen during training, and captions kept back for testing (same characters, new strings)
TRAIN_TEMPLATES = ("{}", "数字{}", "这是{}", "一张手写的{}", "图片里的数字是{}")
HELDOUT_TEMPLATES = ("这是数字{}", "手写的{}", "图片里是{}")


@dataclass
class ClipConfig:
    """Sizes of the image encoder, the text encoder and the shared embedding space."""

    vocab_size: int
    image_size: tuple[int, int] = (8, 8)
    embed_dim: int = 64
    channels: int = 32
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_text_len: int = 16
    dropout: float = 0.1
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0

    def __post_init__(self) -> None:
        self.image_size = tuple(int(s) for s in self.image_size)
        if len(self.image_size) != 2 or min(self.image_size) < 4 or any(s % 2 for s in self.image_size):
            raise ValueError(f"image_size must be (H, W) with even sides >= 4, got {self.image_size}")
        for name in ("vocab_size", "embed_dim", "channels", "text_width", "text_layers", "text_heads", "max_text_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 < self.init_temperature < 1.0:
            raise ValueError(f"init_temperature must be in (0, 1), got {self.init_temperature}")

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


class ImageEncoder(nn.Module):
    """Three 3x3 convolutions (one 2x2 max-pool) and a linear projection of the flattened feature map."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        c, (h, w) = cfg.channels, cfg.image_size
        self.image_size = cfg.image_size
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
        )
        flat = 2 * c * (h // 2) * (w // 2)
        self.proj = nn.Sequential(nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(flat, cfg.embed_dim))

    def forward(self, images: Tensor) -> Tensor:
        """(B, 1, H, W) normalised images -> (B, embed_dim) unnormalised embeddings."""
        if images.dim() != 4 or images.shape[1] != 1 or tuple(images.shape[2:]) != self.image_size:
            raise ValueError(f"images must be (batch, 1, {self.image_size[0]}, {self.image_size[1]}), "
                             f"got {tuple(images.shape)}")
        return self.proj(self.features(images))


class TextEncoder(nn.Module):
    """A bidirectional character Transformer, mean-pooled over real tokens, then a linear projection."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        enc = EncoderConfig(vocab_size=cfg.vocab_size, max_len=cfg.max_text_len, d_model=cfg.text_width,
                            n_heads=cfg.text_heads, n_layers=cfg.text_layers, d_ff=2 * cfg.text_width,
                            dropout=cfg.dropout, attn_dropout=cfg.dropout, type_vocab_size=0)
        self.encoder = TransformerEncoder(enc, add_pooler=False)
        self.proj = nn.Linear(cfg.text_width, cfg.embed_dim)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, T) token ids and mask -> (B, embed_dim) unnormalised embeddings."""
        h = self.encoder(input_ids, attention_mask).last_hidden_state
        return self.proj(mean_pool(h, attention_mask))


class ClipModel(nn.Module):
    """Image and text encoders whose L2-normalised outputs are compared by a learnably scaled dot product."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_encoder = ImageEncoder(cfg)
        self.text_encoder = TextEncoder(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))

    def encode_image(self, images: Tensor) -> Tensor:
        """Unit-length image embeddings (B, embed_dim)."""
        return F.normalize(self.image_encoder(images), dim=-1)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Unit-length text embeddings (B, embed_dim)."""
        return F.normalize(self.text_encoder(input_ids, attention_mask), dim=-1)

    def scale(self) -> Tensor:
        """exp(logit_scale) = 1 / temperature, clamped to max_logit_scale as in CLIP."""
        return self.logit_scale.exp().clamp(max=self.cfg.max_logit_scale)

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Similarity logits (B_images, B_texts) = scale * cosine similarity."""
        return self.scale() * self.encode_image(images) @ self.encode_text(input_ids, attention_mask).T


def clip_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE: mean of image->text and text->image cross-entropy, positives on the diagonal."""
    if image_emb.dim() != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"image and text embeddings must both be (batch, dim) of one shape, got "
                         f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    if image_emb.shape[0] < 1:
        raise ValueError("empty batch")
    logits = logit_scale * image_emb @ text_emb.T
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def caption_tokenizer(words: Sequence[str], templates: Sequence[str]) -> CharTokenizer:
    """A character vocabulary covering every caption template.format(word)."""
    return CharTokenizer.train([t.format(w) for t in _templates(templates) for w in _words(words)])


def _words(words: Sequence[str]) -> list[str]:
    words = list(words)
    if not words or not all(isinstance(w, str) and w for w in words):
        raise ValueError("class words must be a non-empty list of non-empty strings")
    return words


def _templates(templates: Sequence[str]) -> list[str]:
    templates = [templates] if isinstance(templates, str) else list(templates)
    if not templates or not all(isinstance(t, str) and t.count("{}") == 1 for t in templates):
        raise ValueError(f"templates must be strings with exactly one '{{}}', got {templates!r}")
    return templates


def tokenize(tokenizer: CharTokenizer, texts: Sequence[str], max_len: int) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask) of captions, [CLS] text [SEP], padded to the longest."""
    enc = tokenizer.batch_encode(list(texts), max_len=max_len)
    return enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def embed_images(model: ClipModel, images: Tensor, batch_size: int = 512) -> Tensor:
    """Unit-length embeddings of (N, 1, H, W) normalised images, in eval mode."""
    model.eval()
    return torch.cat([model.encode_image(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def embed_texts(model: ClipModel, tokenizer: CharTokenizer, texts: Sequence[str]) -> Tensor:
    """Unit-length embeddings of captions, in eval mode."""
    model.eval()
    return model.encode_text(*tokenize(tokenizer, texts, model.cfg.max_text_len))


def class_embeddings(model: ClipModel, tokenizer: CharTokenizer, words: Sequence[str],
                     templates: Sequence[str]) -> Tensor:
    """(C, D) prompt-ensembled class vectors: the mean of each word's template embeddings, re-normalised."""
    words, templates = _words(words), _templates(templates)
    emb = embed_texts(model, tokenizer, [t.format(w) for w in words for t in templates])
    return F.normalize(emb.view(len(words), len(templates), -1).mean(dim=1), dim=-1)


def zero_shot_predict(image_emb: Tensor, class_emb: Tensor) -> Tensor:
    """Index of the most cosine-similar class vector for every image embedding."""
    if image_emb.dim() != 2 or class_emb.dim() != 2 or image_emb.shape[1] != class_emb.shape[1]:
        raise ValueError(f"need (N, D) image and (C, D) class embeddings, got {tuple(image_emb.shape)} "
                         f"and {tuple(class_emb.shape)}")
    return (image_emb @ class_emb.T).argmax(dim=1)


def top_k_images(text_emb: Tensor, image_emb: Tensor, k: int) -> Tensor:
    """(Q, k) indices of the images most similar to each query text embedding, best first."""
    if text_emb.dim() == 1:
        text_emb = text_emb[None]
    if not 1 <= k <= len(image_emb):
        raise ValueError(f"k must be in [1, {len(image_emb)}], got {k}")
    return (text_emb @ image_emb.T).topk(k, dim=1).indices


def heldout_pairs(shifts: Sequence[int] = (3, 7)) -> list[tuple[int, int]]:
    """Two-digit pairs (a, (a + s) % 10) kept out of training: every digit stays seen in both positions."""
    if not shifts or any(not isinstance(s, int) or not 0 <= s < 10 for s in shifts) or len(set(shifts)) != len(shifts):
        raise ValueError(f"shifts must be distinct ints in [0, 10), got {shifts!r}")
    if len(shifts) > 8:
        raise ValueError("holding out more than 8 shifts leaves some digit unseen in some position")
    return sorted((a, (a + s) % 10) for s in shifts for a in range(10))


def pair_word(pair: tuple[int, int], words: Sequence[str] = NUMBER_WORDS) -> str:
    """The caption word of a two-digit pair, e.g. (3, 7) -> '三七'."""
    a, b = pair
    return words[a] + words[b]


def compose_pairs(images: np.ndarray, labels: np.ndarray, pairs: Sequence[tuple[int, int]], n: int,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images (n, H, 2W): two digits of the pool side by side, their pair drawn uniformly from `pairs`;
    returns the images and the index into `pairs` of each."""
    images, labels = np.asarray(images, dtype=np.float32), np.asarray(labels)
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"need (N, H, W) images and N labels, got {images.shape} and {labels.shape}")
    if not pairs or n < 1:
        raise ValueError("need at least one pair and n >= 1")
    by_digit = {d: np.flatnonzero(labels == d) for d in {x for p in pairs for x in p}}
    missing = sorted(d for d, idx in by_digit.items() if len(idx) == 0)
    if missing:
        raise ValueError(f"no images of digit(s) {missing} in the pool")
    rng = np.random.default_rng(seed)
    which = rng.integers(len(pairs), size=n)
    left = np.array([rng.choice(by_digit[pairs[w][0]]) for w in which])
    right = np.array([rng.choice(by_digit[pairs[w][1]]) for w in which])
    return np.concatenate([images[left], images[right]], axis=2), which


def train_clip(model: ClipModel, tokenizer: CharTokenizer, images: Tensor, labels: Sequence[int],
               words: Sequence[str], templates: Sequence[str], steps: int, batch_size: int = 128,
               lr: float = 3e-3, seed: int = 0, progress: bool = True) -> list[float]:
    """AdamW + one-cycle schedule on the symmetric InfoNCE loss; each step pairs a random batch of images with
    captions template.format(words[label]), a random template each. Returns the loss of every step."""
    words, templates = _words(words), _templates(templates)
    labels = [int(y) for y in labels]
    if len(labels) != len(images) or len(images) < 2:
        raise ValueError(f"need >= 2 images and one label each, got {len(images)} images, {len(labels)} labels")
    if not all(0 <= y < len(words) for y in labels):
        raise ValueError(f"labels must index the {len(words)} class words")
    if steps < 1 or batch_size < 2:
        raise ValueError(f"steps must be >= 1 and batch_size >= 2, got {steps}, {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    rnd = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc="CLIP", disable=not progress):
        idx = torch.randperm(len(images), generator=gen)[: min(batch_size, len(images))]
        x = images[idx]
        texts = [rnd.choice(templates).format(words[labels[i]]) for i in idx.tolist()]
        ids, mask = tokenize(tokenizer, texts, model.cfg.max_text_len)
        loss = clip_loss(model.encode_image(x), model.encode_text(ids, mask), model.scale())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses
