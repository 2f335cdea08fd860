"""Small classic models for chapter 2: an MLP, a CNN, an RNN classifier and skip-gram word2vec.

Every model returns `transformer.ModelOutput` (``logits``, and ``loss`` when labels are given), so it
trains with `training.Trainer` like the Transformers of later chapters.

* `RNNClassifier` packs the padded batch (`pack_padded_sequence`), so padding never enters the
  recurrence; the sentence representation is the hidden state after the **last real token**
  (for a bidirectional RNN, the last forward state concatenated with the first backward state).
* `SkipGram` is word2vec's skip-gram with negative sampling (Mikolov et al. 2013):
  loss = -log σ(u_o·v_c) - Σ_k log σ(-u_k·v_c), negatives drawn from the unigram distribution
  raised to the power 0.75 (`NegativeSampler`).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .transformer import ModelOutput, check_token_ids, classification_loss

__all__ = [
    "MLPClassifier",
    "SmallCNN",
    "RNNClassifier",
    "SkipGram",
    "NegativeSampler",
    "SkipGramCollator",
    "accuracy_metrics",
    "build_vocab",
    "nearest_neighbours",
    "skipgram_pairs",
    "subsample_frequent",
]


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def accuracy_metrics(logits: Tensor, labels: Tensor | None) -> dict[str, float]:
    """{'accuracy': share of argmax(logits) equal to labels}; a `metrics_fn` for `Trainer`."""
    if labels is None:
        raise ValueError("accuracy needs labels")
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"need logits (B, C) and labels (B,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    return {"accuracy": (logits.argmax(-1) == labels).float().mean().item()}


# ------------------------------------------------------------------ images


class MLPClassifier(nn.Module):
    """Flatten → Linear → ReLU → Dropout → Linear; one hidden layer."""

    def __init__(self, in_features: int = 64, hidden: int = 128, num_classes: int = 10, dropout: float = 0.1) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("hidden", hidden), ("num_classes", num_classes)):
            _check_positive_int(name, value)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_features = in_features
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def forward(self, pixel_values: Tensor, labels: Tensor | None = None) -> ModelOutput:
        """Logits (B, num_classes) for inputs (B, ...) with in_features values per example."""
        if not torch.is_floating_point(pixel_values):
            raise ValueError(f"pixel_values must be a float tensor, got {pixel_values.dtype}")
        x = pixel_values.reshape(pixel_values.shape[0], -1) if pixel_values.dim() > 1 else pixel_values
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"pixel_values must be (B, ...) with {self.in_features} values per example, "
                f"got {tuple(pixel_values.shape)}"
            )
        logits = self.net(x)
        return ModelOutput(logits=logits, loss=classification_loss(logits, labels))


class SmallCNN(nn.Module):
    """For 1×8×8 images: [conv3×3 → ReLU → maxpool2] × 2 → flatten → linear (8×8 → 4×4 → 2×2)."""

    def __init__(self, num_classes: int = 10, channels: Sequence[int] = (16, 32), image_size: int = 8) -> None:
        super().__init__()
        _check_positive_int("num_classes", num_classes)
        channels = tuple(channels)
        if not channels or any(not isinstance(c, int) or c <= 0 for c in channels):
            raise ValueError(f"channels must be positive ints, got {channels!r}")
        if image_size % (2 ** len(channels)):
            raise ValueError(f"image_size {image_size} must be divisible by 2**len(channels) = {2 ** len(channels)}")
        self.image_size = image_size
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** len(channels)
        self.classifier = nn.Linear(c_in * side * side, num_classes)

    def forward(self, pixel_values: Tensor, labels: Tensor | None = None) -> ModelOutput:
        """Logits (B, num_classes) for images (B, 1, S, S), (B, S, S) or flattened (B, S*S)."""
        if not torch.is_floating_point(pixel_values):
            raise ValueError(f"pixel_values must be a float tensor, got {pixel_values.dtype}")
        s = self.image_size
        if pixel_values.dim() < 2 or pixel_values[0].numel() != s * s:
            raise ValueError(f"pixel_values must hold {s}×{s} single-channel images, got {tuple(pixel_values.shape)}")
        x = pixel_values.reshape(-1, 1, s, s)
        logits = self.classifier(self.features(x).flatten(1))
        return ModelOutput(logits=logits, loss=classification_loss(logits, labels))


# ------------------------------------------------------------------ sequences


class RNNClassifier(nn.Module):
    """Embedding → LSTM/GRU/RNN (packed, so padding is skipped) → last real token's state → linear."""

    CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}

    def __init__(self, vocab_size: int, d: int = 64, hidden: int = 128, num_classes: int = 2, cell: str = "lstm",
                 pad_id: int = 0, num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.1) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("d", d), ("hidden", hidden),
                            ("num_classes", num_classes), ("num_layers", num_layers)):
            _check_positive_int(name, value)
        if cell not in self.CELLS:
            raise ValueError(f"unknown cell {cell!r}; expected one of {sorted(self.CELLS)}")
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id must be in [0, {vocab_size}), got {pad_id}")
        self.vocab_size, self.pad_id, self.cell = vocab_size, pad_id, cell
        self.embed = nn.Embedding(vocab_size, d, padding_idx=pad_id)
        self.rnn = self.CELLS[cell](d, hidden, num_layers=num_layers, batch_first=True, bidirectional=bidirectional,
                                    dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        """Logits (B, num_classes); `last_hidden_state` (B, L, H) is zero at padded positions.

        Padding must be on the right: the mask (or ``input_ids != pad_id``) is 1…1 0…0 per row.
        """
        check_token_ids(input_ids, self.vocab_size)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got {tuple(input_ids.shape)}")
        b, length = input_ids.shape
        mask = (input_ids != self.pad_id) if attention_mask is None else attention_mask.bool()
        if mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must have shape {tuple(input_ids.shape)}, got {tuple(mask.shape)}")
        lengths = mask.sum(1)
        if (lengths == 0).any():
            raise ValueError("every sequence needs at least one real token; "
                             f"empty rows: {(lengths == 0).nonzero().flatten().tolist()}")
        if not torch.equal(mask, torch.arange(length, device=mask.device) < lengths.unsqueeze(1)):
            raise ValueError("padding must be on the right: each attention_mask row must be 1…1 followed by 0…0")
        packed = pack_padded_sequence(self.embed(input_ids), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, h = self.rnn(packed)
        h_n = h[0] if isinstance(h, tuple) else h  # LSTM returns (h_n, c_n)
        if self.rnn.bidirectional:
            last = torch.cat([h_n[-2], h_n[-1]], dim=-1)  # forward after the last token, backward after the first
        else:
            last = h_n[-1]  # the top layer's state after each sequence's last real token
        hidden, _ = pad_packed_sequence(out, batch_first=True, total_length=length)
        logits = self.classifier(self.drop(last))
        return ModelOutput(last_hidden_state=hidden, pooled=last, logits=logits,
                           loss=classification_loss(logits, labels))


# ------------------------------------------------------------------ word2vec


def build_vocab(sentences: Iterable[Sequence[str]], min_count: int = 1,
                max_size: int | None = None) -> tuple[list[str], list[int]]:
    """Words with count >= min_count by falling count (ties alphabetical), and their counts."""
    _check_positive_int("min_count", min_count)
    if max_size is not None:
        _check_positive_int("max_size", max_size)
    counts: Counter[str] = Counter()
    for sentence in sentences:
        if isinstance(sentence, str):
            raise ValueError("each sentence must be a list of words, not a str")
        counts.update(sentence)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    if max_size is not None:
        words = words[:max_size]
    if not words:
        raise ValueError(f"no word occurs at least min_count={min_count} times")
    return words, [counts[w] for w in words]


def subsample_frequent(sentences: Sequence[Sequence[int]], counts: Sequence[int], t: float = 1e-4,
                       seed: int = 0) -> list[list[int]]:
    """Word2vec subsampling: drop each occurrence of w with probability 1 - sqrt(t / f(w)), f = relative frequency."""
    if not t > 0:
        raise ValueError(f"t must be positive, got {t}")
    total = float(sum(counts))
    if total <= 0:
        raise ValueError("counts must sum to a positive number")
    keep = [min(1.0, math.sqrt(t / (c / total))) if c > 0 else 1.0 for c in counts]
    rng = random.Random(seed)
    return [[w for w in s if rng.random() < keep[w]] for s in sentences]


def skipgram_pairs(sentences: Iterable[Sequence[int]], window: int = 2) -> Tensor:
    """All (center, context) id pairs with 0 < |i - j| <= window inside each sentence, as a (N, 2) long tensor."""
    _check_positive_int("window", window)
    centers: list[int] = []
    contexts: list[int] = []
    for sentence in sentences:
        if isinstance(sentence, (str, Tensor)):
            raise ValueError("each sentence must be a list of int ids")
        n = len(sentence)
        for i, c in enumerate(sentence):
            for j in range(max(0, i - window), min(n, i + window + 1)):
                if j != i:
                    centers.append(c)
                    contexts.append(sentence[j])
    if not centers:
        raise ValueError("no pairs: every sentence is shorter than 2 words")
    return torch.tensor([centers, contexts], dtype=torch.long).T.contiguous()


class NegativeSampler:
    """Draw word ids with probability ∝ count ** power (word2vec uses power = 0.75)."""

    def __init__(self, counts: Sequence[int], power: float = 0.75) -> None:
        c = torch.as_tensor(list(counts), dtype=torch.float64)
        if c.dim() != 1 or c.numel() == 0:
            raise ValueError("counts must be a non-empty 1-D sequence")
        if (c < 0).any() or c.sum() <= 0:
            raise ValueError("counts must be non-negative with a positive sum")
        weights = c.pow(power)
        self.probs = (weights / weights.sum()).float()

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        """Long tensor of the given shape with ids drawn independently, with replacement."""
        n = math.prod(shape)
        if n == 0:
            return torch.empty(shape, dtype=torch.long)
        return torch.multinomial(self.probs, n, replacement=True, generator=generator).reshape(shape)


class SkipGramCollator:
    """collate_fn for (center, context) rows (a list of rows or one (B, 2) tensor): {center, context, negatives (B, k)}.

    For speed, feed whole batches: ``DataLoader(pairs, batch_size=None, sampler=BatchSampler(...))``.
    """

    def __init__(self, sampler: NegativeSampler, k: int = 5, seed: int = 0) -> None:
        _check_positive_int("k", k)
        self.sampler, self.k = sampler, k
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, rows: Sequence[Tensor]) -> dict[str, Tensor]:
        pairs = rows if isinstance(rows, Tensor) else torch.stack(list(rows))
        if pairs.dim() != 2 or pairs.shape[1] != 2:
            raise ValueError(f"expected (center, context) rows of shape (B, 2), got {tuple(pairs.shape)}")
        return {"center": pairs[:, 0], "context": pairs[:, 1],
                "negatives": self.sampler.sample((len(pairs), self.k), self.generator)}


class SkipGram(nn.Module):
    """Skip-gram with negative sampling: input vectors v (the embeddings we keep) and output vectors u."""

    def __init__(self, vocab_size: int, dim: int = 100) -> None:
        super().__init__()
        _check_positive_int("vocab_size", vocab_size)
        _check_positive_int("dim", dim)
        self.vocab_size = vocab_size
        self.in_embed = nn.Embedding(vocab_size, dim)
        self.out_embed = nn.Embedding(vocab_size, dim)
        nn.init.uniform_(self.in_embed.weight, -0.5 / dim, 0.5 / dim)  # word2vec's initialisation
        nn.init.zeros_(self.out_embed.weight)

    @property
    def embeddings(self) -> Tensor:
        """The learned word vectors (vocab_size, dim), detached."""
        return self.in_embed.weight.detach()

    def loss(self, center: Tensor, context: Tensor, negatives: Tensor) -> Tensor:
        """Mean over the batch of -log σ(u_o·v_c) - Σ_k log σ(-u_k·v_c)."""
        for name, ids in (("center", center), ("context", context), ("negatives", negatives)):
            if not isinstance(ids, Tensor) or ids.dtype not in (torch.long, torch.int32, torch.int64):
                raise ValueError(f"{name} must be an integer tensor of word ids, "
                                 f"got {getattr(ids, 'dtype', type(ids))}")
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
                raise ValueError(f"{name} ids must lie in [0, {self.vocab_size}), "
                                 f"got min={int(ids.min())}, max={int(ids.max())}")
        if center.dim() != 1 or context.shape != center.shape:
            raise ValueError(f"center and context must be (B,), got {tuple(center.shape)} and {tuple(context.shape)}")
        if negatives.dim() != 2 or negatives.shape[0] != center.shape[0]:
            raise ValueError(f"negatives must be (B, k) with B={center.shape[0]}, got {tuple(negatives.shape)}")
        v = self.in_embed(center)  # (B, D)
        pos = (self.out_embed(context) * v).sum(-1)  # (B,)
        neg = torch.bmm(self.out_embed(negatives), v.unsqueeze(-1)).squeeze(-1)  # (B, k)
        return -(F.logsigmoid(pos) + F.logsigmoid(-neg).sum(-1)).mean()

    def forward(self, center: Tensor, context: Tensor, negatives: Tensor) -> ModelOutput:
        """ModelOutput with the loss, so `Trainer` can train it."""
        return ModelOutput(loss=self.loss(center, context, negatives))


def nearest_neighbours(embeddings: Tensor, idx: int, k: int = 5) -> list[tuple[int, float]]:
    """The k rows most cosine-similar to row idx (itself excluded), as (index, cosine), most similar first."""
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 2 or not torch.is_floating_point(embeddings):
        raise ValueError("embeddings must be a 2-D float tensor (vocab, dim)")
    n = embeddings.shape[0]
    if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < n:
        raise ValueError(f"idx must be an int in [0, {n}), got {idx!r}")
    _check_positive_int("k", k)
    if k > n - 1:
        raise ValueError(f"k={k} is more than the {n - 1} other rows")
    unit = F.normalize(embeddings.float(), dim=-1)
    sims = unit @ unit[idx]
    sims[idx] = -float("inf")
    values, indices = sims.topk(k)
    return [(int(i), float(v)) for i, v in zip(indices, values)]
