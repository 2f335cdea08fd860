"""Next-item recommendation on synthetic user sequences: a documented generative process, popularity and
first-order Markov baselines, a SASRec-style causal Transformer (our GPT over item ids), HR@k and NDCG@k."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .transformer import GPT, GPTConfig


@dataclass(frozen=True)
class WorldConfig:
    """Parameters of the synthetic shop (see `generate_sequences` for how users move through it)."""

    n_items: int = 300
    n_categories: int = 20
    seq_len: int = 30
    p_related: float = 0.2  # the next item is the fixed "related item" of the previous one
    p_stay: float = 0.2  # otherwise: stay in the previous item's category …
    p_drift: float = 0.05  # per step: the user's taste (category preferences) is redrawn
    concentration: float = 0.2  # Dirichlet concentration of a taste: small = few favourite categories
    zipf: float = 1.0  # item popularity inside a category ∝ 1 / rank**zipf

    def __post_init__(self) -> None:
        for name in ("n_items", "n_categories", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.n_items < 2 * self.n_categories:
            raise ValueError(f"need at least 2 items per category: n_items={self.n_items}, "
                             f"n_categories={self.n_categories}")
        if self.seq_len < 3:
            raise ValueError(f"seq_len must be at least 3 (history, validation, test item), got {self.seq_len}")
        for name in ("p_related", "p_stay", "p_drift"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if self.concentration <= 0 or self.zipf < 0:
            raise ValueError(f"concentration must be positive and zipf non-negative, "
                             f"got {self.concentration}, {self.zipf}")


@dataclass(frozen=True)
class World:
    """The fixed shop: each item's category, its popularity inside the category, and its related item."""

    cfg: WorldConfig
    category: np.ndarray  # (n_items,) int
    popularity: np.ndarray  # (n_items,) float, sums to 1 inside each category
    related: np.ndarray  # (n_items,) int, another item of the same category

    def category_matrix(self) -> np.ndarray:
        """(n_categories, n_items): row c is the item distribution of category c."""
        m = np.zeros((self.cfg.n_categories, self.cfg.n_items))
        m[self.category, np.arange(self.cfg.n_items)] = self.popularity
        return m


def make_world(cfg: WorldConfig, seed: int = 0) -> World:
    """Items dealt round-robin to categories; Zipf popularity in a random order; related items form one cycle
    per category (item → a different item of its category, every item is someone's related item)."""
    rng = np.random.default_rng(seed)
    category = rng.permutation(np.arange(cfg.n_items) % cfg.n_categories)
    popularity = np.zeros(cfg.n_items)
    related = np.zeros(cfg.n_items, dtype=np.int64)
    for c in range(cfg.n_categories):
        items = rng.permutation(np.flatnonzero(category == c))
        weights = 1.0 / np.arange(1, len(items) + 1) ** cfg.zipf
        popularity[items] = weights / weights.sum()
        cycle = rng.permutation(items)
        related[cycle] = np.roll(cycle, -1)
    return World(cfg, category, popularity, related)


@dataclass(frozen=True)
class Sequences:
    """Item sequences (n_users, seq_len) and, for every user, the true distribution of the last item."""

    items: np.ndarray
    last_item_probs: np.ndarray  # (n_users, n_items): the oracle, from the hidden state before the last step


def _step_distribution(world: World, prev: np.ndarray, taste: np.ndarray) -> np.ndarray:
    """(n, n_items) distribution of the next item given the previous items and the current tastes."""
    cfg = world.cfg
    cats = world.category_matrix()
    drifted = (1 - cfg.p_drift) * taste + cfg.p_drift / cfg.n_categories  # E[taste after a possible redraw]
    p = (1 - cfg.p_related) * (cfg.p_stay * cats[world.category[prev]] + (1 - cfg.p_stay) * drifted @ cats)
    p[np.arange(len(prev)), world.related[prev]] += cfg.p_related
    return p


def generate_sequences(world: World, n_users: int, seed: int = 0) -> Sequences:
    """Users of the synthetic shop. Each user draws a taste (category weights) from Dirichlet(concentration) and a
    first item (category from the taste, item by popularity). At every later step: with p_drift the taste is
    redrawn; then with p_related the next item is the previous item's related item, otherwise the category is the
    previous item's (p_stay) or drawn from the taste, and the item is drawn by popularity inside the category."""
    if not isinstance(n_users, int) or n_users <= 0:
        raise ValueError(f"n_users must be a positive int, got {n_users!r}")
    cfg = world.cfg
    rng = np.random.default_rng(seed)
    alpha = np.full(cfg.n_categories, cfg.concentration)
    taste = rng.dirichlet(alpha, size=n_users)
    cats = world.category_matrix()
    items = np.zeros((n_users, cfg.seq_len), dtype=np.int64)

    def draw(probs: np.ndarray) -> np.ndarray:
        u = rng.random((len(probs), 1))
        return np.minimum((probs.cumsum(1) < u).sum(1), probs.shape[1] - 1)

    items[:, 0] = draw(taste @ cats)
    oracle = None
    for t in range(1, cfg.seq_len):
        prev = items[:, t - 1]
        if t == cfg.seq_len - 1:
            oracle = _step_distribution(world, prev, taste)
        redraw = rng.random(n_users) < cfg.p_drift
        if redraw.any():
            taste[redraw] = rng.dirichlet(alpha, size=int(redraw.sum()))
        follow = rng.random(n_users) < cfg.p_related
        stay = rng.random(n_users) < cfg.p_stay
        cat_probs = np.where(stay[:, None], np.eye(cfg.n_categories)[world.category[prev]], taste)
        chosen = draw(cat_probs @ cats)
        items[:, t] = np.where(follow, world.related[prev], chosen)
    return Sequences(items, oracle)


def _sequences(items, min_len: int = 1) -> Tensor:
    """items as an int64 tensor (n_users, length >= min_len), else ValueError."""
    t = torch.as_tensor(np.asarray(items)).long()
    if t.dim() != 2 or t.shape[1] < min_len or len(t) == 0:
        raise ValueError(f"items must be (n_users, length >= {min_len}), got {tuple(t.shape)}")
    if int(t.min()) < 0:
        raise ValueError("item ids must be non-negative")
    return t


def popularity_scores(history, n_items: int) -> Tensor:
    """Item scores (n_items,) = how often each item occurs in the training histories."""
    h = _sequences(history)
    if int(h.max()) >= n_items:
        raise ValueError(f"item id {int(h.max())} is out of range for n_items={n_items}")
    return torch.bincount(h.flatten(), minlength=n_items).double()


def markov_scores(history, n_items: int) -> Tensor:
    """(n_items, n_items) first-order transition counts: row a, column b = how often b directly followed a,
    plus the popularity scaled below one count (unseen transitions fall back to popularity)."""
    h = _sequences(history)
    pop = popularity_scores(h, n_items)
    pairs = h[:, :-1] * n_items + h[:, 1:]
    counts = torch.bincount(pairs.flatten(), minlength=n_items * n_items).double().view(n_items, n_items)
    return counts + pop / (pop.max() + 1.0)


def rank_metrics(scores, targets, k: int = 10) -> dict[str, float]:
    """HR@k and NDCG@k (one relevant item per row) of scores (n, n_items) for targets (n,); ties count against
    the target (rank = number of items scoring at least as high as it)."""
    s = torch.as_tensor(scores).double()
    y = torch.as_tensor(np.asarray(targets)).long()
    if s.dim() != 2 or y.dim() != 1 or len(s) != len(y) or len(y) == 0:
        raise ValueError(f"scores must be (n, n_items) and targets (n,), got {tuple(s.shape)} and {tuple(y.shape)}")
    if not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if int(y.min()) < 0 or int(y.max()) >= s.shape[1]:
        raise ValueError(f"targets must be item ids in [0, {s.shape[1]})")
    target_score = s[torch.arange(len(y)), y]
    rank = (s >= target_score[:, None]).sum(1)
    hit = rank <= k
    ndcg = torch.where(hit, 1.0 / torch.log2(rank.double() + 1.0), torch.zeros((), dtype=torch.float64))
    return {f"HR@{k}": float(hit.double().mean()), f"NDCG@{k}": float(ndcg.mean())}


def next_item_config(n_items: int, max_len: int, d_model: int = 64, n_layers: int = 2, n_heads: int = 2,
                     dropout: float = 0.1) -> GPTConfig:
    """GPT sizes for items: token id = item id + 1 (id 0 stays free), causal attention over the history."""
    return GPTConfig(vocab_size=n_items + 1, max_len=max_len, d_model=d_model, n_heads=n_heads,
                     n_layers=n_layers, dropout=dropout, attn_dropout=dropout)


class ItemSequenceDataset(Dataset):
    """Each user's history as a causal-LM example: input_ids = labels = items + 1."""

    def __init__(self, history) -> None:
        self.ids = _sequences(history, min_len=2) + 1

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def train_next_item_model(history, cfg: GPTConfig, epochs: int, batch_size: int = 128, lr: float = 3e-3,
                          seed: int = 0, progress: bool = False) -> tuple[GPT, list[dict]]:
    """Train a GPT (SASRec-style next-item Transformer) on the histories with the package's Trainer."""
    from .training import TrainConfig, Trainer

    data = ItemSequenceDataset(history)
    if int(data.ids.max()) >= cfg.vocab_size:
        raise ValueError(f"item id {int(data.ids.max()) - 1} does not fit vocab_size={cfg.vocab_size} (items + 1)")
    torch.manual_seed(seed)
    model = GPT(cfg)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True)
    steps = max(1, epochs * len(loader))
    trainer = Trainer(model, TrainConfig(lr=lr, epochs=epochs, warmup_steps=min(50, steps // 10), seed=seed,
                                         log_every=max(1, len(loader)), progress=progress, device="cpu"), loader)
    history_log = trainer.train()
    return model.eval(), history_log


@torch.no_grad()
def transformer_scores(model: GPT, history, batch_size: int = 512) -> Tensor:
    """Next-item scores (n_users, n_items): the model's logits after the last history item (id 0 dropped)."""
    ids = _sequences(history) + 1
    model.eval()
    out = []
    for start in range(0, len(ids), batch_size):
        logits = model(ids[start:start + batch_size, -model.cfg.max_len:]).logits[:, -1, 1:]
        out.append(logits.double())
    return torch.cat(out)


def expected_hit_rate(probs, k: int = 10) -> float:
    """Expected HR@k of the oracle: mean over users of the probability mass of the k most likely items."""
    p = torch.as_tensor(np.asarray(probs)).double()
    if p.dim() != 2:
        raise ValueError(f"probs must be (n_users, n_items), got {tuple(p.shape)}")
    return float(p.topk(min(k, p.shape[1]), dim=1).values.sum(1).mean())


def entropy_bits(probs) -> float:
    """Mean entropy (bits) of the rows of a probability matrix: how unpredictable the next item is."""
    p = torch.as_tensor(np.asarray(probs)).double()
    if p.dim() != 2 or bool((p < 0).any()):
        raise ValueError(f"probs must be a non-negative (n_users, n_items) matrix, got {tuple(p.shape)}")
    return float(-(torch.special.xlogy(p, p) / math.log(2)).sum(1).mean())
